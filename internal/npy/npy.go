// Package npy writes float32 arrays as NumPy .npy files (format 1.0,
// little-endian, C order), the format `uniter embed` and `uniter eval`
// hand to Python users.
package npy

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strings"

	"uniter/internal/atomicfile"
)

// Header returns the .npy preamble for a float32 array of the given shape:
// magic, version 1.0, header length, and the dict padded so the data starts
// on a 64-byte boundary.
func Header(shape []int) []byte {
	dims := make([]string, len(shape))
	for i, d := range shape {
		dims[i] = fmt.Sprint(d)
	}
	tuple := strings.Join(dims, ", ")
	if len(shape) == 1 {
		tuple += ","
	}
	dict := fmt.Sprintf("{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", tuple)
	total := 10 + len(dict) + 1
	pad := (64 - total%64) % 64
	dict += strings.Repeat(" ", pad) + "\n"
	h := []byte("\x93NUMPY\x01\x00")
	h = binary.LittleEndian.AppendUint16(h, uint16(len(dict)))
	return append(h, dict...)
}

// WriteFloat32 writes data with the given shape to path atomically: into a
// temporary file in the same directory, synced, then renamed, so a reader
// never sees a partial array under the final name.
func WriteFloat32(path string, shape []int, data []float32) error {
	n := 1
	for _, d := range shape {
		n *= d
	}
	if n != len(data) {
		return fmt.Errorf("npy %s: shape %v holds %d values, got %d", path, shape, n, len(data))
	}
	err := atomicfile.Write(path, func(w io.Writer) error {
		if _, err := w.Write(Header(shape)); err != nil {
			return err
		}
		var buf [4]byte
		for _, v := range data {
			binary.LittleEndian.PutUint32(buf[:], math.Float32bits(v))
			if _, err := w.Write(buf[:]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("npy: %w", err)
	}
	return nil
}

// Float32Bytes is data as the little-endian bytes of a .npy body, for
// writers that fill a file piece by piece.
func Float32Bytes(data []float32) []byte {
	b := make([]byte, 4*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

// Float32sFrom decodes little-endian float32 bytes (a .npy body).
func Float32sFrom(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}
