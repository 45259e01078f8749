package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"uniter/internal/data"
)

func init() { subcommands = append(subcommands, newDataCmd) }

func newDataCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "data",
		Short: "Write the synthetic world or build official-format txt_db/img_db",
		Long: `data prepares inputs in the official UNITER formats: "synth" writes a
seeded synthetic image-text world with a db for pretraining and for every
downstream task; "txtdb" builds a txt_db from raw annotations and "imgdb" an
img_db from per-image .npz region features.`,
		Example: `  uniter data synth --out /tmp/world
  uniter data synth --out /tmp/big --images 5000 --seed 7
  uniter data txtdb --nlvr2 nlvr2/data/dev.json --out txt_db/nlvr2_dev.db
  uniter data imgdb --npz-dir feats/ --out img/coco_train2014`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newDataSynthCmd(), newDataTxtdbCmd(), newDataImgdbCmd())
	return cmd
}

func newDataSynthCmd() *cobra.Command {
	o := data.DefaultSynthOptions()
	var out string
	cmd := &cobra.Command{
		Use:   "synth --out DIR",
		Short: "Write a seeded synthetic image-text world as official dbs",
		Long: `synth writes a synthetic world of images made of coloured objects
(2-4 per image by default; class, colour, size, position) and texts
generated from their contents, as official-format dbs: a vocab.txt with
BERT's special-token layout (UNK 100, CLS 101, SEP 102, MASK 103), region
img_dbs (fp16 features built from class and colour prototypes plus noise,
boxes, confidences, 1601-way soft labels) and txt_dbs for pretraining, VQA,
VE, NLVR2, VCR, RE and ITR, each with a train and a val split. Pretraining
and retrieval captions name every object of their image; the other texts
state attributes, counts and relations. Texts are determined by the
images, so MLM, MRC, ITM and every downstream task are learnable. The same
seed and sizes give the same bytes. DIR must not exist or be empty.`,
		Example: `  uniter data synth --out /tmp/world
  uniter data synth --out /tmp/world --seed 3 --images 200 --img-dim 256
  uniter data synth --out /tmp/crowded --min-objects 6 --max-objects 20`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("data synth: --out is required")
			}
			sum, err := data.Synth(out, o)
			if err != nil {
				return err
			}
			_, err = sum.WriteTo(cmd.OutOrStdout())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "output directory (must not exist or be empty)")
	f.Uint64Var(&o.Seed, "seed", o.Seed, "seed of everything written")
	f.IntVar(&o.Images, "images", o.Images, "training images")
	f.IntVar(&o.ValImages, "val-images", 0, "validation images (default: images/10, at least 10)")
	f.IntVar(&o.ImgDim, "img-dim", o.ImgDim, "region feature size")
	f.IntVar(&o.MinObjects, "min-objects", o.MinObjects, "fewest objects per image (at least 2)")
	f.IntVar(&o.MaxObjects, "max-objects", o.MaxObjects, "most objects per image (at most 20)")
	f.Float64Var(&o.Noise, "noise", o.Noise, "standard deviation of the region feature noise")
	f.IntVar(&o.Captions, "captions", o.Captions, "pretraining captions per image")
	f.IntVar(&o.Questions, "questions", o.Questions, "VQA questions per image")
	f.Float64Var(&o.GTFraction, "gt-fraction", o.GTFraction, "share of images with ground-truth-box dbs, VCR and RE annotations")
	f.IntVar(&o.Workers, "workers", 0, "rendering goroutines (default: all cores; the output does not depend on it)")
	return cmd
}
