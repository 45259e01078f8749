package train

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"uniter/internal/atomicfile"
)

// Row is a JSON object whose fields keep their order: one line of
// log/metrics.jsonl, so that the file reads the same way every run (and
// the refer annotations `data txtdb` rebuilds in their pickled order).
type Row []Field

// Field is one named value of a Row.
type Field struct {
	Key   string
	Value any
}

// MarshalJSON writes the fields as one JSON object in order.
func (r Row) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range r {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.Key)
		v, err := json.Marshal(f.Value)
		if err != nil {
			return nil, fmt.Errorf("field %s: %w", f.Key, err)
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// Get returns the value of key.
func (r Row) Get(key string) (any, bool) {
	for _, f := range r {
		if f.Key == key {
			return f.Value, true
		}
	}
	return nil, false
}

// Record is a metrics.jsonl row read back.
type Record map[string]any

// Step is the row's optimizer step.
func (r Record) Step() int {
	f, _ := r["step"].(float64)
	return int(f)
}

// Float returns a numeric field (false when absent).
func (r Record) Float(key string) (float64, bool) {
	f, ok := r[key].(float64)
	return f, ok
}

// String returns a string field ("" when absent).
func (r Record) String(key string) string {
	s, _ := r[key].(string)
	return s
}

// metricsLog appends rows to metrics.jsonl and keeps them for the plots.
// Without a file (the ranks other than 0 of a multi-process run) it
// writes nothing.
type metricsLog struct {
	path    string
	f       *os.File
	records []Record
}

// openMetrics opens path for appending. When resuming at step, rows past
// step (logged after the checkpoint the run resumes from) are dropped so
// that the file reads as one uninterrupted run; a torn last line is
// dropped too.
func openMetrics(path string, resumeStep int, resume bool) (*metricsLog, error) {
	l := &metricsLog{path: path}
	if resume {
		b, err := os.ReadFile(path)
		if err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("metrics %s: %w", path, err)
		}
		var keep bytes.Buffer
		lines := bytes.Split(b, []byte("\n"))
		for i, line := range lines {
			if len(line) == 0 {
				continue
			}
			var r Record
			if err := json.Unmarshal(line, &r); err != nil {
				// Only the last line can be torn by a crash mid-write.
				if i == len(lines)-1 {
					break
				}
				return nil, fmt.Errorf("metrics %s: line %d: %w", path, i+1, err)
			}
			if r.Step() <= resumeStep {
				keep.Write(line)
				keep.WriteByte('\n')
				l.records = append(l.records, r)
			}
		}
		if err := atomicfile.WriteFile(path, keep.Bytes()); err != nil {
			return nil, fmt.Errorf("metrics %s: %w", path, err)
		}
	}
	flag := os.O_CREATE | os.O_WRONLY | os.O_APPEND
	if !resume {
		flag |= os.O_TRUNC
	}
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	l.f = f
	return l, nil
}

// Write appends one row.
func (l *metricsLog) Write(r Row) error {
	if l.f == nil {
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := l.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("metrics %s: %w", l.path, err)
	}
	var rec Record
	_ = json.Unmarshal(b, &rec)
	l.records = append(l.records, rec)
	return nil
}

// Sync flushes the file to disk (before a checkpoint claims the steps).
func (l *metricsLog) Sync() error {
	if l.f == nil {
		return nil
	}
	return l.f.Sync()
}

// Close closes the file.
func (l *metricsLog) Close() error {
	if l.f == nil {
		return nil
	}
	return l.f.Close()
}

// ReadMetrics reads every row of a metrics.jsonl file.
func ReadMetrics(path string) ([]Record, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	var out []Record
	for i, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r Record
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("metrics %s: line %d: %w", path, i+1, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// logWindow gathers each task key's loss and loss parts over the steps
// between two logged rows: with log_steps > 1 a row is one step of one
// task, and a task drawn rarely would otherwise show in few rows.
type logWindow map[string]*keyMeans

type keyMeans struct {
	steps int
	sums  map[string]float64
}

func (w *logWindow) add(r stepRow) {
	if *w == nil {
		*w = logWindow{}
	}
	m := (*w)[r.key]
	if m == nil {
		m = &keyMeans{sums: map[string]float64{}}
		(*w)[r.key] = m
	}
	m.steps++
	m.sums["loss"] += r.loss
	for k, v := range r.parts {
		m.sums[k] += v
	}
}

// field is the window's means as the row field "window" ({key: {"steps":
// n, "loss": mean, part: mean}}), and starts the next window.
func (w *logWindow) field() Field {
	out := map[string]map[string]float64{}
	for key, m := range *w {
		means := map[string]float64{"steps": float64(m.steps)}
		for k, v := range m.sums {
			means[k] = v / float64(m.steps)
		}
		out[key] = means
	}
	*w = nil
	return Field{"window", out}
}
