// Package compute defines the tensor type and the small set of operations the
// UNITER model needs, and implements them on the CPU. The CPU backend is the
// numerical reference that every other backend (CUDA) is tested against.
package compute

import "fmt"

// DType is the element type of a tensor.
type DType uint8

const (
	// F32 is IEEE float32, the type of weights, activations and gradients.
	F32 DType = iota
	// I32 is int32, the type of token ids, labels and indices.
	I32
)

func (d DType) String() string {
	switch d {
	case F32:
		return "f32"
	case I32:
		return "i32"
	}
	return fmt.Sprintf("dtype(%d)", uint8(d))
}

// Storage is a backend-owned flat buffer. Slice returns a view of n elements
// starting at element off, sharing memory, so a tensor can be re-shaped or
// split into row ranges without copying on any backend.
type Storage interface {
	Slice(off, n int) Storage
	Len() int
}

// Tensor is a dense row-major tensor. Its storage may be larger than its
// shape (activation buffers are sized for the largest batch and viewed at the
// current batch's size); operations touch only the first Len() elements.
type Tensor struct {
	Shape []int
	DType DType
	Data  Storage
}

// Numel is the number of elements a shape holds.
func Numel(shape []int) int {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return n
}

// Len is the number of elements the tensor's shape covers.
func (t *Tensor) Len() int { return Numel(t.Shape) }

// Cols is the size of the last dimension (1 for a scalar).
func (t *Tensor) Cols() int {
	if len(t.Shape) == 0 {
		return 1
	}
	return t.Shape[len(t.Shape)-1]
}

// Rows is Len()/Cols(): the tensor seen as a matrix of its last dimension.
func (t *Tensor) Rows() int {
	c := t.Cols()
	if c == 0 {
		return 0
	}
	return t.Len() / c
}

// View returns a tensor with a new shape over the same storage. The new shape
// may cover fewer elements than the storage holds, never more.
func (t *Tensor) View(shape ...int) *Tensor {
	n := Numel(shape)
	if n > t.Data.Len() {
		panic(fmt.Sprintf("compute: view %v needs %d elements, storage holds %d", shape, n, t.Data.Len()))
	}
	return &Tensor{Shape: append([]int(nil), shape...), DType: t.DType, Data: t.Data.Slice(0, n)}
}

// RowRange returns rows [start, end) of the tensor seen as a matrix
// [Rows, Cols], sharing storage.
func (t *Tensor) RowRange(start, end int) *Tensor {
	c := t.Cols()
	if start < 0 || end < start || end > t.Rows() {
		panic(fmt.Sprintf("compute: row range [%d,%d) of %v", start, end, t.Shape))
	}
	return &Tensor{Shape: []int{end - start, c}, DType: t.DType, Data: t.Data.Slice(start*c, (end-start)*c)}
}

// SameShape reports whether two shapes are equal.
func SameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
