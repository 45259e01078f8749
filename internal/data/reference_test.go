package data

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

// The tests here compare with scripts/data_reference.py, which computes the
// same things the official (Python) way. They skip where Debian's python3
// lacks the modules (scripts/setup.sh python installs them).

const python = "/usr/bin/python3"

func needPython(t *testing.T, modules string) {
	t.Helper()
	if err := exec.Command(python, "-c", "import "+modules).Run(); err != nil {
		t.Skipf("%s cannot import %s", python, modules)
	}
}

func runReference(t *testing.T, in any, args ...string) []byte {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, append([]string{"../../scripts/data_reference.py"}, args...)...)
	cmd.Stdin = bytes.NewReader(b)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("data_reference.py %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return out
}

type samplerCase struct {
	Lens         []int `json:"lens"`
	IDs          []int `json:"ids"`
	BucketSize   int   `json:"bucket_size"`
	MaxTokens    int   `json:"max_tokens"`
	SizeMultiple int   `json:"size_multiple"`
	DropLast     bool  `json:"droplast"`
}

func TestReferenceSampler(t *testing.T) {
	needPython(t, "json")
	var cases []samplerCase
	for k := range 40 {
		rng := NewRand(77, uint64(k))
		n := 1 + rng.IntN(3000)
		c := samplerCase{BucketSize: 1 + rng.IntN(1000), SizeMultiple: 1 + rng.IntN(8), DropLast: k%2 == 1}
		for range n {
			c.Lens = append(c.Lens, 1+rng.IntN(1+rng.IntN(120)))
		}
		// Few distinct lengths make ties, which the stable sort must keep.
		if k%5 == 0 {
			for i := range c.Lens {
				c.Lens[i] = 10 + c.Lens[i]%3
			}
		}
		c.MaxTokens = 130*c.SizeMultiple + rng.IntN(6000)
		c.IDs = rng.Perm(n)
		cases = append(cases, c)
	}
	var want [][][]int
	if err := json.Unmarshal(runReference(t, cases, "sampler"), &want); err != nil {
		t.Fatal(err)
	}
	for k, c := range cases {
		s := TokenBucketSampler{MaxTokens: c.MaxTokens, BucketSize: c.BucketSize, SizeMultiple: c.SizeMultiple, DropLast: c.DropLast}
		got, err := s.pack(c.IDs, c.Lens)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 && len(want[k]) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, want[k]) {
			t.Errorf("case %d (%d examples, bucket %d, budget %d, multiple %d, droplast %v): %d batches, reference %d",
				k, len(c.Lens), c.BucketSize, c.MaxTokens, c.SizeMultiple, c.DropLast, len(got), len(want[k]))
		}
	}
}

func TestReferenceGatherIndex(t *testing.T) {
	needPython(t, "torch")
	type gatherCase struct {
		TxtLens []int `json:"txt_lens"`
		NBBs    []int `json:"nbbs"`
	}
	var cases []gatherCase
	var batches []*Batch
	for k := range 30 {
		rng := NewRand(78, uint64(k))
		var c gatherCase
		var exs []*Example
		for range 1 + rng.IntN(12) {
			tl, nbb := 2+rng.IntN(40), rng.IntN(50)
			if k == 0 {
				nbb = 0 // text-only rows
			}
			c.TxtLens = append(c.TxtLens, tl)
			c.NBBs = append(c.NBBs, nbb)
			exs = append(exs, testExample("x", tl, nbb, 1, 0))
		}
		b, err := Collate(exs, 1)
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, c)
		batches = append(batches, b)
	}
	var want [][]int32
	if err := json.Unmarshal(runReference(t, cases, "gather"), &want); err != nil {
		t.Fatal(err)
	}
	for k, b := range batches {
		if !reflect.DeepEqual(b.GatherIndex, want[k]) {
			t.Errorf("case %d (txt_lens %v, nbbs %v): gather index differs from the reference", k, cases[k].TxtLens, cases[k].NBBs)
		}
	}
}

func TestReferenceSynth(t *testing.T) {
	needPython(t, "lmdb, lz4.frame, msgpack, msgpack_numpy, numpy")
	dir, _ := testWorld(t)
	out, err := exec.Command(python, "../../scripts/data_reference.py", "synth", dir).CombinedOutput()
	t.Logf("data_reference.py synth: %s", bytes.TrimSpace(out))
	if err != nil {
		t.Fatalf("the official read paths reject the synthetic world: %v", err)
	}
}
