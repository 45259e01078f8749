package train

import (
	"fmt"
	"strings"

	"uniter/internal/data"
	"uniter/internal/db"
	"uniter/internal/tasks"
)

// vcrOpener is a task whose examples read a ground-truth-box img_db beside
// the detected-box one (VCR).
type vcrOpener interface {
	OpenVCR(txt *db.TxtDB, gt, det *db.ImgDB, o data.DownstreamOptions) (tasks.Dataset, error)
}

// SplitVCRImgDBs splits a VCR img_db entry, the official "gt_dir;det_dir"
// (either alone allowed), into the ground-truth-box db and the
// detected-box db: as train_vcr.py's load_img_feat, the one whose path
// contains "gt" holds the ground-truth boxes, whatever the order.
func SplitVCRImgDBs(entry string) (gt, det string, err error) {
	parts := strings.Split(entry, ";")
	if len(parts) > 2 {
		return "", "", fmt.Errorf("vcr img_db %q: more than two img_dbs (want gt_dir;det_dir)", entry)
	}
	for _, p := range parts {
		if dir, ok := strings.CutPrefix(p, vcrGTPrefix); ok {
			if gt != "" {
				return "", "", fmt.Errorf("vcr img_db %q: two ground-truth-box dbs", entry)
			}
			gt = dir
			continue
		}
		switch {
		case p == "":
		case strings.Contains(p, "gt") && gt == "":
			gt = p
		case det == "":
			det = p
		default:
			return "", "", fmt.Errorf("vcr img_db %q: two detected-box dbs (the ground-truth one has \"gt\" in its path)", entry)
		}
	}
	if gt == "" && det == "" {
		return "", "", fmt.Errorf("vcr img_db %q: no img_db", entry)
	}
	return gt, det, nil
}

// vcrGTPrefix marks the ground-truth-box db of an entry explicitly
// (VCRImgEntry), whatever its path holds.
const vcrGTPrefix = "gt="

// VCRImgEntry is the img_db entry of an explicit ground-truth-box db gt
// and detected-box db det (either may be ""), what uniter eval's
// --gt-img-db and --img-db name.
func VCRImgEntry(gt, det string) string {
	if gt == "" {
		return det
	}
	return vcrGTPrefix + gt + ";" + det
}

// vcrGT opens (once) the ground-truth-box img_db in dir.
func (c *DBs) vcrGT(dir string) (*db.ImgDB, error) {
	key := "vcr-gt\x00" + dir
	if d, ok := c.img[key]; ok {
		return d, nil
	}
	d, err := db.OpenImgDB(dir, db.GroundTruthOptions(c.imgOpts))
	if err != nil {
		return nil, err
	}
	c.img[key] = d
	return d, nil
}

// openVCR opens a VCR txt_db with the img_dbs of entry (SplitVCRImgDBs).
func openVCR(c *DBs, task vcrOpener, txt *db.TxtDB, entry string, o data.DownstreamOptions) (Dataset, error) {
	gt, det, err := c.vcrImgDBs(entry)
	if err != nil {
		return nil, err
	}
	return task.OpenVCR(txt, gt, det, o)
}

// pretrainSet is a pretraining dataset read one example at a time.
type pretrainSet interface {
	Dataset
	Len() int
	Example(task string, epoch, i int) (*data.Example, error)
}

// openVCRPretrain opens a VCR txt_db with the img_dbs of entry for the
// second-stage pretraining.
func openVCRPretrain(c *DBs, txt *db.TxtDB, entry string, o data.PretrainOptions) (pretrainSet, error) {
	gt, det, err := c.vcrImgDBs(entry)
	if err != nil {
		return nil, err
	}
	return data.NewVCRPretrainSet(txt, gt, det, o)
}

// vcrImgDBs opens the ground-truth-box and detected-box dbs of an entry
// (SplitVCRImgDBs); either may be nil.
func (c *DBs) vcrImgDBs(entry string) (gt, det *db.ImgDB, err error) {
	gtDir, detDir, err := SplitVCRImgDBs(entry)
	if err != nil {
		return nil, nil, err
	}
	if gtDir != "" {
		if gt, err = c.vcrGT(gtDir); err != nil {
			return nil, nil, err
		}
	}
	if detDir != "" {
		if det, err = c.Img(detDir); err != nil {
			return nil, nil, err
		}
	}
	return gt, det, nil
}

// VCRPretraining reports whether a pretraining config is the second-stage
// VCR pretraining: some training txt_db is a VCR one (data.IsVCRTxtDB).
// The model then gets VCR's tables (4 token types, 81 more words) before
// its heads train, as pretrain_vcr.py's init_type_embedding and
// init_word_embedding.
func (c *Config) VCRPretraining() bool {
	for _, d := range c.TrainDatasets {
		for _, dir := range d.TxtDB {
			if data.IsVCRTxtDB(dir) {
				return true
			}
		}
	}
	return false
}

// VCRFinalResults names the results file of VCR's final validation,
// train_vcr.py's results_{step}_final_qa_qar_rank{rank}.json.
func VCRFinalResults(step int) string {
	return fmt.Sprintf("results_%d_final_qa_qar_rank0", step)
}

// validateVCRFinal is train_vcr.py's last validation: the val split in the
// test layout (VCRTestRows rows an example, every rationale after every
// answer; QA->R judged after the true answer), logged as split
// "val_final" and its scores written to results/ (VCRFinalResults). Other
// tasks, and runs without a val split, have none.
func (t *Trainer) validateVCRFinal() error {
	v, ok := t.down.(*tasks.VCR)
	if !ok || t.cfg.ValTxtDB == "" {
		return nil
	}
	txt, err := t.dbs.Txt(t.cfg.ValTxtDB)
	if err != nil {
		return err
	}
	if err := checkVocab(txt.Meta(), t.cfg.ValTxtDB, t.mc.VocabSize); err != nil {
		return err
	}
	gt, det, err := t.dbs.vcrImgDBs(t.cfg.ValImgDB)
	if err != nil {
		return err
	}
	// As the other validations: every text, no max_txt_len filter.
	o := data.DownstreamOptions{MaxTxtLen: -1, ImgDim: t.mc.ImgDim, MaxWords: t.mc.MaxPositionEmbeddings - 2}
	ds, err := v.OpenVCRFinal(txt, gt, det, o)
	if err != nil {
		return fmt.Errorf("final validation: %w", err)
	}
	ev, err := t.shardedEval(ds)
	if err != nil {
		return fmt.Errorf("final validation at step %d: %w", t.step, err)
	}
	metrics := t.down.Metrics(ev)
	if err := t.writeValRow("val_final", t.down.Name(), metrics); err != nil {
		return err
	}
	if t.world.Rank == 0 {
		if err := t.writeResultsAs(VCRFinalResults(t.step), ev); err != nil {
			return err
		}
	}
	fmt.Fprintf(t.opts.Log, "\nfinetune: step %d final validation (%d rows an example): val %s\n", t.step, data.VCRTestRows, formatMetrics(metrics))
	return nil
}
