package data

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Source yields the jobs of a loader in order; io.EOF ends it. It is only
// called from one goroutine. *BatchStream and *SliceSource are sources.
type Source interface {
	Next() (Job, error)
}

// BuildFunc reads, decodes and collates the examples of one job. It is
// called concurrently from several goroutines, so any randomness it uses
// must come from the job (NewRand with its position), never from shared
// state, for batches to be the same whichever worker builds them.
type BuildFunc[T any] func(ctx context.Context, job Job) (T, error)

// Loader builds batches ahead of the consumer on worker goroutines and
// hands them out in source order, whatever order the workers finish in.
type Loader[T any] struct {
	ctx    context.Context
	cancel context.CancelFunc
	order  chan *slot[T]
	wg     sync.WaitGroup
	err    error
}

// slot is one job in flight; done is closed once batch or err is set.
type slot[T any] struct {
	job   Job
	batch T
	err   error
	done  chan struct{}
}

// NewLoader starts workers goroutines building the jobs of src with build,
// keeping at most prefetch built or building batches ahead of the consumer
// (at least workers, so every worker can be busy). Close must be called to
// release the goroutines.
func NewLoader[T any](ctx context.Context, src Source, build BuildFunc[T], workers, prefetch int) *Loader[T] {
	workers = max(workers, 1)
	ctx, cancel := context.WithCancel(ctx)
	l := &Loader[T]{ctx: ctx, cancel: cancel, order: make(chan *slot[T], max(prefetch, workers))}
	jobs := make(chan *slot[T])
	l.wg.Add(1 + workers)
	go l.dispatch(src, jobs)
	for range workers {
		go func() {
			defer l.wg.Done()
			for s := range jobs {
				if err := ctx.Err(); err != nil {
					s.err = err
				} else if s.batch, s.err = build(ctx, s.job); s.err != nil && ctx.Err() == nil {
					s.err = fmt.Errorf("epoch %d batch %d: %w", s.job.Pos.Epoch, s.job.Pos.Batch, s.err)
				}
				close(s.done)
			}
		}()
	}
	return l
}

// dispatch queues every job twice: in order for the consumer, and to the
// workers. The order queue's capacity is what bounds the work ahead.
func (l *Loader[T]) dispatch(src Source, jobs chan<- *slot[T]) {
	defer l.wg.Done()
	defer close(jobs)
	defer close(l.order)
	for {
		job, err := src.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		s := &slot[T]{job: job, done: make(chan struct{})}
		if err != nil {
			s.err = fmt.Errorf("batch source: %w", err)
			close(s.done)
		}
		select {
		case l.order <- s:
		case <-l.ctx.Done():
			return
		}
		if err != nil {
			return
		}
		select {
		case jobs <- s:
		case <-l.ctx.Done():
			return
		}
	}
}

// Next returns the next batch and its position. It returns io.EOF after the
// last batch, the context's error once it is cancelled, and the first
// build or source error (naming the batch position); after an error every
// later call returns it again.
func (l *Loader[T]) Next() (T, Position, error) {
	var zero T
	if l.err == nil {
		l.err = l.ctx.Err()
	}
	if l.err != nil {
		return zero, Position{}, l.err
	}
	var s *slot[T]
	var ok bool
	select {
	case s, ok = <-l.order:
	case <-l.ctx.Done():
		l.err = l.ctx.Err()
		return zero, Position{}, l.err
	}
	if !ok {
		if err := l.ctx.Err(); err != nil {
			l.err = err
		} else {
			l.err = io.EOF
		}
		return zero, Position{}, l.err
	}
	select {
	case <-s.done:
	case <-l.ctx.Done():
		l.err = l.ctx.Err()
		return zero, Position{}, l.err
	}
	if s.err != nil {
		l.err = s.err
		l.cancel()
		return zero, Position{}, l.err
	}
	return s.batch, s.job.Pos, nil
}

// Close stops the workers and waits for them. Batches not yet consumed are
// discarded.
func (l *Loader[T]) Close() {
	l.cancel()
	l.wg.Wait()
}
