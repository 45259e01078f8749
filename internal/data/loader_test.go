package data

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func testBatches(n int) [][]int {
	b := make([][]int, n)
	for i := range b {
		b[i] = []int{i, 2 * i}
	}
	return b
}

// sleepJitter sleeps a job-determined time so workers finish out of order.
func sleepJitter(j Job) {
	time.Sleep(time.Duration(NewRand(1, uint64(j.Pos.Batch)).IntN(300)) * time.Microsecond)
}

func TestLoaderOrder(t *testing.T) {
	for _, c := range []struct{ workers, prefetch int }{{1, 1}, {4, 2}, {16, 4}, {16, 64}} {
		t.Run(fmt.Sprintf("w%d_p%d", c.workers, c.prefetch), func(t *testing.T) {
			var started, returned atomic.Int64
			var maxAhead atomic.Int64
			build := func(_ context.Context, j Job) (int, error) {
				ahead := started.Add(1) - returned.Load()
				if ahead > maxAhead.Load() {
					maxAhead.Store(ahead)
				}
				sleepJitter(j)
				return j.Indices[0] + j.Indices[1], nil
			}
			l := NewLoader(context.Background(), NewSliceSource(testBatches(200)), build, c.workers, c.prefetch)
			defer l.Close()
			for i := 0; i < 200; i++ {
				v, pos, err := l.Next()
				returned.Add(1)
				if err != nil {
					t.Fatal(err)
				}
				if v != 3*i || pos.Batch != i {
					t.Fatalf("batch %d: got value %d at %+v", i, v, pos)
				}
			}
			for range 2 {
				if _, _, err := l.Next(); !errors.Is(err, io.EOF) {
					t.Fatalf("after the last batch: %v", err)
				}
			}
			if limit := int64(max(c.prefetch, c.workers) + 1); maxAhead.Load() > limit {
				t.Errorf("%d batches in flight, limit %d", maxAhead.Load(), limit)
			}
		})
	}
}

func TestLoaderBuildError(t *testing.T) {
	boom := errors.New("boom")
	build := func(_ context.Context, j Job) (int, error) {
		if j.Pos.Batch == 37 {
			return 0, boom
		}
		sleepJitter(j)
		return j.Pos.Batch, nil
	}
	l := NewLoader(context.Background(), NewSliceSource(testBatches(100)), build, 8, 8)
	defer l.Close()
	for i := 0; i < 37; i++ {
		if v, _, err := l.Next(); err != nil || v != i {
			t.Fatalf("batch %d: %d, %v", i, v, err)
		}
	}
	_, _, err := l.Next()
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "batch 37") {
		t.Fatalf("error %v, want boom naming batch 37", err)
	}
	if _, _, again := l.Next(); again != err {
		t.Errorf("second call: %v", again)
	}
}

// failingSource yields n jobs, then an error.
type failingSource struct{ n, i int }

func (s *failingSource) Next() (Job, error) {
	if s.i == s.n {
		return Job{}, errors.New("db gone")
	}
	s.i++
	return Job{Pos: Position{Batch: s.i - 1}}, nil
}

func TestLoaderSourceError(t *testing.T) {
	build := func(_ context.Context, j Job) (int, error) { sleepJitter(j); return j.Pos.Batch, nil }
	l := NewLoader(context.Background(), &failingSource{n: 5}, build, 4, 4)
	defer l.Close()
	for i := 0; i < 5; i++ {
		if _, _, err := l.Next(); err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
	}
	if _, _, err := l.Next(); err == nil || !strings.Contains(err.Error(), "db gone") {
		t.Fatalf("error %v, want the source's", err)
	}
}

func TestLoaderCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	build := func(ctx context.Context, j Job) (int, error) {
		if j.Pos.Batch < 3 {
			return j.Pos.Batch, nil
		}
		<-ctx.Done()
		return 0, ctx.Err()
	}
	lens := func(int) ([]int, error) { return randomLens(100, 1), nil }
	l := NewLoader(ctx, NewBatchStream(NewTokenBucketSampler(1024, 1, false), lens, 0), build, 4, 2)
	for i := 0; i < 3; i++ {
		if _, _, err := l.Next(); err != nil {
			t.Fatal(err)
		}
	}
	go func() { time.Sleep(10 * time.Millisecond); cancel() }()
	if _, _, err := l.Next(); !errors.Is(err, context.Canceled) {
		t.Fatalf("after cancel: %v", err)
	}
	done := make(chan struct{})
	go func() { l.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
}

func TestLoaderCloseEarly(t *testing.T) {
	build := func(_ context.Context, j Job) (int, error) { return j.Pos.Batch, nil }
	l := NewLoader(context.Background(), NewSliceSource(testBatches(1000)), build, 4, 4)
	if _, _, err := l.Next(); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, _, err := l.Next(); err == nil {
		t.Error("Next after Close: no error")
	}
}
