package compute

// Backend is the set of operations the model is written against. The CPU
// backend is the reference; a CUDA backend implements the same contract and
// is tested against it.
//
// Conventions:
//   - Matrices are row-major. A tensor of any rank is seen as the matrix
//     [Rows(), Cols()] where Cols() is its last dimension.
//   - Outputs are preallocated by the caller. Operations that produce
//     parameter gradients accumulate (+=) so that gradient accumulation over
//     micro-batches needs no extra work; operations that produce activations
//     or activation gradients overwrite, unless documented otherwise.
//   - Index tensors are I32; every index is checked by the caller, the
//     backend may assume it is in range.
//   - Operations may run asynchronously; To* and Sum* results are
//     synchronous and see all earlier work.
type Backend interface {
	// Name is "cpu" or "cuda".
	Name() string

	// Alloc returns a zero-filled tensor.
	Alloc(dt DType, shape ...int) *Tensor
	// FromF32 / FromI32 copy host data into a new tensor of the given shape.
	FromF32(data []float32, shape ...int) *Tensor
	FromI32(data []int32, shape ...int) *Tensor
	// ToF32 / ToI32 copy the first Len() elements back to the host.
	ToF32(t *Tensor) []float32
	ToI32(t *Tensor) []int32
	// Zero sets the first Len() elements to zero.
	Zero(t *Tensor)
	// Copy copies src into dst (same element count).
	Copy(dst, src *Tensor)

	// Gemm computes c = alpha*op(a)*op(b) + beta*c on 2-D views, where op
	// transposes when the flag is set. a is [M,K] (or [K,M] if transA), b is
	// [K,N] (or [N,K] if transB), c is [M,N]. With beta 1 it accumulates.
	Gemm(transA, transB bool, alpha float32, a, b *Tensor, beta float32, c *Tensor)
	// AddBias adds bias [N] to every row of x [M,N] in place.
	AddBias(x, bias *Tensor)
	// SumRows sets dst[j] = beta*dst[j] + sum_i x[i,j] (bias gradients use
	// beta 1).
	SumRows(dst, x *Tensor, beta float32)

	// Add sets dst = a + b elementwise; dst may alias a or b.
	Add(dst, a, b *Tensor)
	// Axpy sets y += alpha*x.
	Axpy(alpha float32, x, y *Tensor)
	// Scale sets x *= alpha.
	Scale(x *Tensor, alpha float32)

	// GeluFwd sets out = x*0.5*(1+erf(x/sqrt 2)) (the exact erf GELU).
	GeluFwd(out, x *Tensor)
	// GeluBwd sets dx = dout*gelu'(x); dx may alias dout.
	GeluBwd(dx, x, dout *Tensor)
	// TanhFwd sets out = tanh(x).
	TanhFwd(out, x *Tensor)
	// TanhBwd sets dx = dout*(1-y^2) where y = tanh(x); dx may alias dout.
	TanhBwd(dx, y, dout *Tensor)
	// ReluFwd sets out = max(x, 0).
	ReluFwd(out, x *Tensor)
	// ReluBwd sets dx = dout where y > 0 else 0 (y the forward output); dx
	// may alias dout.
	ReluBwd(dx, y, dout *Tensor)

	// DropoutFwd sets out = x*keep/(1-p) with keep = DropoutKeep(seed, i, p)
	// for element i. p = 0 copies. out may alias x.
	DropoutFwd(out, x *Tensor, p float32, seed uint64)
	// DropoutBwd sets dx = dout*keep/(1-p) with the same mask; dx may alias
	// dout.
	DropoutBwd(dx, dout *Tensor, p float32, seed uint64)

	// LayerNormFwd normalises each row of x [M,N] with fp32 statistics:
	// out = (x-mean)*rstd*gamma + beta, rstd = 1/sqrt(var+eps) (biased
	// variance). mean and rstd [M] are saved for the backward.
	LayerNormFwd(out, mean, rstd, x, gamma, beta *Tensor, eps float32)
	// LayerNormBwd sets dx (overwrite) and accumulates dgamma, dbeta.
	LayerNormBwd(dx, dgamma, dbeta, dout, x, mean, rstd, gamma *Tensor)

	// AttentionFwd is multi-head scaled dot-product attention over a batch
	// of B sequences of S positions. q, k, v, out are [B*S, heads*dh]; head h
	// uses columns [h*dh, (h+1)*dh). lens (I32) gives each sequence's valid
	// prefixes: either [B], one length shared by queries and keys, or [2, B]
	// with the query lengths in row 0 and the key lengths in row 1 (cross
	// attention between sequences padded to the same S, e.g. NLVR2's left
	// to right). Position j is a key only if j < the key length; query rows
	// at or past the query length produce zeros, as does every row of a
	// sequence with no keys. probs = softmax(scale*q.k + 0 on valid keys),
	// dropped out with DropoutKeep(seed, ((b*heads+h)*S+i)*S+j, p) and
	// rescaled by 1/(1-p). lse [B, heads, S] receives the log-sum-exp of each
	// valid row's scaled scores for the backward (0 on the other rows).
	//
	// This equals the reference's additive -10000 mask exactly in fp32,
	// where exp(-10000) underflows to 0.
	AttentionFwd(out, lse, q, k, v, lens *Tensor, heads int, scale, p float32, seed uint64)
	// AttentionBwd overwrites dq, dk, dv given dout and the forward's inputs,
	// output and lse (probabilities are recomputed). Rows of dq past the
	// query length and rows of dk, dv past the key length are zero.
	AttentionBwd(dq, dk, dv, dout, out, lse, q, k, v, lens *Tensor, heads int, scale, p float32, seed uint64)

	// Gather sets out[i,:] = src[idx[i],:] (embedding lookup, row selection).
	Gather(out, src, idx *Tensor)
	// ScatterAdd sets dst[idx[i],:] += src[i,:] (repeated indices add).
	ScatterAdd(dst, src, idx *Tensor)

	// SoftmaxXent computes per-row cross-entropy of logits [N,C] against
	// labels [N] (I32). Rows whose label equals ignore get loss 0 and a zero
	// gradient. loss [N] receives -log softmax(logits)[label]; dlogits [N,C]
	// (may alias logits; nil for a loss-only evaluation) receives
	// (softmax - onehot) * gradScale.
	SoftmaxXent(loss, dlogits, logits, labels *Tensor, ignore int32, gradScale float32)
	// SoftmaxKL computes per-row KL divergence of q = softmax(logits)
	// [N,C] from target [N,C] (MRC-kl's kl_div(log_softmax(logits),
	// target)). loss [N] receives sum_j t_j*(log t_j - log q_j), where terms
	// with t_j = 0 are 0; dlogits [N,C] (may alias logits) receives
	// (q*sum_j t_j - t) * gradScale.
	SoftmaxKL(loss, dlogits, logits, target *Tensor, gradScale float32)

	// BCEWithLogits computes binary cross-entropy with logits [N,C] against
	// targets [N,C] in [0,1] (soft scores allowed). loss [N] receives each
	// row's sum over classes of PyTorch's stable form max(x,0) - x*t +
	// log1p(exp(-|x|)); dlogits [N,C] (may alias logits; nil for a
	// loss-only evaluation) receives (sigmoid(x) - t) * gradScale.
	BCEWithLogits(loss, dlogits, logits, targets *Tensor, gradScale float32)

	// SoftmaxRows sets each row b of out [B,S] to the softmax of x [B,S]
	// over its first lens[b] (I32 [B]) columns and 0 beyond them (a row
	// with lens[b] = 0 is all zero). This equals the reference's additive
	// -10000 mask in fp32. out may alias x.
	SoftmaxRows(out, x, lens *Tensor)
	// SoftmaxRowsBwd sets dx = y*(dy - sum_j dy_j*y_j) per row, given the
	// forward's output y [B,S] and dy; masked columns (y = 0) get 0. dx may
	// alias dy.
	SoftmaxRowsBwd(dx, y, dy *Tensor)

	// Argmax sets idx[i] (I32 [N]) to the column of the largest value in row
	// i of x [N,C], the lowest on ties and the first NaN if there is one, as
	// torch.max over a row does on the CPU.
	Argmax(idx, x *Tensor)
	// SumSq returns sum(x^2) in float64 (global gradient norms).
	SumSq(x *Tensor) float64
	// Sum returns sum(x) in float64.
	Sum(x *Tensor) float64
	// AllFinite reports whether every element is finite (loss scaling).
	AllFinite(x *Tensor) bool
	// AdamW performs one decoupled-weight-decay Adam update of p with
	// gradient g scaled by gradScale (unscaling and averaging), moments m, v:
	// m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
	// p -= lr*sqrt(1-b2^step)/(1-b1^step) * m/(sqrt(v)+eps); then
	// p -= lr*wd*p. This is the reference's optim/adamw.py exactly: eps is
	// added to the uncorrected sqrt(v) and decay is applied after the step.
	AdamW(p, g, m, v *Tensor, gradScale, lr, b1, b2, eps, wd float32, step int)
	// RoundFP16 rounds every element to the nearest float16 value (mixed
	// precision emulation; values beyond the fp16 range become ±Inf).
	RoundFP16(x *Tensor)
}

// DropoutKeep decides whether element i survives dropout with probability p
// under seed. It is a pure function so that backward passes and every backend
// regenerate the same mask without storing it.
func DropoutKeep(seed uint64, i int, p float32) bool {
	if p <= 0 {
		return true
	}
	return DropoutUniform(seed, uint64(i)) >= p
}

// DropoutUniform maps (seed, i) to a float32 in [0,1) with the splitmix64
// finaliser; the low 24 bits of precision are what a float32 can hold.
func DropoutUniform(seed, i uint64) float32 {
	z := seed + (i+1)*0x9E3779B97F4A7C15
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	z ^= z >> 31
	return float32(z>>40) * (1.0 / (1 << 24))
}

// Collective sums tensors over the replicas of a data-parallel run. Every
// replica holds one, on its own backend, and calls it with a tensor of the
// same shape in the same order; the call returns once the sum over every
// replica is in t (the same bits on each). The CPU backend's replicas sum
// in memory; CUDA replicas use NCCL.
type Collective interface {
	// AllReduceSum replaces t by the element-wise sum over all replicas.
	AllReduceSum(t *Tensor) error
	// Close releases the communicator.
	Close() error
}
