package compute

import (
	"fmt"
	"math"
	"sync/atomic"
)

// attnGeom is the layout shared by the attention forward and backward.
type attnGeom struct {
	b, s, heads, dh, d int
	lens               []int32
	keyOff             int
}

// attnGeometry checks the layout (AttentionShape) and the host lengths.
func attnGeometry(op string, q, k, v, out, lens *Tensor, heads int) attnGeom {
	sh := AttentionShape(op, q, k, v, out, lens, heads)
	g := attnGeom{b: sh.B, s: sh.S, heads: sh.Heads, dh: sh.Dh, d: sh.D, lens: I32s(lens), keyOff: sh.KeyOff}
	for i, l := range g.lens {
		if l < 0 || int(l) > g.s {
			panic(fmt.Sprintf("compute: %s: lens[%d] = %d outside [0, %d]", op, i, l, g.s))
		}
	}
	return g
}

// seqLens returns sequence b's query and key lengths. A sequence without
// keys has no softmax and one without queries sends no gradient to its
// keys, so either length being 0 makes both 0.
func (g attnGeom) seqLens(b int) (nq, nk int) {
	nq, nk = int(g.lens[b]), int(g.lens[b+g.keyOff])
	if nq == 0 || nk == 0 {
		return 0, 0
	}
	return nq, nk
}

// forPairs runs fn(worker scratch, b, h) for every (sequence, head) pair.
// Pairs are handed out dynamically because their cost grows with the
// product of the query and key lengths: each of up to c.threads lanes takes
// the next pair until none is left.
func (c *CPU) forPairs(g attnGeom, bufs int, fn func(scr []float32, b, h int)) {
	pairs := g.b * g.heads
	var next atomic.Int64
	c.parallelFor(min(c.threads, pairs), 1, func(int, int) {
		scr := c.attnScratch(bufs * g.s * g.s)
		defer c.scratch.Put(scr)
		for {
			i := int(next.Add(1) - 1)
			if i >= pairs {
				return
			}
			fn(*scr, i/g.heads, i%g.heads)
		}
	})
}

// attnScratch returns a pooled buffer of at least n elements.
func (c *CPU) attnScratch(n int) *[]float32 {
	if p, ok := c.scratch.Get().(*[]float32); ok && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	s := make([]float32, n)
	return &s
}

// zeroHeadRows clears rows [from, s) of sequence b in head h's columns.
func zeroHeadRows(x []float32, g attnGeom, b, h, from int) {
	for i := from; i < g.s; i++ {
		off := (b*g.s+i)*g.d + h*g.dh
		clear(x[off : off+g.dh])
	}
}

// AttentionFwd is masked multi-head attention; see Backend. Rows of lse at or
// past the query length are set to 0.
func (c *CPU) AttentionFwd(out, lse, q, k, v, lens *Tensor, heads int, scale, p float32, seed uint64) {
	g := attnGeometry("AttentionFwd", q, k, v, out, lens, heads)
	MustLen("AttentionFwd", "lse", lse, g.b*heads*g.s)
	outs, ls, qs, ks, vs := F32s(out), F32s(lse), F32s(q), F32s(k), F32s(v)
	dscale := dropoutScale(p)
	c.forPairs(g, 1, func(scr []float32, b, h int) {
		nq, nk := g.seqLens(b)
		lrow := ls[(b*heads+h)*g.s : (b*heads+h+1)*g.s]
		clear(lrow[nq:])
		zeroHeadRows(outs, g, b, h, nq)
		if nq == 0 {
			return
		}
		base := b*g.s*g.d + h*g.dh
		sc := scr[:nq*nk]
		sgemm(false, true, nq, nk, g.dh, scale, qs[base:], g.d, ks[base:], g.d, 0, sc, nk)
		for i := range nq {
			row := sc[i*nk : (i+1)*nk]
			m := float64(rowMax(row))
			sum := expInto(row, row, m)
			lrow[i] = float32(m + math.Log(sum))
			inv := 1 / sum
			if p <= 0 {
				for j, e := range row {
					row[j] = float32(float64(e) * inv)
				}
				continue
			}
			idx := ((b*heads+h)*g.s + i) * g.s
			for j, e := range row {
				row[j] = float32(float64(e)*inv) * keepScale(seed, idx+j, p, dscale)
			}
		}
		sgemm(false, false, nq, g.dh, nk, 1, sc, nk, vs[base:], g.d, 0, outs[base:], g.d)
	})
}

