package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"uniter/internal/train"
)

// signalAfterRows sends sig to this process (n times, 5 ms apart) once
// the run in out has logged rows metrics rows; Run installs the handler
// before it writes the first.
func signalAfterRows(out string, rows, n int, sig syscall.Signal) {
	go func() {
		for {
			if b, _ := os.ReadFile(filepath.Join(out, "log", "metrics.jsonl")); strings.Count(string(b), "\n") >= rows {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		for range n {
			_ = syscall.Kill(os.Getpid(), sig)
			time.Sleep(5 * time.Millisecond)
		}
	}()
}

// TestInterruptTellsTheTruth: an interrupted run exits 130 (SIGINT) or 143
// (SIGTERM), says how to continue, and does not claim to have finished or
// draw its bar to 100%. (A second signal's effect, skipping validation, is
// train's TestHurrySkipsValidation: here it could arrive after the run
// handed the signals back and kill the test.)
func TestInterruptTellsTheTruth(t *testing.T) {
	cfg, _ := pretrainConfig(t, "valid_steps: 1")
	for _, c := range []struct {
		sig  syscall.Signal
		n    int
		code int
	}{{syscall.SIGINT, 1, 130}, {syscall.SIGTERM, 1, 143}} {
		out := t.TempDir()
		signalAfterRows(out, 3, c.n, c.sig)
		o, err := runUniter(t, "pretrain", "--config", cfg, "--output", out, "--set", "num_train_steps=100000")
		var ec exitCode
		if !errors.As(err, &ec) || ec.code != c.code {
			t.Fatalf("%v x%d: err %v, want exit status %d\n%s", c.sig, c.n, err, c.code, o)
		}
		if !strings.Contains(err.Error(), "continue with: uniter") || !strings.Contains(err.Error(), "--resume") {
			t.Errorf("%v: %q does not say how to continue", c.sig, err)
		}
		if strings.Contains(o, "finished at step") || strings.Contains(o, "100%") {
			t.Errorf("%v: an interrupted run claims to have finished:\n%s", c.sig, o)
		}
		latest, err := train.LatestCheckpoint(filepath.Join(out, "ckpt"))
		if err != nil || latest == "" {
			t.Fatalf("%v x%d: no checkpoint (%v)", c.sig, c.n, err)
		}
	}
}

// TestStepsPastSchedule: --steps beyond num_train_steps is refused, naming
// both and how to extend the schedule.
func TestStepsPastSchedule(t *testing.T) {
	cfg, _ := pretrainConfig(t, "")
	_, err := runUniter(t, "pretrain", "--config", cfg, "--quiet", "--output", t.TempDir(), "--steps", "30")
	if err == nil || !strings.Contains(err.Error(), "--steps 30 is past num_train_steps 20") || !strings.Contains(err.Error(), "--set num_train_steps=30") {
		t.Fatalf("--steps 30 of 20: %v", err)
	}
}

// TestRunRecordKept: a resume with a changed config keeps log/config.yaml
// and appends the change with its step; a fresh start over logs without a
// checkpoint is refused unless --overwrite.
func TestRunRecordKept(t *testing.T) {
	cfg, _ := pretrainConfig(t, "save_steps: 2")
	out := t.TempDir()
	if o, err := runUniter(t, "pretrain", "--config", cfg, "--quiet", "--output", out, "--steps", "2"); err != nil {
		t.Fatalf("%v\n%s", err, o)
	}
	orig, err := os.ReadFile(filepath.Join(out, "log", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if o, err := runUniter(t, "pretrain", "--config", cfg, "--quiet", "--output", out, "--resume", "--steps", "3", "--set", "learning_rate=1e-2"); err != nil {
		t.Fatalf("%v\n%s", err, o)
	}
	now, _ := os.ReadFile(filepath.Join(out, "log", "config.yaml"))
	if string(now) != string(orig) {
		t.Errorf("log/config.yaml was rewritten by the resume")
	}
	hist, err := os.ReadFile(filepath.Join(out, "log", "config_history.jsonl"))
	if err != nil || !strings.Contains(string(hist), `"step":2`) || !strings.Contains(string(hist), `"learning_rate":[0.001,0.01]`) {
		t.Errorf("config history %q (%v), want the learning_rate change at step 2", hist, err)
	}

	// Logs but no checkpoint: refused, then allowed with --overwrite.
	if err := os.RemoveAll(filepath.Join(out, "ckpt")); err != nil {
		t.Fatal(err)
	}
	metrics, _ := os.ReadFile(filepath.Join(out, "log", "metrics.jsonl"))
	_, err = runUniter(t, "pretrain", "--config", cfg, "--quiet", "--output", out, "--steps", "1")
	if err == nil || !strings.Contains(err.Error(), "--overwrite") {
		t.Fatalf("fresh start over logs: %v, want a refusal naming --overwrite", err)
	}
	if after, _ := os.ReadFile(filepath.Join(out, "log", "metrics.jsonl")); string(after) != string(metrics) {
		t.Fatalf("the refused start changed metrics.jsonl")
	}
	if o, err := runUniter(t, "pretrain", "--config", cfg, "--quiet", "--output", out, "--steps", "1", "--overwrite"); err != nil {
		t.Fatalf("--overwrite: %v\n%s", err, o)
	}
}
