package tasks

import (
	"math"
	"testing"

	"uniter/internal/ckpt"
)

// Reference data written by scripts/tasks_ref.py from PyTorch.
const refDir = "../../testdata/tasks/"

// refTol is the fp32 relative error budget against PyTorch.
const refTol = 1e-5

type ref struct {
	t  *testing.T
	sd *ckpt.StateDict
}

func loadRef(t *testing.T, name string) *ref {
	t.Helper()
	sd, err := ckpt.ReadTorch(refDir + name)
	if err != nil {
		t.Fatal(err)
	}
	return &ref{t: t, sd: sd}
}

func (r *ref) tensor(key string) *ckpt.Tensor {
	r.t.Helper()
	x := r.sd.Tensors[key]
	if x == nil {
		r.t.Fatalf("reference data has no %q", key)
	}
	return x
}

func (r *ref) f32(key string) []float32 { return r.tensor(key).Float }

func (r *ref) scalar(key string) float64 {
	r.t.Helper()
	x := r.tensor(key)
	if x.Float != nil {
		return float64(x.Float[0])
	}
	return float64(x.Int[0])
}

func (r *ref) i32(key string) []int32 {
	src := r.tensor(key).Int
	out := make([]int32, len(src))
	for i, v := range src {
		out[i] = int32(v)
	}
	return out
}

func (r *ref) ints(key string) []int {
	src := r.tensor(key).Int
	out := make([]int, len(src))
	for i, v := range src {
		out[i] = int(v)
	}
	return out
}

// relErr is max|got-want| / max|want|.
func relErr(got, want []float32) float64 {
	var diff, den float64
	for i := range want {
		diff = math.Max(diff, math.Abs(float64(got[i])-float64(want[i])))
		den = math.Max(den, math.Abs(float64(want[i])))
	}
	if den == 0 {
		return diff
	}
	return diff / den
}

// checkRel reports the relative error of got against want and fails above
// tol (or on NaN, or a length mismatch).
func checkRel(t *testing.T, name string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", name, len(got), len(want))
	}
	if e := relErr(got, want); !(e <= tol) {
		t.Errorf("%s: relative error %.3g > %g", name, e, tol)
	} else {
		t.Logf("%s: relative error %.3g", name, e)
	}
}

// checkScalar compares one value at relative tolerance tol.
func checkScalar(t *testing.T, name string, got, want, tol float64) {
	t.Helper()
	e := math.Abs(got-want) / math.Max(math.Abs(want), 1e-30)
	if !(e <= tol) {
		t.Errorf("%s = %.9g, PyTorch %.9g (relative error %.3g > %g)", name, got, want, e, tol)
	} else {
		t.Logf("%s = %.9g, relative error %.3g", name, got, e)
	}
}
