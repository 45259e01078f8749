package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"uniter/internal/atomicfile"
	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/npy"
	"uniter/internal/tasks"
)

func init() { subcommands = append(subcommands, newEmbedCmd) }

type embedOpts struct {
	mf                 modelFlags
	txtDB, imgDB, out  string
	imgOpts            db.ImgDBOptions
	batchTokens, batch int
	workers            int
	quiet              bool
}

func newEmbedCmd() *cobra.Command {
	o := embedOpts{imgOpts: db.DefaultImgDBOptions()}
	cmd := &cobra.Command{
		Use:   "embed",
		Short: "Write the pooled UNITER representation of every example of a txt_db",
		Long: `embed runs the backbone in evaluation mode on every example of the txt_db
(ids from id2len.json, no length filter) with its image from the img_db, and
writes DIR/pooled.npy (float32 [n, hidden]: the pooler output) and
DIR/ids.json (the example ids in row order, the order in which eval lists
its results for the same txt_db). Both files are written atomically.
--checkpoint also takes a run's output directory (its newest checkpoint).`,
		Example: `  uniter embed --checkpoint uniter-base.pt --model-config config/uniter-base.json \
      --txt-db /txt/itm_coco_val.db --img-db /img/coco_val2014 --out runs/emb
  python3 -c "import numpy as np; print(np.load('runs/emb/pooled.npy').shape)"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runEmbed(cmd.Context(), o) },
	}
	f := cmd.Flags()
	o.mf.register(f)
	f.StringVar(&o.txtDB, "txt-db", "", "official txt_db directory")
	f.StringVar(&o.imgDB, "img-db", "", "official img_db directory")
	f.StringVar(&o.out, "out", "", "output directory")
	registerImgDBFlags(f, &o.imgOpts)
	f.IntVar(&o.batchTokens, "batch-tokens", 8192, "padded tokens per batch")
	f.IntVar(&o.batch, "batch", 256, "examples per batch at most")
	f.IntVar(&o.workers, "workers", 2, "goroutines decoding examples")
	f.BoolVar(&o.quiet, "quiet", false, "no progress bar")
	for _, name := range []string{"checkpoint", "txt-db", "img-db", "out"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

func runEmbed(ctx context.Context, o embedOpts) error {
	if ctx == nil {
		ctx = context.Background()
	}
	var err error
	if o.mf.checkpoint, err = resolveCheckpoint(o.mf.checkpoint, os.Stderr); err != nil {
		return err
	}
	be, err := o.mf.backend()
	if err != nil {
		return err
	}
	m, err := o.mf.load(be, nil)
	if err != nil {
		return err
	}
	m.SetTrain(false)
	txt, err := db.OpenTxtDB(o.txtDB)
	if err != nil {
		return err
	}
	defer txt.Close()
	o.imgOpts.ImgDim = m.Cfg.ImgDim
	img, err := db.OpenImgDB(o.imgDB, o.imgOpts)
	if err != nil {
		return err
	}
	defer img.Close()
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return fmt.Errorf("--out %s: %w", o.out, err)
	}

	ids := txt.IDs(0)
	if len(ids) == 0 {
		return fmt.Errorf("txt_db %s: no examples in id2len.json", o.txtDB)
	}
	lens := make([]int, len(ids))
	fnames := make([]string, len(ids))
	for i, id := range ids {
		names, ok := txt.Images(id)
		if !ok || len(names) == 0 {
			return fmt.Errorf("txt_db %s: example %q has no image in txt2img.json", o.txtDB, id)
		}
		nbb, err := img.NBB(names[0])
		if err != nil {
			return err
		}
		l, _ := txt.Len(id)
		lens[i], fnames[i] = l+2+nbb, names[0]
	}
	batches, err := data.SequentialBatches(lens, o.batchTokens, o.batch)
	if err != nil {
		return fmt.Errorf("--batch-tokens %d: %w", o.batchTokens, err)
	}
	meta := txt.Meta()
	build := func(ctx context.Context, j data.Job) (*data.Batch, error) {
		exs := make([]*data.Example, len(j.Indices))
		for k, i := range j.Indices {
			ex, err := txt.Get(ids[i])
			if err != nil {
				return nil, err
			}
			words, err := ex.InputIDs()
			if err != nil {
				return nil, err
			}
			for _, w := range words {
				if int(w) >= m.Cfg.VocabSize || w < 0 {
					return nil, fmt.Errorf("txt_db %s: key %q: token id %d out of range [0, %d) of the model's vocabulary", o.txtDB, ids[i], w, m.Cfg.VocabSize)
				}
			}
			im, err := img.GetFeat(fnames[i])
			if err != nil {
				return nil, err
			}
			exs[k] = &data.Example{ID: ids[i], InputIDs: data.WithSpecials(words, int32(meta.CLS), int32(meta.SEP)),
				NBB: im.NBB, ImgFeat: im.Features, ImgPos: im.Box7()}
		}
		return data.Collate(exs, m.Cfg.ImgDim)
	}
	loader := data.NewLoader(ctx, data.NewSliceSource(batches), build, o.workers, 4)
	defer loader.Close()

	h := m.Cfg.HiddenSize
	pooled := make([]float32, 0, len(ids)*h)
	var bar *progressbar.ProgressBar
	if !o.quiet {
		bar = newProgressBar(os.Stderr, len(ids), "embed")
	}
	for range batches {
		b, _, err := loader.Next()
		if err != nil {
			return err
		}
		if err := m.Forward(tasks.ModelInput(b)); err != nil {
			return fmt.Errorf("examples %s..%s: %w", b.IDs[0], b.IDs[len(b.IDs)-1], err)
		}
		pooled = append(pooled, be.ToF32(m.Pooled())...)
		if bar != nil {
			_ = bar.Add(b.B)
		}
		b.Release()
	}
	if bar != nil {
		_ = bar.Finish()
		fmt.Fprintln(os.Stderr)
	}
	if err := npy.WriteFloat32(filepath.Join(o.out, "pooled.npy"), []int{len(ids), h}, pooled); err != nil {
		return err
	}
	js, _ := json.Marshal(ids)
	return atomicfile.WriteFile(filepath.Join(o.out, "ids.json"), js)
}