// AttentionBwd overwrites dq, dk, dv. Probabilities P are recomputed from
// lse; with P' the dropped-out probabilities and dP' = dout.v^T, the
// softmax gradient is dS = P'*dP' - P*D with D = rowsum(P'*dP'), which
// needs no second evaluation of the dropout mask (P' is zero exactly where
// the mask drops, and P*mask*scale*dP' = P'*dP').
func (c *CPU) AttentionBwd(dq, dk, dv, dout, out, lse, q, k, v, lens *Tensor, heads int, scale, p float32, seed uint64) {
	g := attnGeometry("AttentionBwd", q, k, v, out, lens, heads)
	MustMatrix("AttentionBwd", "dq", dq, q.Rows(), g.d)
	MustMatrix("AttentionBwd", "dk", dk, q.Rows(), g.d)
	MustMatrix("AttentionBwd", "dv", dv, q.Rows(), g.d)
	MustMatrix("AttentionBwd", "dout", dout, q.Rows(), g.d)
	MustLen("AttentionBwd", "lse", lse, g.b*heads*g.s)
	dqs, dks, dvs, dos := F32s(dq), F32s(dk), F32s(dv), F32s(dout)
	ls, qs, ks, vs := F32s(lse), F32s(q), F32s(k), F32s(v)
	dscale := dropoutScale(p)
	bufs := 2
	if p > 0 {
		bufs = 3
	}
	c.forPairs(g, bufs, func(scr []float32, b, h int) {
		nq, nk := g.seqLens(b)
		zeroHeadRows(dqs, g, b, h, nq)
		zeroHeadRows(dks, g, b, h, nk)
		zeroHeadRows(dvs, g, b, h, nk)
		if nq == 0 {
			return
		}
		base := b*g.s*g.d + h*g.dh
		lrow := ls[(b*heads+h)*g.s:]
		nn := nq * nk
		pm, dp := scr[:nn], scr[nn:2*nn]
		sgemm(false, true, nq, nk, g.dh, scale, qs[base:], g.d, ks[base:], g.d, 0, pm, nk)
		for i := range nq {
			row := pm[i*nk : (i+1)*nk]
			expInto(row, row, float64(lrow[i]))
		}
		pd := pm
		if p > 0 {
			pd = scr[2*nn : 3*nn]
			for i := range nq {
				idx := ((b*heads+h)*g.s + i) * g.s
				for j := range nk {
					pd[i*nk+j] = pm[i*nk+j] * keepScale(seed, idx+j, p, dscale)
				}
			}
		}
		sgemm(true, false, nk, g.dh, nq, 1, pd, nk, dos[base:], g.d, 0, dvs[base:], g.d)
		sgemm(false, true, nq, nk, g.dh, 1, dos[base:], g.d, vs[base:], g.d, 0, dp, nk)
		for i := range nq {
			prow, pdrow, dprow := pm[i*nk:(i+1)*nk], pd[i*nk:(i+1)*nk], dp[i*nk:(i+1)*nk]
			var dsum float64
			for j, x := range dprow {
				dsum += float64(pdrow[j]) * float64(x)
			}
			for j, x := range dprow {
				dprow[j] = float32(float64(pdrow[j])*float64(x) - float64(prow[j])*dsum)
			}
		}
		sgemm(false, false, nq, g.dh, nk, scale, dp, nk, ks[base:], g.d, 0, dqs[base:], g.d)
		sgemm(true, false, nk, g.dh, nq, scale, dp, nk, qs[base:], g.d, 0, dks[base:], g.d)
	})
}
