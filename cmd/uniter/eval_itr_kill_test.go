package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"uniter/internal/train"
)

// In a re-executed test binary (TestMain's UNITER_TEST_MAIN), these
// variables set the ranking's test hooks: small blocks, and a pause after
// each progress report so that a kill lands between blocks.
func init() {
	if os.Getenv("UNITER_TEST_MAIN") != "1" {
		return
	}
	if n, err := strconv.Atoi(os.Getenv("UNITER_TEST_ITR_BLOCK_TEXTS")); err == nil {
		itrBlockTexts = n
	}
	if d, err := time.ParseDuration(os.Getenv("UNITER_TEST_ITR_PROGRESS_SLEEP")); err == nil {
		itrProgressHook = func(int, int) { time.Sleep(d) }
	}
}

// uniterProc is `uniter args` as a child process (the test binary
// re-executed), with extra environment variables.
func uniterProc(args []string, env ...string) (*exec.Cmd, *bytes.Buffer) {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), "UNITER_TEST_MAIN=1"), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	return cmd, &out
}

// TestEvalITRKillResume SIGKILLs a full ranking (eval --task itr, one text
// per block) after some blocks are on disk, reruns it with the same
// arguments, and checks that the rerun resumes the finished blocks and
// writes the same bytes as an uninterrupted run.
func TestEvalITRKillResume(t *testing.T) {
	dir := officialDir + "itr_official/"
	args := func(out string) []string {
		return []string{"eval", "--task", "itr", "--checkpoint", dir + "model.pt", "--model-config", dir + "model.json",
			"--img-dim", "48", "--txt-db", dir + "txt.db", "--img-db", dir + "img.db", "--out", out, "--save-logits", "--device", "cpu"}
	}
	const blocks = "UNITER_TEST_ITR_BLOCK_TEXTS=1" // 12 blocks
	full, killed := filepath.Join(t.TempDir(), "full"), filepath.Join(t.TempDir(), "killed")
	cmd, out := uniterProc(args(full), blocks)
	if err := cmd.Run(); err != nil {
		t.Fatalf("uninterrupted run: %v\n%s", err, out)
	}

	cmd, out = uniterProc(args(killed), blocks, "UNITER_TEST_ITR_PROGRESS_SLEEP=5ms")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	doneBlocks := func() int {
		var p struct{ Done []bool }
		b, err := os.ReadFile(filepath.Join(killed, train.ITRProgressFile))
		if err != nil || json.Unmarshal(b, &p) != nil {
			return 0
		}
		n := 0
		for _, d := range p.Done {
			if d {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(2 * time.Minute)
	for doneBlocks() < 3 {
		select {
		case err := <-exited:
			t.Fatalf("the ranking ended (%v) before 3 of its blocks were recorded\n%s", err, out)
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("no 3 blocks recorded in 2 minutes\n%s", out)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-exited
	if _, err := os.Stat(filepath.Join(killed, "metrics.json")); err == nil {
		t.Fatalf("the ranking finished before the kill\n%s", out)
	}
	at := doneBlocks()
	if at >= 12 {
		t.Fatalf("all 12 blocks recorded before the kill")
	}

	cmd, out = uniterProc(args(killed), blocks)
	if err := cmd.Run(); err != nil {
		t.Fatalf("rerun: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`resuming: (\d+) of 12 blocks`).FindStringSubmatch(out.String())
	if m == nil || m[1] != strconv.Itoa(at) {
		t.Errorf("rerun did not resume the %d recorded blocks:\n%s", at, out)
	}
	t.Logf("killed after %d of 12 blocks; resumed", at)
	for _, f := range []string{"logits.npy", "ids.json", "img_ids.json"} {
		a, errA := os.ReadFile(filepath.Join(full, f))
		b, errB := os.ReadFile(filepath.Join(killed, f))
		if errA != nil || errB != nil || !bytes.Equal(a, b) {
			t.Errorf("%s: resumed run differs from the uninterrupted one (%v, %v)", f, errA, errB)
		}
	}
	ma, mb := readJSON(t, filepath.Join(full, "metrics.json")), readJSON(t, filepath.Join(killed, "metrics.json"))
	for k, v := range ma {
		if k == "rank_s" || k == "pairs_per_s" || strings.HasSuffix(k, "_db") {
			continue
		}
		if fmt.Sprint(mb[k]) != fmt.Sprint(v) {
			t.Errorf("metrics.json %s: resumed %v, uninterrupted %v", k, mb[k], v)
		}
	}
	for _, f := range []string{train.ITRScoresPartial, train.ITRProgressFile} {
		if _, err := os.Stat(filepath.Join(killed, f)); err == nil {
			t.Errorf("%s left behind", f)
		}
	}
}
