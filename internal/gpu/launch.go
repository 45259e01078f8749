//go:build cuda

package gpu

import (
	"fmt"
	"math"
	"unsafe"

	"gorgonia.org/cu"

	"uniter/internal/compute"
)

// kernelNames are the fatbin's entry points; Open looks every one up so
// that a fatbin missing a kernel fails at start-up, not mid-step.
var kernelNames = []string{
	"add_f32", "axpy_f32", "scale_f32",
	"gelu_fwd_f32", "gelu_bwd_f32", "tanh_fwd_f32", "tanh_bwd_f32", "relu_fwd_f32", "relu_bwd_f32",
	"dropout_f32", "add_bias_f32", "sum_rows_f32", "gather_f32", "scatter_add_f32",
	"cast_f32_f16", "cast_f16_f32", "round_fp16_f32",
	"reduce_partial_f32", "reduce_final_f64", "nonfinite_f32", "argmax_rows_f32",
	"adamw_f32",
	"layernorm_fwd_f32", "layernorm_bwd_params_f32", "layernorm_bwd_dx_f32",
	"softmax_xent_f32", "softmax_kl_f32", "bce_logits_f32", "softmax_rows_f32", "softmax_rows_bwd_f32",
	"sgemm_f32", "hgemm_nn", "hgemm_nt", "hgemm_tn", "hgemm_tt",
	"attn_fwd_f32", "attn_bwd_dot_f32", "attn_bwd_dq_f32", "attn_bwd_dkdv_f32",
}

// dim3 is a grid or block shape.
type dim3 struct{ x, y, z int }

// arg is one kernel argument as the 8 bytes gorgonia.org/cu copies for
// every parameter (Function.Launch reads *(*uint64)(param)). Kernels
// therefore take only pointers and 64-bit scalars; the helpers below are the
// only ways to make an arg, so a 4-byte float or int cannot be passed by
// mistake.
type arg uint64

func ptr(p cu.DevicePtr) arg { return arg(p) }
func i64(v int) arg          { return arg(uint64(int64(v))) }
func u64(v uint64) arg       { return arg(v) }
func f64(v float64) arg      { return arg(math.Float64bits(v)) }

// launch queues kernel name on the device stream and checks the launch (and,
// with syncEach, its execution); on the device goroutine only.
func (d *Device) launch(name string, grid, block dim3, smem int, args ...arg) error {
	fn, ok := d.fns[name]
	if !ok {
		return fmt.Errorf("cuda: kernel %s not loaded", name)
	}
	if grid.x == 0 || grid.y == 0 || grid.z == 0 {
		return nil
	}
	params := make([]unsafe.Pointer, len(args))
	for i := range args {
		params[i] = unsafe.Pointer(&args[i])
	}
	if err := fn.Launch(grid.x, grid.y, grid.z, block.x, block.y, block.z, smem, d.stream, params); err != nil {
		return fmt.Errorf("cuda: launching %s grid %v block %v: %w", name, grid, block, err)
	}
	if d.syncEach {
		if err := d.stream.Synchronize(); err != nil {
			return fmt.Errorf("cuda: kernel %s grid %v block %v failed: %w", name, grid, block, err)
		}
	}
	return nil
}

// gridFor sizes a grid-stride launch of n items: enough blocks of 256 to
// cover n, capped at 32 per SM (more only adds scheduling overhead).
func (d *Device) gridFor(n int) dim3 {
	b := (n + 255) / 256
	return dim3{min(max(b, 1), 32*max(d.SMs, 1)), 1, 1}
}

var blk256 = dim3{256, 1, 1}

// Typed launchers, one per kernel: argument order and types follow the
// kernel signatures in kernels/*.cu. Sizes are element counts.

func (d *Device) addF32(dst, a, b cu.DevicePtr, n int) error {
	return d.launch("add_f32", d.gridFor(n), blk256, 0, ptr(dst), ptr(a), ptr(b), i64(n))
}

func (d *Device) axpyF32(y, x cu.DevicePtr, alpha float32, n int) error {
	return d.launch("axpy_f32", d.gridFor(n), blk256, 0, ptr(y), ptr(x), f64(float64(alpha)), i64(n))
}

func (d *Device) scaleF32(x cu.DevicePtr, alpha float32, n int) error {
	return d.launch("scale_f32", d.gridFor(n), blk256, 0, ptr(x), f64(float64(alpha)), i64(n))
}

// unaryF32 launches one of the (out, in, n) activation kernels.
func (d *Device) unaryF32(name string, out, x cu.DevicePtr, n int) error {
	return d.launch(name, d.gridFor(n), blk256, 0, ptr(out), ptr(x), i64(n))
}

// binaryF32 launches one of the (dx, y-or-x, dout, n) backward kernels.
func (d *Device) binaryF32(name string, dx, y, dout cu.DevicePtr, n int) error {
	return d.launch(name, d.gridFor(n), blk256, 0, ptr(dx), ptr(y), ptr(dout), i64(n))
}

func (d *Device) dropoutF32(out, x cu.DevicePtr, p, scale float32, seed uint64, n int) error {
	return d.launch("dropout_f32", d.gridFor(n), blk256, 0, ptr(out), ptr(x), f64(float64(p)), f64(float64(scale)), u64(seed), i64(n))
}

