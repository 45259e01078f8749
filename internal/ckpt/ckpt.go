// Package ckpt reads and writes checkpoint files at the file-format level:
// PyTorch .pt/.pth/.bin state dicts (zip and legacy formats) and
// safetensors. It knows nothing about any model; it turns a file into named,
// C-ordered arrays and back.
package ckpt

import (
	"encoding/binary"
	"math"
	"sync"

	"github.com/x448/float16"
)

// Tensor is one named array read from a checkpoint, converted for use.
type Tensor struct {
	Shape []int
	// DType is the source dtype: "float16", "bfloat16", "float32",
	// "float64", "int64", "int32", "int16", "int8", "uint8" or "bool".
	DType string
	Float []float32 // set for floating dtypes (converted to float32; float64 is rounded)
	Int   []int64   // set for integer and bool dtypes (bool as 0/1)
}

// StateDict is an ordered set of named tensors. Every tensor owns its data,
// even when the file stored tied weights as views of one storage.
type StateDict struct {
	Keys    []string // in file order
	Tensors map[string]*Tensor
	Skipped []string // keys whose values were not tensors (reported, not fatal)
}

// dtype describes one element type as stored on disk (little-endian) and
// how to convert it into a Tensor.
type dtype struct {
	name    string
	size    int
	isFloat bool
	// decode converts n elements of raw, the first at element index src
	// and the rest step elements apart, into the tensor's data starting at
	// index dst. Callers guarantee every index is in range.
	decode func(t *Tensor, dst int, raw []byte, src, n, step int)
}

var (
	dtFloat16  = &dtype{"float16", 2, true, decodeFloat16}
	dtBFloat16 = &dtype{"bfloat16", 2, true, decodeBFloat16}
	dtFloat32  = &dtype{"float32", 4, true, decodeFloat32}
	dtFloat64  = &dtype{"float64", 8, true, decodeFloat64}
	dtInt64    = &dtype{"int64", 8, false, decodeInt64}
	dtInt32    = &dtype{"int32", 4, false, decodeInt32}
	dtInt16    = &dtype{"int16", 2, false, decodeInt16}
	dtInt8     = &dtype{"int8", 1, false, decodeInt8}
	dtUint8    = &dtype{"uint8", 1, false, decodeUint8}
	dtBool     = &dtype{"bool", 1, false, decodeBool}
)

// floatDTypes is the set of Tensor.DType values that use Tensor.Float.
var floatDTypes = map[string]bool{"float16": true, "bfloat16": true, "float32": true, "float64": true}

// newTensor allocates the destination for numel elements of dt.
func newTensor(dt *dtype, shape []int, numel int) *Tensor {
	t := &Tensor{Shape: shape, DType: dt.name}
	if dt.isFloat {
		t.Float = make([]float32, numel)
	} else {
		t.Int = make([]int64, numel)
	}
	return t
}

// halfTable maps every fp16 bit pattern to its float32 value: a table
// lookup is several times faster than bit manipulation per element, and a
// base checkpoint has a hundred million of them.
var halfTable = sync.OnceValue(func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for i := range t {
		t[i] = float16.Frombits(uint16(i)).Float32()
	}
	return &t
})

func decodeFloat16(t *Tensor, dst int, raw []byte, src, n, step int) {
	tab := halfTable()
	out := t.Float[dst : dst+n]
	for k := range out {
		out[k] = tab[binary.LittleEndian.Uint16(raw[2*(src+k*step):])]
	}
}

func decodeBFloat16(t *Tensor, dst int, raw []byte, src, n, step int) {
	out := t.Float[dst : dst+n]
	for k := range out {
		out[k] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(raw[2*(src+k*step):])) << 16)
	}
}

func decodeFloat32(t *Tensor, dst int, raw []byte, src, n, step int) {
	out := t.Float[dst : dst+n]
	for k := range out {
		out[k] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*(src+k*step):]))
	}
}

func decodeFloat64(t *Tensor, dst int, raw []byte, src, n, step int) {
	out := t.Float[dst : dst+n]
	for k := range out {
		out[k] = float32(math.Float64frombits(binary.LittleEndian.Uint64(raw[8*(src+k*step):])))
	}
}

func decodeInt64(t *Tensor, dst int, raw []byte, src, n, step int) {
	out := t.Int[dst : dst+n]
	for k := range out {
		out[k] = int64(binary.LittleEndian.Uint64(raw[8*(src+k*step):]))
	}
}

func decodeInt32(t *Tensor, dst int, raw []byte, src, n, step int) {
	out := t.Int[dst : dst+n]
	for k := range out {
		out[k] = int64(int32(binary.LittleEndian.Uint32(raw[4*(src+k*step):])))
	}
}

func decodeInt16(t *Tensor, dst int, raw []byte, src, n, step int) {
	out := t.Int[dst : dst+n]
	for k := range out {
		out[k] = int64(int16(binary.LittleEndian.Uint16(raw[2*(src+k*step):])))
	}
}

func decodeInt8(t *Tensor, dst int, raw []byte, src, n, step int) {
	out := t.Int[dst : dst+n]
	for k := range out {
		out[k] = int64(int8(raw[src+k*step]))
	}
}

func decodeUint8(t *Tensor, dst int, raw []byte, src, n, step int) {
	out := t.Int[dst : dst+n]
	for k := range out {
		out[k] = int64(raw[src+k*step])
	}
}

func decodeBool(t *Tensor, dst int, raw []byte, src, n, step int) {
	out := t.Int[dst : dst+n]
	for k := range out {
		if raw[src+k*step] != 0 {
			out[k] = 1
		} else {
			out[k] = 0
		}
	}
}

// clip shortens text that may quote attacker-sized file content, so an
// error about a corrupt checkpoint stays one readable line.
func clip(s string) string {
	const limit = 300
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "..."
}
