package compute

import "fmt"

// Shape checks shared by every backend. A mismatch is a programming error
// (the Backend interface has no error results), so they panic with the op
// and operand named.

// MustLen panics unless t has n elements.
func MustLen(op, name string, t *Tensor, n int) {
	if t.Len() != n {
		panic(fmt.Sprintf("compute: %s: %s has shape %v (%d elements), want %d", op, name, t.Shape, t.Len(), n))
	}
}

// MustMatrix panics unless t is seen as a [rows, cols] matrix.
func MustMatrix(op, name string, t *Tensor, rows, cols int) {
	if t.Rows() != rows || t.Cols() != cols {
		panic(fmt.Sprintf("compute: %s: %s has shape %v, want [%d, %d]", op, name, t.Shape, rows, cols))
	}
}

// GemmDims returns m, n, k of c = op(a)*op(b) and panics unless the three
// operands conform.
func GemmDims(transA, transB bool, a, b, c *Tensor) (m, n, k int) {
	m, n = c.Rows(), c.Cols()
	am, k := a.Rows(), a.Cols()
	if transA {
		am, k = k, am
	}
	bk, bn := b.Rows(), b.Cols()
	if transB {
		bk, bn = bn, bk
	}
	if am != m || bk != k || bn != n {
		panic(fmt.Sprintf("compute: Gemm(transA=%v, transB=%v): a %v, b %v, c %v do not conform", transA, transB, a.Shape, b.Shape, c.Shape))
	}
	return m, n, k
}

// AttnShape is the layout of an attention call: B sequences of S positions,
// Heads heads of Dh columns, D = Heads*Dh. Sequence b's query length is
// lens[b] and its key length lens[b+KeyOff]: KeyOff is 0 when queries and
// keys share one length, B when lens holds both.
type AttnShape struct{ B, S, Heads, Dh, D, KeyOff int }

// AttentionShape derives the layout of q, k, v, out ([B*S, D]) and lens
// ([B], or [2, B] for separate query and key lengths) and panics unless
// they agree. The shape, not the element count, tells the two forms of lens
// apart: 2B lengths over B*S rows would also fit 2B sequences of S/2. The
// values of lens are the backend's to check, since they may live on a
// device.
func AttentionShape(op string, q, k, v, out, lens *Tensor, heads int) AttnShape {
	b, keyOff := lens.Len(), 0
	if len(lens.Shape) == 2 && lens.Shape[0] == 2 {
		b, keyOff = lens.Shape[1], lens.Shape[1]
	}
	d := q.Cols()
	if heads <= 0 || b == 0 || d%heads != 0 || q.Rows()%b != 0 {
		panic(fmt.Sprintf("compute: %s: q %v with %d heads and lens %v", op, q.Shape, heads, lens.Shape))
	}
	if lens.DType != I32 {
		panic(fmt.Sprintf("compute: %s: lens is %v, want i32", op, lens.DType))
	}
	MustMatrix(op, "k", k, q.Rows(), d)
	MustMatrix(op, "v", v, q.Rows(), d)
	MustMatrix(op, "out", out, q.Rows(), d)
	return AttnShape{B: b, S: q.Rows() / b, Heads: heads, Dh: d / heads, D: d, KeyOff: keyOff}
}

// LayerNormFwdShape returns the rows m and columns n of x and panics unless
// out, mean, rstd, gamma and beta agree with them.
func LayerNormFwdShape(out, mean, rstd, x, gamma, beta *Tensor) (m, n int) {
	m, n = x.Rows(), x.Cols()
	MustMatrix("LayerNormFwd", "out", out, m, n)
	MustLen("LayerNormFwd", "mean", mean, m)
	MustLen("LayerNormFwd", "rstd", rstd, m)
	MustLen("LayerNormFwd", "gamma", gamma, n)
	MustLen("LayerNormFwd", "beta", beta, n)
	return m, n
}

// LayerNormBwdShape returns the rows m and columns n of x and panics unless
// the other operands of LayerNormBwd agree with them.
func LayerNormBwdShape(dx, dgamma, dbeta, dout, x, mean, rstd, gamma *Tensor) (m, n int) {
	m, n = x.Rows(), x.Cols()
	MustMatrix("LayerNormBwd", "dx", dx, m, n)
	MustMatrix("LayerNormBwd", "dout", dout, m, n)
	MustLen("LayerNormBwd", "mean", mean, m)
	MustLen("LayerNormBwd", "rstd", rstd, m)
	MustLen("LayerNormBwd", "gamma", gamma, n)
	MustLen("LayerNormBwd", "dgamma", dgamma, n)
	MustLen("LayerNormBwd", "dbeta", dbeta, n)
	return m, n
}

// RowLossShape returns the rows n and columns c of logits and panics unless
// loss ([N]), target ([N, C]) and dlogits ([N, C], or nil for a loss-only
// call) agree with them.
func RowLossShape(op string, loss, dlogits, logits, target *Tensor) (n, c int) {
	n, c = logits.Rows(), logits.Cols()
	MustLen(op, "loss", loss, n)
	MustMatrix(op, "target", target, n, c)
	if dlogits != nil {
		MustMatrix(op, "dlogits", dlogits, n, c)
	}
	return n, c
}

// ArgmaxShape returns the rows n and columns c of x and panics unless idx
// is an I32 [N] and rows are non-empty (an empty row has no argmax).
func ArgmaxShape(idx, x *Tensor) (n, c int) {
	n, c = x.Rows(), x.Cols()
	MustLen("Argmax", "idx", idx, n)
	if idx.DType != I32 {
		panic(fmt.Sprintf("compute: Argmax: idx is %v, want i32", idx.DType))
	}
	if c == 0 && n > 0 {
		panic(fmt.Sprintf("compute: Argmax: x %v has empty rows", x.Shape))
	}
	return n, c
}

// SoftmaxRowsShape returns the rows b and columns s of x and panics unless
// out has x's shape and lens is an I32 [B].
func SoftmaxRowsShape(out, x, lens *Tensor) (b, s int) {
	b, s = x.Rows(), x.Cols()
	MustMatrix("SoftmaxRows", "out", out, b, s)
	MustLen("SoftmaxRows", "lens", lens, b)
	if lens.DType != I32 {
		panic(fmt.Sprintf("compute: SoftmaxRows: lens is %v, want i32", lens.DType))
	}
	return b, s
}

// SoftmaxRowsBwdShape returns the rows b and columns s of y and panics
// unless dx and dy have its shape.
func SoftmaxRowsBwdShape(dx, y, dy *Tensor) (b, s int) {
	b, s = y.Rows(), y.Cols()
	MustMatrix("SoftmaxRowsBwd", "dx", dx, b, s)
	MustMatrix("SoftmaxRowsBwd", "dy", dy, b, s)
	return b, s
}
