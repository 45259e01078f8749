package ckpt

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"

	"uniter/internal/atomicfile"

	"github.com/nlpodyssey/safetensors"
)

// maxHeaderLen is the safetensors reference implementation's header limit.
const maxHeaderLen = 100_000_000

// safetensorsDTypes maps the safetensors dtypes this package reads.
var safetensorsDTypes = map[safetensors.DType]*dtype{
	safetensors.F16:  dtFloat16,
	safetensors.BF16: dtBFloat16,
	safetensors.F32:  dtFloat32,
	safetensors.F64:  dtFloat64,
	safetensors.I64:  dtInt64,
	safetensors.I32:  dtInt32,
	safetensors.I16:  dtInt16,
	safetensors.I8:   dtInt8,
	safetensors.U8:   dtUint8,
	safetensors.BOOL: dtBool,
}

var intDTypes = map[string]bool{"int64": true, "int32": true, "int16": true, "int8": true, "uint8": true, "bool": true}

// WriteSafetensors writes sd to path in the safetensors format, tensors in
// sd.Keys order. Floating tensors are stored as F32 and integer and bool
// tensors as I64; a tensor with an empty DType is written from whichever of
// Float and Int is set. meta becomes the header's __metadata__.
//
// The file appears atomically: the data goes to a temporary file
// (path+".tmp-*") in the same directory, which is synced and then renamed
// over path, so a crash or error never leaves a partial checkpoint under
// path, and on error the temporary file is removed.
func WriteSafetensors(path string, sd *StateDict, meta map[string]string) error {
	header, err := safetensorsHeader(sd, meta)
	if err != nil {
		return fmt.Errorf("ckpt %s: %w", path, err)
	}
	err = atomicfile.Write(path, func(w io.Writer) error {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(header)))
		if _, err := w.Write(n[:]); err != nil {
			return err
		}
		if _, err := w.Write(header); err != nil {
			return err
		}
		buf := make([]byte, 64<<10)
		for _, k := range sd.Keys {
			t := sd.Tensors[k]
			if isFloat, _ := writeAsFloat(t); isFloat {
				err = writeFloat32s(w, t.Float, buf)
			} else {
				err = writeInt64s(w, t.Int, buf)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ckpt %s: %w", path, err)
	}
	return nil
}

// writeAsFloat reports whether t is stored as F32 (else I64).
func writeAsFloat(t *Tensor) (bool, error) {
	switch {
	case floatDTypes[t.DType]:
		return true, nil
	case intDTypes[t.DType]:
		return false, nil
	case t.DType == "":
		return t.Int == nil, nil
	}
	return false, fmt.Errorf("unknown dtype %q", t.DType)
}

type safetensorsEntry struct {
	DType   string   `json:"dtype"`
	Shape   []int    `json:"shape"`
	Offsets [2]int64 `json:"data_offsets"`
}

// safetensorsHeader validates sd and returns the JSON header, padded with
// spaces to a multiple of 8 bytes so the data section stays aligned.
func safetensorsHeader(sd *StateDict, meta map[string]string) ([]byte, error) {
	if sd == nil {
		return nil, errors.New("nil state dict")
	}
	header := make(map[string]any, len(sd.Keys)+1)
	var off int64
	for _, k := range sd.Keys {
		if k == "__metadata__" {
			return nil, errors.New(`tensor name "__metadata__" is reserved`)
		}
		if _, dup := header[k]; dup {
			return nil, fmt.Errorf("key %q listed twice", k)
		}
		t := sd.Tensors[k]
		if t == nil {
			return nil, fmt.Errorf("key %q has no tensor", k)
		}
		isFloat, err := writeAsFloat(t)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", k, err)
		}
		numel := 1
		for _, d := range t.Shape {
			if d < 0 || (d > 0 && numel > maxElements/d) {
				return nil, fmt.Errorf("key %q: invalid shape %v", k, t.Shape)
			}
			numel *= d
		}
		e := safetensorsEntry{DType: "I64", Shape: append([]int{}, t.Shape...)}
		have := len(t.Int)
		if isFloat {
			e.DType, have = "F32", len(t.Float)
		}
		if have != numel {
			return nil, fmt.Errorf("key %q: shape %v needs %d values, tensor has %d", k, t.Shape, numel, have)
		}
		e.Offsets = [2]int64{off, off + int64(numel)*8}
		if isFloat {
			e.Offsets[1] = off + int64(numel)*4
		}
		off = e.Offsets[1]
		header[k] = e
	}
	if len(sd.Tensors) != len(sd.Keys) {
		return nil, fmt.Errorf("state dict has %d tensors but lists %d keys", len(sd.Tensors), len(sd.Keys))
	}
	if len(meta) > 0 {
		header["__metadata__"] = meta
	}
	b, err := json.Marshal(header)
	if err != nil {
		return nil, err
	}
	if pad := (8 - len(b)%8) % 8; pad > 0 {
		b = append(b, strings.Repeat(" ", pad)...)
	}
	return b, nil
}

