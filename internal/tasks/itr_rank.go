package tasks

import (
	"context"
	"fmt"
	"slices"

	"uniter/internal/compute"
	"uniter/internal/data"
)

// RankOptions configure RankAll.
type RankOptions struct {
	// Budget is the joint positions per encoder batch (default 8192).
	Budget int
	// Exact batches only pairs of one joint length together (no padding
	// at all, but small batches when a length has few pairs); otherwise
	// the block's pairs sorted by length fill each batch, padded to its
	// longest (a few positions).
	Exact bool
	// BlockTexts is the texts per block (0: RankBlockTexts): a block's
	// scores are handed to Sink together, and a resumed ranking skips
	// whole blocks.
	BlockTexts int
	// Cols is the image order of a score row (indices into ds.ImgNames);
	// nil is ds's order.
	Cols []int
	// Done reports a block already scored (a resumed ranking); nil: none.
	Done func(block int) bool
	// Sink receives block's scores, texts [t0, t1) x Cols, row-major.
	Sink func(block, t0, t1 int, scores []float32) error
	// Progress, when set, is called with the pairs scored so far in this
	// call (skipped blocks excluded).
	Progress func(pairs int)
}

// RankBlockTexts is the default texts per block against ni images: about
// 64K pairs, so that the pairs of one joint length fill whole batches
// (a COCO 5K block is 14 texts).
func RankBlockTexts(ni int) int { return max(1, (1<<16+ni-1)/max(ni, 1)) }

// RankBlocks is the number of blocks RankAll cuts nt texts into.
func RankBlocks(nt, blockTexts int) int { return (nt + blockTexts - 1) / blockTexts }

// RankAll scores every text of ds against every image in evaluation
// mode, the fast way: the text and the image embeddings are computed once
// each, and the encoder runs on batches of a block's pairs sorted by joint
// length (text + regions), padded only to the longest pair of the batch
// (with Exact, pairs of one length only: no padding at all). Within a block the
// pairs are batched in a fixed order, so a block's scores do not depend
// on which blocks ran before (a resumed ranking gives the same bytes).
func (r *ITR) RankAll(ctx context.Context, ds *data.ITRSet, o RankOptions) error {
	if o.Budget <= 0 {
		o.Budget = 8192
	}
	cols := o.Cols
	if cols == nil {
		cols = make([]int, len(ds.ImgNames()))
		for j := range cols {
			cols[j] = j
		}
	}
	m := r.m
	train := m.Training()
	m.SetTrain(false)
	defer m.SetTrain(train)
	be, h := m.Backend(), m.Cfg.HiddenSize
	nt, ni := ds.Len(), len(cols)
	if o.BlockTexts <= 0 {
		o.BlockTexts = RankBlockTexts(ni)
	}
	nblocks := RankBlocks(nt, o.BlockTexts)
	todo := 0
	for k := range nblocks {
		if o.Done == nil || !o.Done(k) {
			todo++
		}
	}
	if todo == 0 {
		return nil
	}

	// One table of embedding rows: every text's, then every image's.
	tOff, tLen := make([]int, nt), make([]int, nt)
	iOff, iLen := make([]int, ni), make([]int, ni)
	rows := 0
	for i := range nt {
		tOff[i], tLen[i] = rows, ds.TxtLen(i)
		rows += tLen[i]
	}
	for c, j := range cols {
		iOff[c], iLen[c] = rows, ds.NBB(j)
		rows += iLen[c]
	}
	table := be.Alloc(compute.F32, rows, h)
	const chunk = 256
	for st := 0; st < nt; st += chunk {
		var texts [][]int32
		for i := st; i < min(st+chunk, nt); i++ {
			t, err := ds.Text(i)
			if err != nil {
				return err
			}
			if len(t) != tLen[i] {
				return fmt.Errorf("itr: text %q has %d tokens, id2len.json says %d", ds.IDs()[i], len(t), tLen[i])
			}
			texts = append(texts, t)
		}
		e, err := m.EmbedTexts(texts)
		if err != nil {
			return fmt.Errorf("itr: %w", err)
		}
		be.Copy(table.RowRange(tOff[st], tOff[st]+e.Rows()), e)
	}
	for st := 0; st < ni; st += chunk {
		var feats, boxes [][]float32
		var nbb []int
		for c := st; c < min(st+chunk, ni); c++ {
			im, err := ds.Image(cols[c])
			if err != nil {
				return err
			}
			feats = append(feats, im.Features[:im.NBB*im.Dim])
			boxes = append(boxes, im.Box7())
			nbb = append(nbb, im.NBB)
		}
		e, err := m.EmbedImages(feats, boxes, nbb)
		if err != nil {
			return fmt.Errorf("itr: %w", err)
		}
		be.Copy(table.RowRange(iOff[st], iOff[st]+e.Rows()), e)
	}

	done := 0
	type pair struct{ t, c int }
	for k := range nblocks {
		if o.Done != nil && o.Done(k) {
			continue
		}
		t0, t1 := k*o.BlockTexts, min((k+1)*o.BlockTexts, nt)
		// Pairs grouped by joint length, in a fixed order.
		groups := map[int][]pair{}
		for i := t0; i < t1; i++ {
			for c := range ni {
				l := tLen[i] + iLen[c]
				groups[l] = append(groups[l], pair{i, c})
			}
		}
		lens := make([]int, 0, len(groups))
		for l := range groups {
			lens = append(lens, l)
		}
		slices.Sort(lens)
		// Batches: runs of the length-sorted pairs within the budget.
		var batches [][]pair
		var cur []pair
		for _, l := range lens {
			if o.Exact && len(cur) > 0 {
				batches, cur = append(batches, cur), nil
			}
			for _, p := range groups[l] {
				if len(cur) > 0 && (len(cur)+1)*l > o.Budget {
					batches, cur = append(batches, cur), nil
				}
				cur = append(cur, p)
			}
		}
		if len(cur) > 0 {
			batches = append(batches, cur)
		}
		scores := make([]float32, (t1-t0)*ni)
		for _, batch := range batches {
			if err := ctx.Err(); err != nil {
				return err
			}
			last := batch[len(batch)-1]
			l := tLen[last.t] + iLen[last.c]
			idx := make([]int32, 0, len(batch)*l)
			rowLens := make([]int, len(batch))
			for r, p := range batch {
				for q := range tLen[p.t] {
					idx = append(idx, int32(tOff[p.t]+q))
				}
				for q := range iLen[p.c] {
					idx = append(idx, int32(iOff[p.c]+q))
				}
				rowLens[r] = tLen[p.t] + iLen[p.c]
				// Padding positions read row 0: masked as keys, unused as outputs.
				for range l - rowLens[r] {
					idx = append(idx, 0)
				}
			}
			if _, err := m.EncodeGathered(table, idx, rowLens, len(batch), l); err != nil {
				return fmt.Errorf("itr: %w", err)
			}
			s := be.ToF32(r.head())
			for n, p := range batch {
				scores[(p.t-t0)*ni+p.c] = s[n]
			}
			done += len(batch)
			if o.Progress != nil {
				o.Progress(done)
			}
		}
		if o.Sink != nil {
			if err := o.Sink(k, t0, t1, scores); err != nil {
				return err
			}
		}
	}
	return nil
}