func (d *Device) addBiasF32(x, bias cu.DevicePtr, rows, cols int) error {
	return d.launch("add_bias_f32", d.gridFor(rows*cols), blk256, 0, ptr(x), ptr(bias), i64(rows), i64(cols))
}

func (d *Device) sumRowsF32(dst, x cu.DevicePtr, beta float32, rows, cols int) error {
	return d.launch("sum_rows_f32", dim3{(cols + 31) / 32, 1, 1}, dim3{32, 8, 1}, 0, ptr(dst), ptr(x), f64(float64(beta)), i64(rows), i64(cols))
}

func (d *Device) gatherF32(out, src, idx cu.DevicePtr, rows, cols int) error {
	return d.launch("gather_f32", d.gridFor(rows*cols), blk256, 0, ptr(out), ptr(src), ptr(idx), i64(rows), i64(cols))
}

func (d *Device) scatterAddF32(dst, src, idx cu.DevicePtr, rows, cols int) error {
	return d.launch("scatter_add_f32", d.gridFor(rows*cols), blk256, 0, ptr(dst), ptr(src), ptr(idx), i64(rows), i64(cols))
}

func (d *Device) castF32F16(out, x cu.DevicePtr, n int) error {
	return d.launch("cast_f32_f16", d.gridFor(n), blk256, 0, ptr(out), ptr(x), i64(n))
}

func (d *Device) castF16F32(out, x cu.DevicePtr, n int) error {
	return d.launch("cast_f16_f32", d.gridFor(n), blk256, 0, ptr(out), ptr(x), i64(n))
}

func (d *Device) roundFP16F32(x cu.DevicePtr, n int) error {
	return d.launch("round_fp16_f32", d.gridFor(n), blk256, 0, ptr(x), i64(n))
}

// reduceParts is the fixed number of first-stage blocks of Sum/SumSq, so
// that results do not depend on the GPU.
const reduceParts = 1024

func (d *Device) reducePartialF32(part, x cu.DevicePtr, sq bool, n int) error {
	s := 0
	if sq {
		s = 1
	}
	return d.launch("reduce_partial_f32", dim3{reduceParts, 1, 1}, blk256, 0, ptr(part), ptr(x), i64(s), i64(n))
}

func (d *Device) reduceFinalF64(out, part cu.DevicePtr, nparts int) error {
	return d.launch("reduce_final_f64", dim3{1, 1, 1}, dim3{1024, 1, 1}, 0, ptr(out), ptr(part), i64(nparts))
}

func (d *Device) nonfiniteF32(flag, x cu.DevicePtr, n int) error {
	return d.launch("nonfinite_f32", d.gridFor(n), blk256, 0, ptr(flag), ptr(x), i64(n))
}

func (d *Device) adamwF32(p, g, m, v cu.DevicePtr, scale, b1, b2, eps, stepSize, decay float64, n int) error {
	return d.launch("adamw_f32", d.gridFor(n), blk256, 0, ptr(p), ptr(g), ptr(m), ptr(v),
		f64(scale), f64(b1), f64(b2), f64(eps), f64(stepSize), f64(decay), i64(n))
}

// rowBlock is the block size of one-block-per-row kernels: enough threads
// for a 768-wide row, not so many that short rows idle most of them.
func rowBlock(cols int) dim3 {
	t := 128
	if cols > 2048 {
		t = 512
	}
	return dim3{t, 1, 1}
}

func (d *Device) layernormFwdF32(out, mean, rstd, x, gamma, beta cu.DevicePtr, eps float32, rows, n int) error {
	return d.launch("layernorm_fwd_f32", dim3{rows, 1, 1}, rowBlock(n), 0, ptr(out), ptr(mean), ptr(rstd), ptr(x),
		ptr(gamma), ptr(beta), f64(float64(eps)), i64(rows), i64(n))
}

func (d *Device) layernormBwdParamsF32(dgamma, dbeta, dout, x, mean, rstd cu.DevicePtr, rows, n int) error {
	return d.launch("layernorm_bwd_params_f32", dim3{(n + 31) / 32, 1, 1}, dim3{32, 8, 1}, 0, ptr(dgamma), ptr(dbeta),
		ptr(dout), ptr(x), ptr(mean), ptr(rstd), i64(rows), i64(n))
}

func (d *Device) layernormBwdDxF32(dx, dout, x, mean, rstd, gamma cu.DevicePtr, rows, n int) error {
	return d.launch("layernorm_bwd_dx_f32", dim3{rows, 1, 1}, rowBlock(n), 0, ptr(dx), ptr(dout), ptr(x), ptr(mean),
		ptr(rstd), ptr(gamma), i64(rows), i64(n))
}

func (d *Device) softmaxXentF32(loss, dlogits, logits, labels cu.DevicePtr, ignore int32, gradScale float32, rows, cols int) error {
	return d.launch("softmax_xent_f32", dim3{rows, 1, 1}, rowBlock(cols), 0, ptr(loss), ptr(dlogits), ptr(logits),
		ptr(labels), i64(int(ignore)), f64(float64(gradScale)), i64(rows), i64(cols))
}

