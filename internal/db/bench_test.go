package db

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

// benchImgDB writes n images of 36 regions x 2048 fp16 features with 1601
// soft labels, the official feature shape.
func benchImgDB(b *testing.B, n int, compressed bool) (string, []string) {
	b.Helper()
	dir := b.TempDir()
	opts := DefaultImgDBOptions()
	opts.ConfTh, opts.NumBB = -1, 36
	w, err := CreateImgDB(dir, opts, compressed)
	if err != nil {
		b.Fatal(err)
	}
	rng := newRand()
	raw := randRaw(rng, 36, 2048, 1601, 20)
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("coco_train2014_%012d.npz", i)
		if _, err := w.Put(names[i], raw); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	return dir, names
}

// BenchmarkImgDBGet measures random-access reads of 36 x 2048 fp16 images
// from all goroutines, reported as examples/s.
func BenchmarkImgDBGet(b *testing.B) {
	for _, tc := range []struct {
		name       string
		compressed bool
		feat       bool
	}{
		{"msgpack", false, false},
		{"msgpack/feat-only", false, true},
		{"npz", true, false},
		{"npz/feat-only", true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			dir, names := benchImgDB(b, 200, tc.compressed)
			opts := DefaultImgDBOptions()
			opts.ConfTh, opts.NumBB = -1, 36
			db, err := OpenImgDB(dir, opts)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			var seed atomic.Uint64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(seed.Add(1), 0))
				for pb.Next() {
					name := names[rng.IntN(len(names))]
					var err error
					if tc.feat {
						_, err = db.GetFeat(name)
					} else {
						_, err = db.Get(name)
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "examples/s")
		})
	}
}

// BenchmarkTxtDBGet measures random-access txt_db reads (lz4 + msgpack).
func BenchmarkTxtDBGet(b *testing.B) {
	db, err := OpenTxtDB("testdata/txt_db")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	ids := db.IDs(100)
	for i := 0; b.Loop(); i++ {
		if _, err := db.Get(ids[i%len(ids)]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "examples/s")
}
