package train

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"uniter/internal/ckpt"
	"uniter/internal/data"
	"uniter/internal/model"
)

// A training checkpoint is a directory ckpt/step_NNNNNNNN holding the model
// (model.safetensors + model.json, loadable by every command that takes
// --checkpoint), the optimizer moments and trainer_state.json. It is built
// under a hidden temporary name, synced, and renamed into place, so a
// directory with the final name is always complete.
const (
	optimFile = "optimizer.safetensors"
	stateFile = "trainer_state.json"
)

var ckptRE = regexp.MustCompile(`^step_(\d{8,})$`)

// State is everything besides weights and moments that a resumed run needs
// to continue exactly: the step, the optimizer's update count, the loss
// scalers and each task stream's data position. All other randomness (task
// mixing, masking, ITM negatives, dropout) is a function of the seed and
// the step or data position.
type State struct {
	Step int `json:"step"`
	// AdamSteps counts applied updates (skipped overflow steps excluded).
	AdamSteps int                      `json:"adam_steps"`
	Seed      uint64                   `json:"seed"`
	TaskKeys  []string                 `json:"task_keys"`
	Scalers   map[string]*LossScaler   `json:"loss_scalers,omitempty"`
	Positions map[string]data.Position `json:"data_positions"`
	// ElapsedS is the training time before this checkpoint, so elapsed_s
	// continues across resumes.
	ElapsedS float64 `json:"elapsed_s"`
	// Exact holds the settings a resume must keep (see checkExact).
	Exact map[string]string `json:"exact,omitempty"`
	// Best is the best validation so far (fine-tuning).
	Best Best `json:"best,omitzero"`
}

// CheckpointName is the directory name of the checkpoint after step.
func CheckpointName(step int) string { return fmt.Sprintf("step_%08d", step) }

// SaveCheckpoint writes the checkpoint of st.Step into dir atomically, with
// extra files beside the weights (name -> content), and then deletes all
// but the newest keep checkpoints. It returns the path.
func SaveCheckpoint(dir string, m *model.Model, opt *AdamW, st *State, keep int, extra map[string][]byte) (string, error) {
	js, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", CheckpointName(st.Step), err)
	}
	files := map[string][]byte{stateFile: js}
	maps.Copy(files, extra)
	final, err := saveModelDir(dir, CheckpointName(st.Step), m, files, func(tmp string) error {
		return ckpt.WriteSafetensors(filepath.Join(tmp, optimFile), opt.StateDict(), nil)
	})
	if err != nil {
		return "", err
	}
	return final, pruneCheckpoints(dir, keep)
}

// saveModelDir builds dir/name atomically: the model (weights and
// model.json), files, and whatever more writes, in a hidden temporary
// directory that replaces dir/name once complete.
func saveModelDir(dir, name string, m *model.Model, files map[string][]byte, more func(tmp string) error) (string, error) {
	final := filepath.Join(dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", final, err)
	}
	tmp, err := os.MkdirTemp(dir, ".tmp-"+name+"-")
	if err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", final, err)
	}
	defer os.RemoveAll(tmp)
	if err := m.Save(tmp); err != nil {
		return "", err
	}
	if more != nil {
		if err := more(tmp); err != nil {
			return "", fmt.Errorf("checkpoint %s: %w", final, err)
		}
	}
	if err := writeExtra(tmp, files); err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", final, err)
	}
	if err := replaceDir(tmp, final); err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", final, err)
	}
	return final, nil
}

func writeExtra(dir string, extra map[string][]byte) error {
	for name, b := range extra {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// replaceDir syncs the complete directory tmp and renames it to final. An
// existing final (a run resumed at its last step, the previous best) is
// replaced only once the new one is complete.
func replaceDir(tmp, final string) error {
	if err := syncTree(tmp); err != nil {
		return err
	}
	old := tmp + ".old"
	if err := os.Rename(final, old); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	if err := os.RemoveAll(old); err != nil {
		return err
	}
	return syncDir(filepath.Dir(final))
}

// BestDir holds the weights of the best validation step of a fine-tuning
// run, loadable by --checkpoint.
const BestDir = "best"

// Best is the best validation of a run so far.
type Best struct {
	Step   int     `json:"step"`
	Metric string  `json:"metric"`
	Value  float64 `json:"value"`
}

// SaveBest writes the model as dir/best (weights, model.json, extra files
// and best.json) atomically, replacing the previous best.
func SaveBest(dir string, m *model.Model, b Best, extra map[string][]byte) (string, error) {
	js, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", BestDir, err)
	}
	files := map[string][]byte{"best.json": js}
	maps.Copy(files, extra)
	return saveModelDir(dir, BestDir, m, files, nil)
}

// syncTree fsyncs every file of dir and dir itself.
func syncTree(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return err
		}
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Checkpoints lists the complete checkpoints in dir, oldest first, as
// step -> path.
func Checkpoints(dir string) ([]int, map[int]string, error) {
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoints %s: %w", dir, err)
	}
	paths := map[int]string{}
	var steps []int
	for _, e := range ents {
		mt := ckptRE.FindStringSubmatch(e.Name())
		if mt == nil || !e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if _, err := os.Stat(filepath.Join(p, stateFile)); err != nil {
			continue
		}
		n, _ := strconv.Atoi(mt[1])
		steps = append(steps, n)
		paths[n] = p
	}
	sort.Ints(steps)
	return steps, paths, nil
}

// LatestCheckpoint returns the newest complete checkpoint in dir ("" when
// there is none).
func LatestCheckpoint(dir string) (string, error) {
	steps, paths, err := Checkpoints(dir)
	if err != nil || len(steps) == 0 {
		return "", err
	}
	return paths[steps[len(steps)-1]], nil
}

// pruneCheckpoints deletes all but the newest keep checkpoints and the
// leftovers of interrupted saves.
func pruneCheckpoints(dir string, keep int) error {
	steps, paths, err := Checkpoints(dir)
	if err != nil {
		return err
	}
	for _, s := range steps[:max(0, len(steps)-keep)] {
		if err := os.RemoveAll(paths[s]); err != nil {
			return fmt.Errorf("checkpoint %s: remove: %w", paths[s], err)
		}
	}
	return removeStaleTemps(dir)
}

// removeStaleTemps deletes temporary directories that interrupted saves
// left behind.
func removeStaleTemps(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	for _, e := range ents {
		// model.Save nests its own temporary name inside ours ("..tmp-").
		if strings.HasPrefix(strings.TrimLeft(e.Name(), "."), "tmp-") {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// ReadState reads the trainer state of a checkpoint directory.
func ReadState(path string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(path, stateFile))
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %s: %w", path, stateFile, err)
	}
	return &st, nil
}

// LoadOptimizer restores opt's moments from a checkpoint directory.
func LoadOptimizer(path string, opt *AdamW, adamSteps int) error {
	f := filepath.Join(path, optimFile)
	sd, _, err := ckpt.ReadSafetensors(f)
	if err != nil {
		return err
	}
	return opt.Load(sd, adamSteps, f)
}
