package main

import (
	"github.com/spf13/pflag"

	"uniter/internal/db"
)

// registerImgDBFlags adds the img_db layout flags, shared by the
// commands that read img_dbs and `data imgdb`, which writes one.
func registerImgDBFlags(f *pflag.FlagSet, o *db.ImgDBOptions) {
	f.Float64Var(&o.ConfTh, "conf-th", o.ConfTh, "detector confidence threshold of the img_db layout (-1: fixed --num-bb)")
	f.IntVar(&o.MaxBB, "max-bb", o.MaxBB, "most regions per image")
	f.IntVar(&o.MinBB, "min-bb", o.MinBB, "fewest regions per image")
	f.IntVar(&o.NumBB, "num-bb", o.NumBB, "regions per image when --conf-th is -1")
}
