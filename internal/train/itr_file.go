package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"uniter/internal/atomicfile"
	"uniter/internal/data"
	"uniter/internal/npy"
	"uniter/internal/tasks"
)

// The full ranking of uniter eval --task itr writes its scores to the
// output directory as they come, so that a killed evaluation continues
// from the blocks already scored.
const (
	// ITRScoresPartial is the score matrix being written: a .npy of
	// float32 [texts, images] whose rows fill block by block.
	ITRScoresPartial = "scores.partial.npy"
	// ITRProgressFile records which blocks of ITRScoresPartial are final.
	ITRProgressFile = "scores.progress.json"
)

// itrProgress is ITRProgressFile: the ranking it belongs to and its
// finished blocks.
type itrProgress struct {
	// Key names what is ranked (checkpoint, dbs, sizes): a progress file
	// of another ranking is not resumed.
	Key        string `json:"key"`
	Texts      int    `json:"texts"`
	Images     int    `json:"images"`
	BlockTexts int    `json:"block_texts"`
	Done       []bool `json:"done"`
}

// RankToFileOptions configure RankToFile.
type RankToFileOptions struct {
	// Key identifies the ranking (checkpoint, txt_db, img_db).
	Key string
	// Budget and BlockTexts are tasks.RankOptions'.
	Budget, BlockTexts int
	// Progress is called with the pairs done (resumed blocks included)
	// and the total.
	Progress func(done, total int)
	// Log receives one line when blocks are resumed.
	Log func(format string, args ...any)
}

// RankToFile runs the full ranking of ds into dir/ITRScoresPartial,
// resuming the blocks a previous run of the same Key finished, and
// returns the result with the whole matrix. The partial and progress
// files stay in dir; the caller renames or removes them once its outputs
// are written.
func RankToFile(ctx context.Context, task *tasks.ITR, ds *data.ITRSet, dir string, o RankToFileOptions) (*ITRResult, error) {
	cols := ITRColumns(ds)
	nt, ni := ds.Len(), len(cols)
	if o.BlockTexts <= 0 {
		o.BlockTexts = tasks.RankBlockTexts(ni)
	}
	nblocks := tasks.RankBlocks(nt, o.BlockTexts)
	path, progPath := filepath.Join(dir, ITRScoresPartial), filepath.Join(dir, ITRProgressFile)
	header := npy.Header([]int{nt, ni})
	size := int64(len(header)) + int64(nt)*int64(ni)*4
	prog := itrProgress{Key: o.Key, Texts: nt, Images: ni, BlockTexts: o.BlockTexts, Done: make([]bool, nblocks)}
	resumed := 0
	if b, err := os.ReadFile(progPath); err == nil {
		var old itrProgress
		if json.Unmarshal(b, &old) == nil && old.Key == prog.Key && old.Texts == nt && old.Images == ni &&
			old.BlockTexts == o.BlockTexts && len(old.Done) == nblocks {
			if st, err := os.Stat(path); err == nil && st.Size() == size {
				prog = old
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("itr: %w", err)
	}
	for _, d := range prog.Done {
		if d {
			resumed++
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("itr: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("itr: %w", err)
	}
	defer f.Close()
	if resumed == 0 {
		if err := f.Truncate(0); err != nil {
			return nil, fmt.Errorf("itr: %w", err)
		}
		if err := f.Truncate(size); err != nil {
			return nil, fmt.Errorf("itr: %w", err)
		}
		if _, err := f.WriteAt(header, 0); err != nil {
			return nil, fmt.Errorf("itr: %w", err)
		}
	} else if o.Log != nil {
		o.Log("eval: itr: resuming: %d of %d blocks already scored in %s\n", resumed, nblocks, path)
	}
	donePairs := 0
	for k, d := range prog.Done {
		if d {
			donePairs += (min((k+1)*o.BlockTexts, nt) - k*o.BlockTexts) * ni
		}
	}
	ro := tasks.RankOptions{Budget: o.Budget, BlockTexts: o.BlockTexts, Cols: cols,
		Done: func(k int) bool { return prog.Done[k] },
		Sink: func(k, t0, t1 int, s []float32) error {
			if _, err := f.WriteAt(npy.Float32Bytes(s), int64(len(header))+int64(t0)*int64(ni)*4); err != nil {
				return fmt.Errorf("itr: %s: %w", path, err)
			}
			// The rows reach the disk before the block is marked done.
			if err := f.Sync(); err != nil {
				return fmt.Errorf("itr: %s: %w", path, err)
			}
			prog.Done[k] = true
			b, _ := json.Marshal(prog)
			return atomicfile.WriteFile(progPath, b)
		}}
	if o.Progress != nil {
		o.Progress(donePairs, nt*ni)
		ro.Progress = func(p int) { o.Progress(donePairs+p, nt*ni) }
	}
	if err := task.RankAll(ctx, ds, ro); err != nil {
		return nil, err
	}
	if slices.Contains(prog.Done, false) {
		return nil, fmt.Errorf("itr: ranking ended with blocks unscored")
	}
	raw := make([]byte, int64(nt)*int64(ni)*4)
	if _, err := f.ReadAt(raw, int64(len(header))); err != nil {
		return nil, fmt.Errorf("itr: %s: %w", path, err)
	}
	return ITRRanking(ds, cols, npy.Float32sFrom(raw)), nil
}

// ITRPairFLOPs is the multiply-add FLOPs (2 per multiply-add) of scoring
// every text of ds against every image with a model of config c, as the
// full ranking computes it (Model.EncodeGathered): per pair of joint
// length L, each layer but the last runs its projections and feed-forward
// (2L(4H^2 + 2HI)) and attention (4L^2H) on every position, the last
// layer its keys and values on every position (4LH^2) and the rest at
// [CLS] only (4H^2 + 4HI + 4LH); then the pooler and rank_output. The
// embeddings, computed once per text and per image, are left out.
func ITRPairFLOPs(ds *data.ITRSet, layers, h, inter int) float64 {
	hist := map[int]int{}
	for j := range ds.ImgNames() {
		hist[ds.NBB(j)]++
	}
	var f float64
	H, I, layers1 := float64(h), float64(inter), float64(layers-1)
	for i := range ds.Len() {
		tl := ds.TxtLen(i)
		for nbb, n := range hist {
			l := float64(tl + nbb)
			full := layers1 * (2*l*(4*H*H+2*H*I) + 4*l*l*H)
			last := 4*l*H*H + 4*H*H + 4*H*I + 4*l*H
			f += float64(n) * (full + last + 2*H*H + 2*H)
		}
	}
	return f
}