func writeFloat32s(w io.Writer, xs []float32, buf []byte) error {
	for len(xs) > 0 {
		n := min(len(xs), len(buf)/4)
		for i, x := range xs[:n] {
			binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(x))
		}
		if _, err := w.Write(buf[:4*n]); err != nil {
			return err
		}
		xs = xs[n:]
	}
	return nil
}

func writeInt64s(w io.Writer, xs []int64, buf []byte) error {
	for len(xs) > 0 {
		n := min(len(xs), len(buf)/8)
		for i, x := range xs[:n] {
			binary.LittleEndian.PutUint64(buf[8*i:], uint64(x))
		}
		if _, err := w.Write(buf[:8*n]); err != nil {
			return err
		}
		xs = xs[n:]
	}
	return nil
}

// ReadSafetensors reads a safetensors file: its tensors, in data order,
// converted like ReadTorch's (floating dtypes to Float, integer and bool
// dtypes to Int), and its __metadata__ (nil when absent).
func ReadSafetensors(path string) (*StateDict, map[string]string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("ckpt %s: %s", path, statProblem(err))
	}
	if fi.IsDir() {
		return nil, nil, fmt.Errorf("ckpt %s: is a directory, not a safetensors file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("ckpt %s: %s", path, statProblem(err))
	}
	defer f.Close()
	sd, meta, err := readSafetensors(f, fi.Size())
	if err != nil {
		return nil, nil, fmt.Errorf("ckpt %s: %w", path, err)
	}
	return sd, meta, nil
}

func readSafetensors(r io.ReaderAt, size int64) (*StateDict, map[string]string, error) {
	if size < 8 {
		return nil, nil, fmt.Errorf("truncated safetensors file (%d bytes)", size)
	}
	var nb [8]byte
	if _, err := r.ReadAt(nb[:], 0); err != nil {
		return nil, nil, fmt.Errorf("read: %w", err)
	}
	n := binary.LittleEndian.Uint64(nb[:])
	if n > uint64(size-8) {
		return nil, nil, fmt.Errorf("truncated safetensors file: header of %d bytes, file has %d", n, size)
	}
	if n > maxHeaderLen {
		return nil, nil, fmt.Errorf("safetensors header of %d bytes is too large", n)
	}
	hdr := make([]byte, n)
	if _, err := r.ReadAt(hdr, 8); err != nil {
		return nil, nil, fmt.Errorf("read header: %w", err)
	}
	var md safetensors.Metadata
	if err := json.Unmarshal(hdr, &md); err != nil {
		return nil, nil, fmt.Errorf("invalid safetensors header: %s", clip(err.Error()))
	}
	infos := md.Tensors()
	names := make([]string, 0, len(infos))
	for name := range infos {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int {
		oa, ob := infos[a].DataOffsets, infos[b].DataOffsets
		if oa[0] != ob[0] {
			return cmpUint64(oa[0], ob[0])
		}
		if oa[1] != ob[1] {
			return cmpUint64(oa[1], ob[1])
		}
		return strings.Compare(a, b)
	})
	dataStart := 8 + int64(n)
	dataLen := uint64(size - dataStart)
	var pos uint64
	for _, name := range names {
		info := infos[name]
		dt := safetensorsDTypes[info.DType]
		if dt == nil {
			return nil, nil, fmt.Errorf("tensor %q: dtype %s is not supported", name, info.DType)
		}
		numel := uint64(1)
		for _, d := range info.Shape {
			if d > 0 && numel > maxElements/d || d > maxElements {
				return nil, nil, fmt.Errorf("tensor %q: shape has too many elements", name)
			}
			numel *= d
		}
		s, e := info.DataOffsets[0], info.DataOffsets[1]
		if s != pos || e < s || e-s != numel*uint64(dt.size) {
			return nil, nil, fmt.Errorf("tensor %q: data offsets [%d, %d] do not follow the previous tensor at %d or do not match %d %s elements", name, s, e, pos, numel, info.DType)
		}
		pos = e
	}
	if pos != dataLen {
		return nil, nil, fmt.Errorf("data section holds %d bytes, header describes %d", dataLen, pos)
	}
	sd := &StateDict{Keys: names, Tensors: make(map[string]*Tensor, len(names))}
	chunk := make([]byte, 1<<20)
	for _, name := range names {
		info := infos[name]
		dt := safetensorsDTypes[info.DType]
		shape := make([]int, len(info.Shape))
		for i, d := range info.Shape {
			shape[i] = int(d)
		}
		total := int(info.DataOffsets[1]-info.DataOffsets[0]) / dt.size
		t := newTensor(dt, shape, total)
		per := len(chunk) / dt.size
		for done := 0; done < total; {
			k := min(per, total-done)
			buf := chunk[:k*dt.size]
			if _, err := r.ReadAt(buf, dataStart+int64(info.DataOffsets[0])+int64(done*dt.size)); err != nil {
				return nil, nil, fmt.Errorf("tensor %q: read: %v", name, err)
			}
			dt.decode(t, done, buf, 0, k, 1)
			done += k
		}
		sd.Tensors[name] = t
	}
	return sd, md.Metadata(), nil
}

func cmpUint64(a, b uint64) int {
	if a < b {
		return -1
	}
	return 1
}
