package data

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"uniter/internal/db"
)

// benchImgOptions is the fixed-36-box layout the benchmark reads.
var benchImgOptions = db.ImgDBOptions{ConfTh: -1, NumBB: 36, MaxBB: 100, MinBB: 10}

// writeBenchWorld writes n synthetic images of exactly 36 regions of 2048
// fp16 features (plus soft labels) and two captions per image.
func writeBenchWorld(tb testing.TB, dir string, n int) (*db.TxtDB, *db.ImgDB) {
	tb.Helper()
	w := newSynthWorld(1, 2048, 6, 20, 0.5)
	iw, err := db.CreateImgDB(filepath.Join(dir, "img"), benchImgOptions, false)
	if err != nil {
		tb.Fatal(err)
	}
	meta := db.Meta{CLS: synthCLS, SEP: synthSEP, MASK: synthMASK, UNK: synthUNK, VRange: [2]int{104, len(SynthVocab())}}
	tw, err := db.CreateTxtDB(filepath.Join(dir, "txt"), meta)
	if err != nil {
		tb.Fatal(err)
	}
	tok, err := NewTokenizer(NewVocab(SynthVocab()), false)
	if err != nil {
		tb.Fatal(err)
	}
	for i := range n {
		name := fmt.Sprintf("bench_%06d.npz", i)
		im := w.image(newRNG(1, uint64(i)), name)
		if _, err := iw.Put(name, w.render(newRNG(2, uint64(i)), im, false, 36)); err != nil {
			tb.Fatal(err)
		}
		for k := range 2 {
			sent := im.caption(newRNG(3, uint64(i), uint64(k)))
			if err := tw.Put(fmt.Sprintf("%d_%d", i, k), map[string]any{"input_ids": ints(tok.Encode(sent)), "img_fname": name}); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := iw.Close(); err != nil {
		tb.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	txt, err := db.OpenTxtDB(filepath.Join(dir, "txt"))
	if err != nil {
		tb.Fatal(err)
	}
	img, err := db.OpenImgDB(filepath.Join(dir, "img"), benchImgOptions)
	if err != nil {
		tb.Fatal(err)
	}
	return txt, img
}

// BenchmarkLoader measures the prefetching loader end to end: txt_db and
// img_db reads, fp16 decoding, masking and collation into batches of a
// 4096-token budget, for a features-only task (MLM) and one that also
// decodes the 1601-way soft labels (MRC-kl). Batches are released after
// use, as the trainer does once a batch is on the device.
func BenchmarkLoader(b *testing.B) {
	txt, img := writeBenchWorld(b, b.TempDir(), 256)
	defer txt.Close()
	set, err := NewPretrainSet(txt, img, PretrainOptions{Seed: 1, MaskProb: MaskProb, ITMNegProb: ITMNegProb})
	if err != nil {
		b.Fatal(err)
	}
	for _, task := range []string{TaskMLM, TaskMRCKL} {
		for _, workers := range []int{1, 2, 4} {
			b.Run(fmt.Sprintf("%s/workers=%d", task, workers), func(b *testing.B) {
				stream := NewBatchStream(NewTokenBucketSampler(4096, 1, false), set.LensFunc(task), 0)
				l := NewLoader(context.Background(), stream, set.Build(task), workers, 2*workers)
				defer l.Close()
				examples := 0
				b.ResetTimer()
				for range b.N {
					batch, _, err := l.Next()
					if err != nil {
						b.Fatal(err)
					}
					examples += batch.B
					batch.Release()
				}
				b.ReportMetric(float64(examples)/b.Elapsed().Seconds(), "examples/s")
			})
		}
	}
}
