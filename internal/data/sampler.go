package data

import (
	"errors"
	"fmt"
	"io"
	"slices"
)

// Defaults of the official TokenBucketSampler.
const (
	DefaultBucketSize   = 8192
	DefaultSizeMultiple = 8
)

// TokenBucketSampler is UNITER's dynamic batcher (data/sampler.py): batches
// hold as many examples as fit a token budget counted with padding, in
// multiples of SizeMultiple, from buckets of similar lengths.
type TokenBucketSampler struct {
	// MaxTokens is the budget: batch size times the longest length in the
	// batch's bucket (the official batch_size argument).
	MaxTokens int
	// BucketSize is how many shuffled examples are sorted together.
	BucketSize int
	// SizeMultiple is the granularity of batch sizes.
	SizeMultiple int
	// DropLast drops the last, partial batch of every bucket.
	DropLast bool
	// Seed, with the epoch, determines the order.
	Seed uint64
	// Sequential keeps the examples and the batches in index order, every
	// epoch alike (no shuffle): train_re.py's DataLoader over a dataset
	// whose order its per-epoch shuffle never reaches.
	Sequential bool
}

// NewTokenBucketSampler returns a sampler with the official bucket size and
// size multiple.
func NewTokenBucketSampler(maxTokens int, seed uint64, dropLast bool) TokenBucketSampler {
	return TokenBucketSampler{MaxTokens: maxTokens, BucketSize: DefaultBucketSize,
		SizeMultiple: DefaultSizeMultiple, DropLast: dropLast, Seed: seed}
}

// Batches returns the batches of one epoch as lists of indices into lens,
// where lens[i] is the joint length of example i (text with specials plus
// regions). The result depends only on lens, the sampler and epoch.
//
// The running maximum length is deliberately not reset when a batch is
// emitted: buckets are sorted longest first, so every batch of a bucket is
// sized by the bucket's longest example, exactly as the original.
func (s TokenBucketSampler) Batches(lens []int, epoch int) ([][]int, error) {
	if s.MaxTokens <= 0 || s.BucketSize <= 0 || s.SizeMultiple <= 0 {
		return nil, fmt.Errorf("token bucket sampler: max tokens %d, bucket size %d and size multiple %d must be positive",
			s.MaxTokens, s.BucketSize, s.SizeMultiple)
	}
	rng := newRNG(s.Seed, streamSampler, uint64(epoch))
	ids := make([]int, len(lens))
	for i := range ids {
		if lens[i] < 0 {
			return nil, fmt.Errorf("token bucket sampler: example %d has negative length %d", i, lens[i])
		}
		ids[i] = i
	}
	if s.Sequential {
		return s.pack(ids, lens)
	}
	rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })

	batches, err := s.pack(ids, lens)
	if err != nil {
		return nil, err
	}
	rng.Shuffle(len(batches), func(i, j int) { batches[i], batches[j] = batches[j], batches[i] })
	return batches, nil
}

// pack is the deterministic part of Batches: bucket ids (already shuffled),
// sort each bucket longest first and fill batches up to the budget.
func (s TokenBucketSampler) pack(ids, lens []int) ([][]int, error) {
	var batches [][]int
	for start := 0; start < len(ids); start += s.BucketSize {
		bucket := slices.Clone(ids[start:min(start+s.BucketSize, len(ids))])
		// Stable, so ties keep the shuffled order as Python's sorted does.
		slices.SortStableFunc(bucket, func(a, b int) int { return lens[b] - lens[a] })
		maxLen := 0
		var batch []int
		for c := 0; c < len(bucket); c += s.SizeMultiple {
			chunk := bucket[c:min(c+s.SizeMultiple, len(bucket))]
			for _, i := range chunk {
				maxLen = max(maxLen, lens[i])
			}
			if maxLen*(len(batch)+s.SizeMultiple) > s.MaxTokens {
				if len(batch) == 0 {
					return nil, fmt.Errorf("token bucket sampler: budget of %d tokens is too small for %d examples of length %d",
						s.MaxTokens, s.SizeMultiple, maxLen)
				}
				batches = append(batches, batch)
				batch = slices.Clone(chunk)
			} else {
				batch = append(batch, chunk...)
			}
		}
		if !s.DropLast {
			batches = append(batches, batch)
		}
	}
	return batches, nil
}

// Position addresses one batch of a sampler's endless sequence of epochs.
// It is what a checkpoint records to resume the data order exactly.
type Position struct {
	Epoch int `json:"epoch"`
	Batch int `json:"batch"`
}

// Next is the position after p: where a stream resumes once the batch at
// p has been consumed.
func (p Position) Next() Position { return Position{Epoch: p.Epoch, Batch: p.Batch + 1} }