func (d *Device) softmaxKLF32(loss, dlogits, logits, target cu.DevicePtr, gradScale float32, rows, cols int) error {
	return d.launch("softmax_kl_f32", dim3{rows, 1, 1}, rowBlock(cols), 0, ptr(loss), ptr(dlogits), ptr(logits),
		ptr(target), f64(float64(gradScale)), i64(rows), i64(cols))
}

func (d *Device) bceLogitsF32(loss, dlogits, logits, targets cu.DevicePtr, gradScale float32, rows, cols int) error {
	return d.launch("bce_logits_f32", dim3{rows, 1, 1}, rowBlock(cols), 0, ptr(loss), ptr(dlogits), ptr(logits),
		ptr(targets), f64(float64(gradScale)), i64(rows), i64(cols))
}

func (d *Device) argmaxRowsF32(idx, x cu.DevicePtr, rows, cols int) error {
	return d.launch("argmax_rows_f32", dim3{rows, 1, 1}, rowBlock(cols), 0, ptr(idx), ptr(x), i64(rows), i64(cols))
}

func (d *Device) softmaxRowsF32(out, x, lens cu.DevicePtr, rows, cols int) error {
	return d.launch("softmax_rows_f32", dim3{rows, 1, 1}, rowBlock(cols), 0, ptr(out), ptr(x), ptr(lens), i64(rows), i64(cols))
}

func (d *Device) softmaxRowsBwdF32(dx, y, dy cu.DevicePtr, rows, cols int) error {
	return d.launch("softmax_rows_bwd_f32", dim3{rows, 1, 1}, rowBlock(cols), 0, ptr(dx), ptr(y), ptr(dy), i64(rows), i64(cols))
}

func (d *Device) sgemmF32(c, a, b cu.DevicePtr, m, n, k, lda, ldb, ldc int, ta, tb bool, alpha, beta float32) error {
	return d.launch("sgemm_f32", dim3{(n + 63) / 64, (m + 63) / 64, 1}, blk256, 0, ptr(c), ptr(a), ptr(b),
		i64(m), i64(n), i64(k), i64(lda), i64(ldb), i64(ldc), i64(b2i(ta)), i64(b2i(tb)),
		f64(float64(alpha)), f64(float64(beta)))
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// attnWarps is the query (or key) rows per attention block (ATT_WARPS).
const attnWarps = 8

// attnMaxDh is ATT_DHMAX in attention.cu.
const attnMaxDh = 128

// The attention launchers take the layout as compute.AttentionShape
// returns it; g.KeyOff tells the kernels where the key lengths are.

func (d *Device) attnFwdF32(out, lse, q, k, v, lens cu.DevicePtr, g compute.AttnShape, scale, p, dscale float32, seed uint64) error {
	return d.launch("attn_fwd_f32", attnGrid(g), blk256, 0,
		ptr(out), ptr(lse), ptr(q), ptr(k), ptr(v), ptr(lens), i64(g.KeyOff), i64(g.S), i64(g.Heads), i64(g.Dh),
		f64(float64(scale)), f64(float64(p)), f64(float64(dscale)), u64(seed))
}

func (d *Device) attnBwdDotF32(delta, dout, out cu.DevicePtr, g compute.AttnShape) error {
	warps := g.B * g.S * g.Heads
	return d.launch("attn_bwd_dot_f32", dim3{(warps + 7) / 8, 1, 1}, blk256, 0,
		ptr(delta), ptr(dout), ptr(out), i64(g.B), i64(g.S), i64(g.Heads), i64(g.Dh))
}

func (d *Device) attnBwdDqF32(dq, dout, lse, delta, q, k, v, lens cu.DevicePtr, g compute.AttnShape, scale, p, dscale float32, seed uint64) error {
	return d.launch("attn_bwd_dq_f32", attnGrid(g), blk256, 0,
		ptr(dq), ptr(dout), ptr(lse), ptr(delta), ptr(q), ptr(k), ptr(v), ptr(lens), i64(g.KeyOff), i64(g.S), i64(g.Heads), i64(g.Dh),
		f64(float64(scale)), f64(float64(p)), f64(float64(dscale)), u64(seed))
}

func (d *Device) attnBwdDkDvF32(dk, dv, dout, lse, delta, q, k, v, lens cu.DevicePtr, g compute.AttnShape, scale, p, dscale float32, seed uint64) error {
	return d.launch("attn_bwd_dkdv_f32", attnGrid(g), blk256, 0,
		ptr(dk), ptr(dv), ptr(dout), ptr(lse), ptr(delta), ptr(q), ptr(k), ptr(v), ptr(lens), i64(g.KeyOff), i64(g.S), i64(g.Heads), i64(g.Dh),
		f64(float64(scale)), f64(float64(p)), f64(float64(dscale)), u64(seed))
}

// attnGrid is one block of attnWarps rows per (row chunk, head, sequence).
func attnGrid(g compute.AttnShape) dim3 {
	return dim3{(g.S + attnWarps - 1) / attnWarps, g.Heads, g.B}
}
