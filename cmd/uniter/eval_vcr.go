package main

import (
	"fmt"
	"os"

	"uniter/internal/compute"
	"uniter/internal/model"
	"uniter/internal/tasks"
)

// loadPretrainEval is modelFlags.load for eval --task pretrain: a
// checkpoint with VCR's grown tables (a second-stage pretraining one,
// pretrain_vcr.py's, 4 token types and 81 more words) is loaded into a
// model grown to them first, as the second-stage pretraining builds it,
// whether the model config is the base one or already grown; any other
// checkpoint is loaded as it is.
func loadPretrainEval(f *modelFlags, be compute.Backend, addHeads func(*model.Model)) (*model.Model, error) {
	m, sd, err := f.build(be)
	if err != nil {
		return nil, err
	}
	if addHeads != nil {
		addHeads(m)
	}
	var rep model.LoadReport
	if tasks.HasVCRTables(sd) {
		// A grown checkpoint keeps its MLM head (nothing is redrawn).
		rep, err = tasks.LoadVCRPretrain(m, sd, f.checkpoint, false, 0)
	} else {
		rep, err = m.LoadStateDict(sd, f.checkpoint)
	}
	if err != nil {
		return nil, err
	}
	if s := rep.String(); s != "" {
		fmt.Fprintf(os.Stderr, "uniter: checkpoint %s: %s\n", f.checkpoint, s)
	}
	return m, nil
}