// Job is one batch to build: its position and the example indices.
type Job struct {
	Pos     Position
	Indices []int
}

// LensFunc gives the example lengths of an epoch. Lengths may change with the
// epoch (ITM replaces images, and with them region counts).
type LensFunc func(epoch int) ([]int, error)

// BatchStream walks a sampler's batches epoch after epoch.
type BatchStream struct {
	sampler TokenBucketSampler
	lens    LensFunc
	epochs  int
	pos     Position
	cache   [][]int
	cached  int
}

// NewBatchStream returns a stream of the sampler's batches over lens,
// starting at epoch 0 batch 0. epochs bounds the stream (Next returns io.EOF
// after them); 0 means endless.
func NewBatchStream(s TokenBucketSampler, lens LensFunc, epochs int) *BatchStream {
	return &BatchStream{sampler: s, lens: lens, epochs: epochs, cached: -1}
}

// Position is the position of the batch the next call to Next returns.
func (b *BatchStream) Position() Position { return b.pos }

// Seek makes p the next batch. A batch index past the end of its epoch
// means the start of the next epoch, so resuming after the consumed batch
// at q is Seek(q.Next()).
func (b *BatchStream) Seek(p Position) { b.pos = p }

// Next returns the next batch and advances.
func (b *BatchStream) Next() (Job, error) {
	for {
		if b.pos.Epoch < 0 || b.pos.Batch < 0 {
			return Job{}, fmt.Errorf("batch stream: invalid position %+v", b.pos)
		}
		if b.epochs > 0 && b.pos.Epoch >= b.epochs {
			return Job{}, io.EOF
		}
		if b.cached != b.pos.Epoch {
			lens, err := b.lens(b.pos.Epoch)
			if err != nil {
				return Job{}, fmt.Errorf("epoch %d: lengths: %w", b.pos.Epoch, err)
			}
			batches, err := b.sampler.Batches(lens, b.pos.Epoch)
			if err != nil {
				return Job{}, fmt.Errorf("epoch %d: %w", b.pos.Epoch, err)
			}
			if len(batches) == 0 {
				return Job{}, errEmptyEpoch
			}
			b.cache, b.cached = batches, b.pos.Epoch
		}
		if b.pos.Batch < len(b.cache) {
			j := Job{Pos: b.pos, Indices: b.cache[b.pos.Batch]}
			b.pos.Batch++
			return j, nil
		}
		b.pos = Position{Epoch: b.pos.Epoch + 1}
	}
}

var errEmptyEpoch = errors.New("batch stream: an epoch has no batches (too few examples for the token budget with droplast)")

// SliceSource yields a fixed list of batches once, in order, as epoch 0
// (evaluation).
type SliceSource struct {
	batches [][]int
	next    int
}

// NewSliceSource returns a source over batches.
func NewSliceSource(batches [][]int) *SliceSource { return &SliceSource{batches: batches} }

// Next returns the next batch or io.EOF.
func (s *SliceSource) Next() (Job, error) {
	if s.next >= len(s.batches) {
		return Job{}, io.EOF
	}
	j := Job{Pos: Position{Batch: s.next}, Indices: s.batches[s.next]}
	s.next++
	return j, nil
}

// Shard returns the elements of a rank in data-parallel training:
// ids[rank::world], as each official rank keeps.
func Shard[T any](ids []T, rank, world int) ([]T, error) {
	if world <= 0 || rank < 0 || rank >= world {
		return nil, fmt.Errorf("shard: rank %d of world %d", rank, world)
	}
	out := make([]T, 0, (len(ids)-rank+world-1)/world)
	for i := rank; i < len(ids); i += world {
		out = append(out, ids[i])
	}
	return out, nil
}

// SequentialBatches cuts indices 0..len(lens)-1, in order, into batches of at
// most maxTokens padded tokens and at most maxExamples examples (0: no
// limit); it is the evaluation batcher, where order matters and shuffling
// does not.
func SequentialBatches(lens []int, maxTokens, maxExamples int) ([][]int, error) {
	if maxTokens <= 0 {
		return nil, fmt.Errorf("sequential batches: max tokens %d must be positive", maxTokens)
	}
	var batches [][]int
	var batch []int
	maxLen := 0
	for i, l := range lens {
		if l > maxTokens {
			return nil, fmt.Errorf("sequential batches: example %d of length %d exceeds the budget of %d tokens", i, l, maxTokens)
		}
		m := max(maxLen, l)
		if len(batch) > 0 && (m*(len(batch)+1) > maxTokens || (maxExamples > 0 && len(batch) == maxExamples)) {
			batches = append(batches, batch)
			batch, m = nil, l
		}
		batch = append(batch, i)
		maxLen = m
	}
	if len(batch) > 0 {
		batches = append(batches, batch)
	}
	return batches, nil
}
