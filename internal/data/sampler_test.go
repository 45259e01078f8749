package data

import (
	"errors"
	"io"
	"reflect"
	"slices"
	"testing"
)

func TestTokenBucketPack(t *testing.T) {
	lens := []int{5, 3, 9, 2, 7, 1}
	cases := []struct {
		name     string
		lens     []int
		s        TokenBucketSampler
		want     [][]int
		wantDrop [][]int
	}{
		{
			// sorted 2,4,0,1,3,5; 9*(2+2)=36 fits, 9*(4+2)=54 does not.
			name:     "one bucket",
			lens:     lens,
			s:        TokenBucketSampler{MaxTokens: 36, BucketSize: 8192, SizeMultiple: 2},
			want:     [][]int{{2, 4, 0, 1}, {3, 5}},
			wantDrop: [][]int{{2, 4, 0, 1}},
		},
		{
			// buckets {0,1,2} -> 2,0,1 and {3,4,5} -> 4,3,5.
			name:     "buckets of three",
			lens:     lens,
			s:        TokenBucketSampler{MaxTokens: 20, BucketSize: 3, SizeMultiple: 2},
			want:     [][]int{{2, 0}, {1}, {4, 3}, {5}},
			wantDrop: [][]int{{2, 0}, {4, 3}},
		},
		{
			// The running max stays 10 after the first emit: with a reset
			// 2,3,4 would fit one batch.
			name:     "running max not reset",
			lens:     []int{10, 2, 2, 2, 2},
			s:        TokenBucketSampler{MaxTokens: 20, BucketSize: 8192, SizeMultiple: 1},
			want:     [][]int{{0, 1}, {2, 3}, {4}},
			wantDrop: [][]int{{0, 1}, {2, 3}},
		},
		{
			name:     "ties keep order, budget met exactly",
			lens:     []int{4, 4, 4, 4},
			s:        TokenBucketSampler{MaxTokens: 16, BucketSize: 8192, SizeMultiple: 2},
			want:     [][]int{{0, 1, 2, 3}},
			wantDrop: nil,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ids := make([]int, len(c.lens))
			for i := range ids {
				ids[i] = i
			}
			got, err := c.s.pack(ids, c.lens)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("pack = %v, want %v", got, c.want)
			}
			c.s.DropLast = true
			got, err = c.s.pack(ids, c.lens)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.wantDrop) {
				t.Errorf("pack droplast = %v, want %v", got, c.wantDrop)
			}
		})
	}
}

func TestTokenBucketErrors(t *testing.T) {
	cases := []struct {
		name string
		lens []int
		s    TokenBucketSampler
	}{
		{"chunk over budget", []int{11, 1}, TokenBucketSampler{MaxTokens: 20, BucketSize: 8, SizeMultiple: 2}},
		{"zero budget", []int{1}, TokenBucketSampler{BucketSize: 8, SizeMultiple: 2}},
		{"zero multiple", []int{1}, TokenBucketSampler{MaxTokens: 8, BucketSize: 8}},
		{"negative length", []int{-1}, TokenBucketSampler{MaxTokens: 8, BucketSize: 8, SizeMultiple: 1}},
	}
	for _, c := range cases {
		if _, err := c.s.Batches(c.lens, 0); err == nil {
			t.Errorf("%s: no error", c.name)
		}
	}
}

func randomLens(n int, seed uint64) []int {
	rng := newRNG(seed)
	lens := make([]int, n)
	for i := range lens {
		lens[i] = 10 + rng.IntN(60)
	}
	return lens
}

func TestTokenBucketBatches(t *testing.T) {
	lens := randomLens(20000, 1)
	s := NewTokenBucketSampler(4096, 7, false)
	a, err := s.Batches(lens, 3)
	if err != nil {
		t.Fatal(err)
	}
	// Every example exactly once; every batch within budget by the rule.
	seen := make([]bool, len(lens))
	for _, b := range a {
		m := 0
		for _, i := range b {
			if seen[i] {
				t.Fatalf("index %d twice", i)
			}
			seen[i] = true
			m = max(m, lens[i])
		}
		if m*len(b) > s.MaxTokens {
			t.Fatalf("batch of %d x %d over budget", len(b), m)
		}
	}
	if slices.Contains(seen, false) {
		t.Fatal("an index is missing")
	}
	// Deterministic for seed and epoch; different across epochs and seeds.
	b, _ := s.Batches(lens, 3)
	if !reflect.DeepEqual(a, b) {
		t.Error("same seed and epoch gave different batches")
	}
	c, _ := s.Batches(lens, 4)
	if reflect.DeepEqual(a, c) {
		t.Error("epochs 3 and 4 gave the same batches")
	}
	s2 := s
	s2.Seed = 8
	d, _ := s2.Batches(lens, 3)
	if reflect.DeepEqual(a, d) {
		t.Error("seeds 7 and 8 gave the same batches")
	}
	// Droplast: one partial batch dropped per bucket at most, the rest
	// multiples of the size multiple.
	s.DropLast = true
	e, _ := s.Batches(lens, 3)
	n := 0
	for _, b := range e {
		if len(b)%s.SizeMultiple != 0 {
			t.Fatalf("droplast kept a batch of %d", len(b))
		}
		n += len(b)
	}
	buckets := (len(lens) + s.BucketSize - 1) / s.BucketSize
	if len(a)-len(e) != buckets || n >= len(lens) {
		t.Errorf("droplast: %d batches vs %d, %d examples kept", len(e), len(a), n)
	}
}

