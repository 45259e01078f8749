package compute

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
)

// attnGeom is the layout shared by the attention forward and backward.
type attnGeom struct {
	b, s, heads, dh, d int
	lens               []int32
}

// attnGeometry checks the layout (AttentionShape) and the host lengths.
func attnGeometry(op string, q, k, v, out, lens *Tensor, heads int) attnGeom {
	sh := AttentionShape(op, q, k, v, out, lens, heads)
	g := attnGeom{b: sh.B, s: sh.S, heads: sh.Heads, dh: sh.Dh, d: sh.D, lens: I32s(lens)}
	for i, l := range g.lens {
		if l < 0 || int(l) > g.s {
			panic(fmt.Sprintf("compute: %s: lens[%d] = %d outside [0, %d]", op, i, l, g.s))
		}
	}
	return g
}

// forPairs runs fn(worker scratch, b, h) for every (sequence, head) pair.
// Pairs are handed out dynamically because their cost grows with lens[b]
// squared. Each runs its small matrix products single-threaded in OpenBLAS:
// nested BLAS threads would oversubscribe the cores the pairs already share.
func (c *CPU) forPairs(g attnGeom, bufs int, fn func(scr []float32, b, h int)) {
	pairs := g.b * g.heads
	workers := min(c.threads, pairs)
	if c.threads > 1 {
		setBLASThreads(1)
		defer setBLASThreads(c.threads)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			scr := c.attnScratch(bufs * g.s * g.s)
			defer c.scratch.Put(scr)
			for {
				i := int(next.Add(1) - 1)
				if i >= pairs {
					return
				}
				fn(*scr, i/g.heads, i%g.heads)
			}
		}()
	}
	wg.Wait()
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
// past lens[b] are set to 0.
func (c *CPU) AttentionFwd(out, lse, q, k, v, lens *Tensor, heads int, scale, p float32, seed uint64) {
	g := attnGeometry("AttentionFwd", q, k, v, out, lens, heads)
	MustLen("AttentionFwd", "lse", lse, g.b*heads*g.s)
	outs, ls, qs, ks, vs := F32s(out), F32s(lse), F32s(q), F32s(k), F32s(v)
	dscale := dropoutScale(p)
	c.forPairs(g, 1, func(scr []float32, b, h int) {
		n := int(g.lens[b])
		lrow := ls[(b*heads+h)*g.s : (b*heads+h+1)*g.s]
		clear(lrow[n:])
		zeroHeadRows(outs, g, b, h, n)
		if n == 0 {
			return
		}
		base := b*g.s*g.d + h*g.dh
		sc := scr[:n*n]
		sgemm(false, true, n, n, g.dh, scale, qs[base:], g.d, ks[base:], g.d, 0, sc, n)
		for i := range n {
			row := sc[i*n : (i+1)*n]
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
		sgemm(false, false, n, g.dh, n, 1, sc, n, vs[base:], g.d, 0, outs[base:], g.d)
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
		n := int(g.lens[b])
		zeroHeadRows(dqs, g, b, h, n)
		zeroHeadRows(dks, g, b, h, n)
		zeroHeadRows(dvs, g, b, h, n)
		if n == 0 {
			return
		}
		base := b*g.s*g.d + h*g.dh
		lrow := ls[(b*heads+h)*g.s:]
		pm, dp := scr[:n*n], scr[n*n:2*n*n]
		sgemm(false, true, n, n, g.dh, scale, qs[base:], g.d, ks[base:], g.d, 0, pm, n)
		for i := range n {
			row := pm[i*n : (i+1)*n]
			expInto(row, row, float64(lrow[i]))
		}
		pd := pm
		if p > 0 {
			pd = scr[2*n*n : 3*n*n]
			for i := range n {
				idx := ((b*heads+h)*g.s + i) * g.s
				for j := range n {
					pd[i*n+j] = pm[i*n+j] * keepScale(seed, idx+j, p, dscale)
				}
			}
		}
		sgemm(true, false, n, g.dh, n, 1, pd, n, dos[base:], g.d, 0, dvs[base:], g.d)
		sgemm(false, true, n, n, g.dh, 1, dos[base:], g.d, vs[base:], g.d, 0, dp, n)
		for i := range n {
			prow, pdrow, dprow := pm[i*n:(i+1)*n], pd[i*n:(i+1)*n], dp[i*n:(i+1)*n]
			var dsum float64
			for j, x := range dprow {
				dsum += float64(pdrow[j]) * float64(x)
			}
			for j, x := range dprow {
				dprow[j] = float32(float64(pdrow[j])*float64(x) - float64(prow[j])*dsum)
			}
		}
		sgemm(false, false, n, g.dh, n, scale, dp, n, ks[base:], g.d, 0, dqs[base:], g.d)
		sgemm(true, false, n, g.dh, n, scale, dp, n, qs[base:], g.d, 0, dks[base:], g.d)
	})
}
