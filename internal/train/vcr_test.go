package train

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/viper"
)

// TestVCRConfig checks checkpoint_from: the official value loads, the
// default is train_vcr.py's "pretrain", anything else is refused.
func TestVCRConfig(t *testing.T) {
	cfg, err := decodeTask(t, filepath.Join("..", "..", "configs", "finetune-vcr-base-4gpu.yaml"), "vcr")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CheckpointFrom != "vcr_pretrain" || cfg.ValBatchSize != 10 {
		t.Errorf("checkpoint_from %q val_batch_size %d", cfg.CheckpointFrom, cfg.ValBatchSize)
	}
	for _, c := range []struct{ from, want, err string }{{"", "pretrain", ""}, {"vcr_pretrain", "vcr_pretrain", ""}, {"nlvr2", "", "want pretrain or vcr_pretrain"}} {
		v := viper.New()
		SetDefaults(v, "vcr")
		if err := ReadConfigFile(v, filepath.Join("..", "..", "configs", "finetune-vcr-base-4gpu.yaml")); err != nil {
			t.Fatal(err)
		}
		v.Set("checkpoint_from", c.from)
		cfg, err := DecodeConfig(v, "vcr")
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("checkpoint_from %q: error %v, want %q", c.from, err, c.err)
		case c.err == "" && (err != nil || cfg.CheckpointFrom != c.want):
			t.Errorf("checkpoint_from %q: %v, %v", c.from, cfg, err)
		}
	}
}

// TestSplitVCRImgDBs checks the official "gt;det" entries and ours.
func TestSplitVCRImgDBs(t *testing.T) {
	for _, c := range []struct{ entry, gt, det, err string }{
		{"/img/vcr_gt_val/;/img/vcr_val/", "/img/vcr_gt_val/", "/img/vcr_val/", ""},
		{"/img/vcr_val/;/img/vcr_gt_val/", "/img/vcr_gt_val/", "/img/vcr_val/", ""},
		{"/img/vcr_val/", "", "/img/vcr_val/", ""},
		{"/img/vcr_gt_val/", "/img/vcr_gt_val/", "", ""},
		{VCRImgEntry("/boxes/a", "/dets/b"), "/boxes/a", "/dets/b", ""},
		{"/a;/b", "", "", "two detected-box dbs"},
		{"/a;/b;/c", "", "", "more than two"},
		{";", "", "", "no img_db"},
	} {
		gt, det, err := SplitVCRImgDBs(c.entry)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: error %v, want %q", c.entry, err, c.err)
			}
			continue
		}
		if err != nil || gt != c.gt || det != c.det {
			t.Errorf("%q: gt %q det %q err %v, want %q %q", c.entry, gt, det, err, c.gt, c.det)
		}
	}
}