func TestBatchStreamResume(t *testing.T) {
	lens := randomLens(300, 2)
	s := NewTokenBucketSampler(1024, 1, false)
	fixed := func(int) ([]int, error) { return lens, nil }
	full := NewBatchStream(s, fixed, 3)
	var all []Job
	for {
		j, err := full.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, j)
	}
	per, _ := s.Batches(lens, 0)
	if len(all) < 3*len(per)-3 || all[0].Pos != (Position{}) {
		t.Fatalf("%d jobs for 3 epochs of ~%d", len(all), len(per))
	}
	// Resume from every fourth position and compare the rest.
	for k := 0; k < len(all); k += 4 {
		r := NewBatchStream(s, fixed, 3)
		r.Seek(all[k].Pos)
		for _, want := range all[k:] {
			got, err := r.Next()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("resume at %+v: got %+v, want %+v", all[k].Pos, got.Pos, want.Pos)
			}
		}
	}
	// Resuming after a consumed batch, across an epoch boundary too.
	for k := 0; k+1 < len(all); k++ {
		r := NewBatchStream(s, fixed, 3)
		r.Seek(all[k].Pos.Next())
		if got, err := r.Next(); err != nil || got.Pos != all[k+1].Pos {
			t.Fatalf("after %+v: got %+v, %v; want %+v", all[k].Pos, got.Pos, err, all[k+1].Pos)
		}
	}
	// A batch index past the epoch's end rolls over.
	r := NewBatchStream(s, fixed, 0)
	r.Seek(Position{Epoch: 0, Batch: 1 << 20})
	if j, _ := r.Next(); j.Pos != (Position{Epoch: 1}) {
		t.Errorf("rollover gave %+v", j.Pos)
	}
	// An epoch with no batch is an error, not a hang.
	empty := NewBatchStream(TokenBucketSampler{MaxTokens: 100, BucketSize: 8, SizeMultiple: 8, DropLast: true},
		func(int) ([]int, error) { return []int{1, 2}, nil }, 0)
	if _, err := empty.Next(); err == nil {
		t.Error("empty epoch: no error")
	}
}

func TestShard(t *testing.T) {
	ids := []string{"a", "b", "c", "d", "e", "f", "g"}
	cases := []struct {
		rank, world int
		want        []string
	}{
		{0, 1, ids},
		{0, 3, []string{"a", "d", "g"}},
		{1, 3, []string{"b", "e"}},
		{2, 3, []string{"c", "f"}},
		{6, 8, []string{"g"}},
		{7, 8, []string{}},
	}
	for _, c := range cases {
		got, err := Shard(ids, c.rank, c.world)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("Shard(%d/%d) = %v, %v; want %v", c.rank, c.world, got, err, c.want)
		}
	}
	for _, bad := range [][2]int{{0, 0}, {-1, 2}, {2, 2}} {
		if _, err := Shard(ids, bad[0], bad[1]); err == nil {
			t.Errorf("Shard(%d/%d): no error", bad[0], bad[1])
		}
	}
}

func TestSequentialBatches(t *testing.T) {
	got, err := SequentialBatches([]int{3, 5, 2, 9, 1, 1}, 12, 0)
	if err != nil {
		t.Fatal(err)
	}
	// 3,5 -> 5*2=10; +2 -> 15 > 12: cut. 2,9 -> 18: cut. 9; 9,1 -> 18: cut. 1,1.
	want := [][]int{{0, 1}, {2}, {3}, {4, 5}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("SequentialBatches = %v, want %v", got, want)
	}
	got, _ = SequentialBatches([]int{1, 1, 1, 1, 1}, 100, 2)
	if want := [][]int{{0, 1}, {2, 3}, {4}}; !reflect.DeepEqual(got, want) {
		t.Errorf("SequentialBatches max examples = %v, want %v", got, want)
	}
	if _, err := SequentialBatches([]int{13}, 12, 0); err == nil {
		t.Error("over-budget example: no error")
	}
}
