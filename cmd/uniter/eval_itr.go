package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"uniter/internal/atomicfile"
	"uniter/internal/data"
	"uniter/internal/tasks"
	"uniter/internal/train"
)

// Test hooks of the full ranking (zero values in the binary): the texts
// per block (0: tasks.RankBlockTexts) and a call after each progress
// report, so that a test can kill an evaluation between blocks.
var (
	itrBlockTexts   int
	itrProgressHook func(done, total int)
)

// runEvalITR ranks every text of --txt-db against every image of its
// pool: metrics.json with the recalls (true and as the original's
// itm_eval.py counts them) and, with --save-logits, logits.npy [texts,
// images], ids.json (rows) and img_ids.json (columns). The scores go to
// --out as they come, so that a killed evaluation rerun with the same
// arguments continues from the blocks it finished. A checkpoint without
// rank_output (pretraining) is scored zero-shot from its ITM match row.
func runEvalITR(ctx context.Context, o evalOpts, stdout, stderr io.Writer) error {
	m, sd, err := downstreamModel(&o, stderr)
	if err != nil {
		return err
	}
	task, err := tasks.NewITR(m, 0.2, 0, 0, false)
	if err != nil {
		return err
	}
	rep, err := task.Load(sd, o.mf.checkpoint, false)
	if err != nil {
		return err
	}
	if slices.ContainsFunc(rep.Missing, func(k string) bool { return strings.HasPrefix(k, "rank_output.") }) && o.initSeed < 0 {
		return fmt.Errorf("eval --task itr: checkpoint %s has neither rank_output nor the ITM head (itm_output) to score pairs with", o.mf.checkpoint)
	}
	if task.FromITM {
		fmt.Fprintf(stderr, "eval: itr: zero-shot: rank_output taken from the checkpoint's ITM match row (itm_output row 1)\n")
	}
	if s := rep.String(); s != "" {
		fmt.Fprintf(stderr, "uniter: checkpoint %s: %s\n", o.mf.checkpoint, s)
	}
	dbs := train.NewDBs(o.imgOpts)
	defer dbs.Close()
	opened, err := train.OpenDownstream(dbs, task, o.txtDB, o.imgDB,
		data.DownstreamOptions{MaxTxtLen: o.maxTxtLen, ImgDim: m.Cfg.ImgDim, MaxWords: m.Cfg.MaxPositionEmbeddings - 2}, m.Cfg.VocabSize)
	if err != nil {
		return err
	}
	ds := opened.(*data.ITRSet)
	nt, ni := ds.Len(), len(ds.ImgNames())
	fmt.Fprintf(stderr, "eval: itr: %d texts x %d images = %d pairs\n", nt, ni, nt*ni)
	var bar *progressbar.ProgressBar
	start := time.Now()
	resumedPairs := -1
	key := fmt.Sprintf("checkpoint=%s init_seed=%d txt_db=%s img_db=%s budget=%d", o.mf.checkpoint, o.initSeed, o.txtDB, o.imgDB, o.batchTokens)
	res, err := train.RankToFile(ctx, task, ds, o.out, train.RankToFileOptions{
		Key: key, Budget: o.batchTokens, BlockTexts: itrBlockTexts,
		Progress: func(done, total int) {
			if itrProgressHook != nil {
				defer itrProgressHook(done, total)
			}
			if resumedPairs < 0 {
				resumedPairs = done
			}
			if bar == nil {
				bar = progressbar.NewOptions(total, progressbar.OptionSetDescription("eval itr"), progressbar.OptionSetWriter(stderr),
					progressbar.OptionShowCount(), progressbar.OptionSetItsString("pairs"), progressbar.OptionShowIts(),
					progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(200e6))
				bar.StartWithoutRender()
			}
			_ = bar.Set(done)
		},
		Log: func(f string, a ...any) { fmt.Fprintf(stderr, f, a...) },
	})
	if err != nil {
		return err
	}
	if bar != nil {
		_ = bar.Finish()
		fmt.Fprintln(stderr)
	}
	rankS := time.Since(start).Seconds()
	report := map[string]any{"task": "itr", "checkpoint": o.mf.checkpoint, "txt_db": o.txtDB, "img_db": o.imgDB, "zero_shot": task.FromITM,
		// This run's speed: embeddings and every pair it scored (not the resumed ones).
		"rank_s": rankS, "pairs_per_s": float64(nt*ni-max(resumedPairs, 0)) / rankS,
		// The work of the whole ranking, to project its time on other hardware.
		"gflop": train.ITRPairFLOPs(ds, m.Cfg.NumHiddenLayers, m.Cfg.HiddenSize, m.Cfg.IntermediateSize) / 1e9}
	if o.initSeed >= 0 {
		report["init_seed"] = o.initSeed
	}
	for k, v := range res.Metrics {
		report[k] = v
	}
	b, err := json.MarshalIndent(report, "", "  ")
	if err != nil {
		return err
	}
	partial := filepath.Join(o.out, train.ITRScoresPartial)
	if o.saveLogits {
		ids, _ := json.Marshal(res.TxtIDs)
		imgs, _ := json.Marshal(res.ImgIDs)
		for _, f := range []struct {
			name string
			b    []byte
		}{{"ids.json", ids}, {"img_ids.json", imgs}} {
			if err := atomicfile.WriteFile(filepath.Join(o.out, f.name), f.b); err != nil {
				return fmt.Errorf("eval: %w", err)
			}
		}
		// The partial file is the finished .npy now.
		if err := os.Rename(partial, filepath.Join(o.out, "logits.npy")); err != nil {
			return fmt.Errorf("eval: %w", err)
		}
	} else if err := os.Remove(partial); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	// metrics.json last: its presence says the evaluation finished.
	if err := atomicfile.WriteFile(filepath.Join(o.out, "metrics.json"), append(b, '\n')); err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	_ = os.Remove(filepath.Join(o.out, train.ITRProgressFile))
	fmt.Fprintf(stdout, "itr:")
	for _, k := range []string{"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"} {
		fmt.Fprintf(stdout, "  %s %.4f", k, res.Metrics[k])
	}
	fmt.Fprintln(stdout)
	fmt.Fprintf(stderr, "eval: wrote %s\n", o.out)
	return nil
}
