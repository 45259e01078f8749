package main

import (
	"bytes"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"uniter/internal/dist"
	"uniter/internal/train"
)

// The multi-process tests run this test binary as uniter: with
// UNITER_TEST_MAIN set, TestMain runs the command line of the remaining
// arguments instead of the tests.
func TestMain(m *testing.M) {
	if os.Getenv("UNITER_TEST_MAIN") == "1" {
		root := newRootCmd()
		root.SetArgs(os.Args[1:])
		if err := root.Execute(); err != nil {
			fmt.Fprintln(os.Stderr, "uniter:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// needGloo skips (or, under make test, fails) where Gloo cannot run.
func needGloo(t *testing.T) {
	t.Helper()
	if err := dist.GlooAvailable(); err != nil {
		if os.Getenv("UNITER_REQUIRE_GLOO") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// rankProc is one process of a torchrun-style launch on loopback.
type rankProc struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

// launchRanks starts world processes of uniter args with torchrun's
// variables (one process per "node").
func launchRanks(t *testing.T, world int, only []int, env []string, args ...string) []*rankProc {
	t.Helper()
	port := freePort(t)
	procs := make([]*rankProc, world)
	for r := 0; r < world; r++ {
		if only != nil && !containsInt(only, r) {
			continue
		}
		p := &rankProc{cmd: exec.Command(os.Args[0], args...)}
		p.cmd.Env = append(os.Environ(), "UNITER_TEST_MAIN=1", fmt.Sprintf("RANK=%d", r), fmt.Sprintf("WORLD_SIZE=%d", world),
			"LOCAL_RANK=0", "LOCAL_WORLD_SIZE=1", fmt.Sprintf("GROUP_RANK=%d", r), "MASTER_ADDR=127.0.0.1", fmt.Sprintf("MASTER_PORT=%d", port),
			"UNITER_GLOO_HOST=127.0.0.1")
		p.cmd.Env = append(p.cmd.Env, env...)
		p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[r] = p
		t.Cleanup(func() { _ = p.cmd.Process.Kill(); _ = p.cmd.Wait() })
	}
	return procs
}

func containsInt(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// waitAll waits for every started process and fails on any error.
func waitAll(t *testing.T, procs []*rankProc) {
	t.Helper()
	for r, p := range procs {
		if p == nil {
			continue
		}
		if err := p.cmd.Wait(); err != nil {
			t.Fatalf("rank %d: %v\n%s", r, err, p.out.String())
		}
	}
}

// trainRows reads the training rows (step, loss) of a run.
func trainRows(t *testing.T, out string) map[int]float64 {
	t.Helper()
	recs, err := train.ReadMetrics(filepath.Join(out, "log", "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	rows := map[int]float64{}
	for _, r := range recs {
		if r.String("split") == "" {
			rows[r.Step()], _ = r.Float("loss")
		}
	}
	return rows
}

func sameLosses(t *testing.T, name string, want, got map[int]float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d training rows, want %d", name, len(got), len(want))
	}
	for s, w := range want {
		if g := got[s]; math.Abs(g-w) > 1e-5*math.Abs(w) {
			t.Errorf("%s: step %d loss %v, want %v", name, s, g, w)
		}
	}
}

// TestTwoProcesses trains on 2 OS processes over loopback (torchrun
// variables, Gloo) and checks them against one process with twice the
// accumulation, then resumes 2 -> 1 and 1 -> 2 processes.
func TestTwoProcesses(t *testing.T) {
	needGloo(t)
	cfg, _ := pretrainConfig(t, "save_steps: 3\nvalid_steps: 3")
	dir := t.TempDir()
	one := filepath.Join(dir, "one")
	if o, err := runUniter(t, "pretrain", "--config", cfg, "--quiet", "--output", one, "--set", "num_train_steps=6",
		"--set", "gradient_accumulation_steps=2", "--threads", "1"); err != nil {
		t.Fatalf("%v\n%s", err, o)
	}
	want := trainRows(t, one)
	two := filepath.Join(dir, "two")
	args := []string{"pretrain", "--config", cfg, "--quiet", "--output", two, "--set", "num_train_steps=6",
		"--set", "gradient_accumulation_steps=1", "--threads", "1"}
	waitAll(t, launchRanks(t, 2, nil, nil, args...))
	sameLosses(t, "2 processes", want, trainRows(t, two))

	// 2 processes for 3 steps, then 1 process (accumulation 2).
	a := filepath.Join(dir, "2to1")
	waitAll(t, launchRanks(t, 2, nil, nil, append(append([]string{}, args...), "--output", a, "--steps", "3")...))
	if o, err := runUniter(t, "pretrain", "--config", cfg, "--quiet", "--output", a, "--resume", "--set", "num_train_steps=6",
		"--set", "gradient_accumulation_steps=2", "--threads", "1"); err != nil {
		t.Fatalf("%v\n%s", err, o)
	}
	sameLosses(t, "2 then 1 processes", want, trainRows(t, a))

	// 1 process for 3 steps, then 2 processes (accumulation 1).
	b := filepath.Join(dir, "1to2")
	if o, err := runUniter(t, "pretrain", "--config", cfg, "--quiet", "--output", b, "--steps", "3", "--set", "num_train_steps=6",
		"--set", "gradient_accumulation_steps=2", "--threads", "1"); err != nil {
		t.Fatalf("%v\n%s", err, o)
	}
	waitAll(t, launchRanks(t, 2, nil, nil, append(append([]string{}, args...), "--output", b, "--resume")...))
	sameLosses(t, "1 then 2 processes", want, trainRows(t, b))
}

// TestKilledRank kills one of two ranks mid-run (rank 1, then rank 0,
// which serves the rendezvous): the other exits non-zero within 60 s
// naming it, and the run resumes from the intact checkpoints.
func TestKilledRank(t *testing.T) {
	needGloo(t)
	cfg, _ := pretrainConfig(t, "save_steps: 2")
	for _, victim := range []int{1, 0} {
		out := t.TempDir()
		procs := launchRanks(t, 2, nil, nil, "pretrain", "--config", cfg, "--quiet", "--output", out, "--set", "num_train_steps=100000",
			"--set", "gradient_accumulation_steps=1", "--threads", "1")
		deadline := time.Now().Add(2 * time.Minute)
		for {
			if latest, _ := train.LatestCheckpoint(filepath.Join(out, "ckpt")); latest != "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no checkpoint after 2 minutes\nrank 0:\n%s\nrank 1:\n%s", procs[0].out.String(), procs[1].out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		_ = procs[victim].cmd.Process.Signal(syscall.SIGKILL)
		killed := time.Now()
		other := procs[1-victim]
		done := make(chan error, 1)
		go func() { done <- other.cmd.Wait() }()
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("rank %d exited 0 after rank %d was killed\n%s", 1-victim, victim, other.out.String())
			}
			t.Logf("rank %d stopped %.2fs after rank %d was killed: %s", 1-victim, time.Since(killed).Seconds(), victim, lastLine(other.out.String()))
			if !strings.Contains(lastLine(other.out.String()), fmt.Sprintf("rank %d", victim)) {
				t.Errorf("rank %d's error does not name rank %d:\n%s", 1-victim, victim, other.out.String())
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("rank %d still running 60 s after rank %d was killed\n%s", 1-victim, victim, other.out.String())
		}
		latest, err := train.LatestCheckpoint(filepath.Join(out, "ckpt"))
		if err != nil || latest == "" {
			t.Fatalf("checkpoints after the kill: %q %v", latest, err)
		}
		st, err := train.ReadState(latest)
		if err != nil {
			t.Fatal(err)
		}
		if o, err := runUniter(t, "pretrain", "--config", cfg, "--quiet", "--output", out, "--resume", "--steps", fmt.Sprint(st.Step+1),
			"--set", "num_train_steps=100000", "--set", "gradient_accumulation_steps=2", "--threads", "1"); err != nil {
			t.Fatalf("resume after rank %d was killed: %v\n%s", victim, err, o)
		}
	}
}

// TestRankNeverArrives starts rank 0 of 3 alone: the rendezvous gives up
// after its timeout naming the ranks that never came.
func TestRankNeverArrives(t *testing.T) {
	needGloo(t)
	cfg, _ := pretrainConfig(t, "")
	procs := launchRanks(t, 3, []int{0}, nil, "pretrain", "--config", cfg, "--quiet", "--output", t.TempDir(), "--dist-timeout", "2s")
	err := procs[0].cmd.Wait()
	out := procs[0].out.String()
	if err == nil || !strings.Contains(out, "ranks 1, 2 of 3 did not arrive") {
		t.Fatalf("rank 0 alone: %v, want the missing ranks named:\n%s", err, out)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestInterruptOneRank sends SIGTERM to rank 1 alone: both ranks stop
// after the same step, rank 0 saves it, and both say how to continue.
func TestInterruptOneRank(t *testing.T) {
	needGloo(t)
	cfg, _ := pretrainConfig(t, "save_steps: 1000")
	out := t.TempDir()
	procs := launchRanks(t, 2, nil, nil, "pretrain", "--config", cfg, "--quiet", "--output", out, "--set", "num_train_steps=100000",
		"--set", "gradient_accumulation_steps=1", "--threads", "1")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if b, _ := os.ReadFile(filepath.Join(out, "log", "metrics.jsonl")); bytes.Count(b, []byte("\n")) >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no metrics after 2 minutes\n%s", procs[0].out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = procs[1].cmd.Process.Signal(syscall.SIGTERM)
	var steps []string
	for r, p := range procs {
		if err := p.cmd.Wait(); err == nil {
			t.Fatalf("rank %d exited 0 after the interrupt\n%s", r, p.out.String())
		}
		line := lastLine(p.out.String())
		i := strings.Index(line, "interrupted at step ")
		if i < 0 {
			t.Fatalf("rank %d: %q, want an interrupted-run error", r, line)
		}
		steps = append(steps, strings.Fields(line[i+len("interrupted at step "):])[0])
	}
	if steps[0] != steps[1] {
		t.Fatalf("rank 0 stopped at step %s, rank 1 at %s", steps[0], steps[1])
	}
	latest, err := train.LatestCheckpoint(filepath.Join(out, "ckpt"))
	if err != nil || filepath.Base(latest) != train.CheckpointName(atoi(t, steps[0])) {
		t.Fatalf("checkpoint after the interrupt at step %s: %q %v", steps[0], latest, err)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n
}
