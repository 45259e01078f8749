package main

import (
	"strings"
	"testing"
)

func TestDeviceFlag(t *testing.T) {
	for _, c := range []struct {
		in      string
		kind    string
		ordinal int
		bad     bool
	}{{"cpu", "cpu", 0, false}, {"cuda", "cuda", 0, false}, {"cuda:1", "cuda", 1, false}, {"cuda:12", "cuda", 12, false},
		{"cuda:x", "", 0, true}, {"cuda:-1", "", 0, true}, {"cpu:0", "", 0, true}, {"gpu", "", 0, true}} {
		kind, n, err := parseDevice(c.in)
		if c.bad {
			if err == nil || !strings.Contains(err.Error(), "cuda:N") {
				t.Errorf("%q: %v, want an error naming cuda:N", c.in, err)
			}
			continue
		}
		if err != nil || kind != c.kind || n != c.ordinal {
			t.Errorf("%q: %s %d %v, want %s %d", c.in, kind, n, err, c.kind, c.ordinal)
		}
	}
	if cudaBackend == nil {
		// The default build names what is missing, not the syntax.
		_, err := openBackend("cuda:1", 1)
		if err == nil || !strings.Contains(err.Error(), "built without CUDA support") {
			t.Errorf("--device cuda:1 without CUDA: %v", err)
		}
	}
}

func TestShellCompletion(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", "finetune", "--task", ""}, []string{"vqa", "ve", "nlvr2"}},
		{[]string{"__complete", "eval", "--task", ""}, []string{"pretrain", "vqa", "nlvr2"}},
		{[]string{"__complete", "eval", "--variant", ""}, []string{"paired-attn", "paired", "triplet"}},
		{[]string{"__complete", "pretrain", "--device", ""}, []string{"cpu", "cuda", "cuda:1"}},
		{[]string{"__complete", "bench", "--model", ""}, []string{"base", "large", "tiny"}},
	} {
		out, err := runUniter(t, c.args...)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		lines := strings.Split(out, "\n")
		for _, w := range c.want {
			found := false
			for _, l := range lines {
				found = found || l == w
			}
			if !found {
				t.Errorf("%v: %q not offered:\n%s", c.args, w, out)
			}
		}
	}
}
