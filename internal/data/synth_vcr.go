package data

import (
	"strings"

	"uniter/internal/db"
)

// synthImgDBOptions are the options the synthetic world writes img_db rel
// with: VCR's ground-truth-box dbs in feat_numbb100, the layout the
// original opens them in (conf_th -1, num_bb 100), every other db in the
// default feat_th0.2_max100_min10.
func synthImgDBOptions(rel string) db.ImgDBOptions {
	o := db.DefaultImgDBOptions()
	// The original opens VCR's and RE's ground-truth dbs, and the refcoco
	// configs RE's detected ones, with conf_th -1 and num_bb 100.
	if strings.HasPrefix(rel, "img/vcr_gt_") || strings.HasPrefix(rel, "img/re_coco_") {
		o.ConfTh, o.NumBB = -1, 100
	}
	return o
}

// putVCRLens records a VCR example's id2len_qa.json and id2len_qar.json
// lengths (VCRTextLens) from the fields it was put with.
func putVCRLens(w *db.TxtWriter, id string, ex map[string]any) error {
	toI32 := func(v []int) []int32 {
		out := make([]int32, len(v))
		for i, x := range v {
			out[i] = int32(x)
		}
		return out
	}
	lists := func(v [][]int) [][]int32 {
		out := make([][]int32, len(v))
		for i, x := range v {
			out[i] = toI32(x)
		}
		return out
	}
	qa, qar := VCRTextLens(toI32(ex["input_ids"].([]int)), lists(ex["input_ids_as"].([][]int)), lists(ex["input_ids_rs"].([][]int)), ex["qa_target"].(int))
	if err := w.PutLen(VCRLensQA, id, qa); err != nil {
		return err
	}
	return w.PutLen(VCRLensQAR, id, qar)
}
