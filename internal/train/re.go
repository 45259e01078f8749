package train

import (
	"uniter/internal/data"
	"uniter/internal/db"
)

// OpenREGroundTruth opens, into the cache, each of dirs that names
// ground-truth RE boxes ("coco_gt" in the path, or every one with all)
// the way train_re.py and inf_re.py open them whatever the config's
// conf_th and num_bb: as feat_numbb100, every stored box.
func (c *DBs) OpenREGroundTruth(all bool, dirs ...string) error {
	for _, dir := range dirs {
		if dir == "" || (!all && !data.IsREGroundTruth(dir)) {
			continue
		}
		if _, ok := c.img[dir]; ok {
			continue
		}
		d, err := db.OpenImgDB(dir, db.GroundTruthOptions(c.imgOpts))
		if err != nil {
			return err
		}
		c.img[dir] = d
	}
	return nil
}

// checkedValidSteps is valid_steps as Validate checks it: RE's 0 means
// every epoch (train_re.py validates after each), resolved when the data
// is open.
func checkedValidSteps(c *Config) int {
	if c.Task == "re" && c.ValidSteps == 0 {
		return 1
	}
	return c.ValidSteps
}

// reSampler batches RE training sentences as train_re.py does: a
// DataLoader of train_batch_size sentences (RESet's Lens are all 1) over
// DistributedSampler(shuffle=False), the last batch kept partial, in the
// dataset's order every epoch: ReDataset.shuffle reorders the txt_db's
// ref_ids but never the dataset's ids, fixed when it was built (refs.json's
// order), so the original trains in the same order each epoch.
func reSampler(c *Config) data.TokenBucketSampler {
	return data.TokenBucketSampler{MaxTokens: c.TrainBatchSize, BucketSize: 1 << 30, SizeMultiple: 1, Sequential: true, Seed: c.Seed}
}

// epochSteps is the number of optimizer steps of one epoch of ds (at
// least 1): its batches over the micro-batches of a step.
func (t *Trainer) epochSteps(ds Dataset) (int, error) {
	lens, err := ds.Lens(t.cfg.Task, 0)
	if err != nil {
		return 0, err
	}
	batches, err := reSampler(t.cfg).Batches(lens, 0)
	if err != nil {
		return 0, err
	}
	return max(1, len(batches)/(t.cfg.GradientAccumulationSteps*t.world.global())), nil
}
