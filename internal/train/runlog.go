package train

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"go.yaml.in/yaml/v3"

	"uniter/internal/atomicfile"
)

// The files of log/ that describe a run.
const (
	configFile  = "config.yaml"
	historyFile = "config_history.jsonl"
	metricsFile = "metrics.jsonl"
)

// checkFreshLog refuses to start a run over the logs of an earlier one
// (an output with logs but no checkpoint) unless told to overwrite: the
// fresh run would cut its metrics.jsonl to nothing.
func (t *Trainer) checkFreshLog(name string) error {
	if t.opts.Overwrite {
		return nil
	}
	logDir := filepath.Join(t.opts.Output, LogDir)
	for _, f := range []string{metricsFile, configFile} {
		st, err := os.Stat(filepath.Join(logDir, f))
		if err != nil || st.Size() == 0 {
			continue
		}
		what := f
		if b, err := os.ReadFile(filepath.Join(logDir, metricsFile)); err == nil && len(b) > 0 {
			what = fmt.Sprintf("%s with %d rows", metricsFile, bytes.Count(b, []byte("\n")))
		}
		return fmt.Errorf("%s: %s holds the log of an earlier run (log/%s) but no checkpoint: pass --overwrite to start over, or choose another --output", name, t.opts.Output, what)
	}
	return nil
}

// openLog writes log/config.yaml and log/model.json at a fresh start and
// opens metrics.jsonl. A resumed run keeps the config it started with:
// what it changed is appended, with the step, to config_history.jsonl.
func (t *Trainer) openLog(name string, resume bool) error {
	logDir := filepath.Join(t.opts.Output, LogDir)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	cfgPath := filepath.Join(logDir, configFile)
	old, err := os.ReadFile(cfgPath)
	if !resume || err != nil {
		if err := atomicfile.WriteFile(cfgPath, t.cfg.YAML()); err != nil {
			return fmt.Errorf("%s: log/%s: %w", name, configFile, err)
		}
		if err := atomicfile.WriteFile(filepath.Join(logDir, "model.json"), t.mc.JSON()); err != nil {
			return fmt.Errorf("%s: log/model.json: %w", name, err)
		}
	} else if err := t.recordChanges(logDir, old); err != nil {
		return fmt.Errorf("%s: log/%s: %w", name, historyFile, err)
	}
	t.metrics, err = openMetrics(filepath.Join(logDir, metricsFile), t.step, resume)
	return err
}

// configChange is one line of config_history.jsonl.
type configChange struct {
	Step    int               `json:"step"`
	Time    string            `json:"time"`
	Changes map[string][2]any `json:"changes"`
}

// recordChanges appends the keys whose values differ between the run's
// original config (old, YAML) and this resume's.
func (t *Trainer) recordChanges(logDir string, old []byte) error {
	var was, now map[string]any
	if err := yaml.Unmarshal(old, &was); err != nil {
		return fmt.Errorf("log/%s: %w", configFile, err)
	}
	if err := yaml.Unmarshal(t.cfg.YAML(), &now); err != nil {
		return err
	}
	ch := configChange{Step: t.step, Time: time.Now().UTC().Format(time.RFC3339), Changes: map[string][2]any{}}
	for _, k := range sortedKeys(now) {
		if !reflect.DeepEqual(was[k], now[k]) {
			ch.Changes[k] = [2]any{was[k], now[k]}
		}
	}
	for k, v := range was {
		if _, ok := now[k]; !ok {
			ch.Changes[k] = [2]any{v, nil}
		}
	}
	if len(ch.Changes) == 0 {
		return nil
	}
	b, err := json.Marshal(ch)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(logDir, historyFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
