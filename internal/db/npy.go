package db

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Array is an n-d numeric array as stored in a db value: its numpy dtype
// string ("<f2" or "<f4"), shape, and raw little-endian C-order bytes.
type Array struct {
	Dtype string
	Shape []int
	Data  []byte
}

// itemSize returns the element size of the supported dtypes.
func itemSize(dtype string) (int, error) {
	switch dtype {
	case "<f2":
		return 2, nil
	case "<f4":
		return 4, nil
	}
	return 0, fmt.Errorf("unsupported dtype %q (want <f2 or <f4)", dtype)
}

// checkSize verifies that the shape's element count times the item size
// matches the data length, without overflowing on hostile shapes.
func (a *Array) checkSize() error {
	size, err := itemSize(a.Dtype)
	if err != nil {
		return err
	}
	n := 1
	for _, d := range a.Shape {
		if d < 0 {
			return fmt.Errorf("negative dimension in shape %v", a.Shape)
		}
		if d != 0 && n > len(a.Data)/d {
			return fmt.Errorf("shape %v needs more than the %d data bytes", a.Shape, len(a.Data))
		}
		n *= d
	}
	if n*size != len(a.Data) {
		return fmt.Errorf("shape %v of %s needs %d bytes, data has %d", a.Shape, a.Dtype, n*size, len(a.Data))
	}
	return nil
}

var npyMagic = []byte("\x93NUMPY")

// parseNpy parses one .npy file. Fortran-ordered 2-d arrays are transposed
// into C order so that callers see one layout.
func parseNpy(b []byte) (Array, error) {
	if len(b) < 10 || !bytes.Equal(b[:6], npyMagic) {
		return Array{}, errors.New("not a .npy file (bad magic)")
	}
	major := b[6]
	var hlen, off int
	switch major {
	case 1:
		hlen, off = int(binary.LittleEndian.Uint16(b[8:10])), 10
	case 2, 3:
		if len(b) < 12 {
			return Array{}, errors.New("truncated .npy header")
		}
		h := binary.LittleEndian.Uint32(b[8:12])
		if uint64(h) > uint64(len(b)) {
			return Array{}, errors.New("truncated .npy header")
		}
		hlen, off = int(h), 12
	default:
		return Array{}, fmt.Errorf("unsupported .npy version %d", major)
	}
	if hlen > len(b)-off {
		return Array{}, errors.New("truncated .npy header")
	}
	header := string(b[off : off+hlen])
	descr, err := headerString(header, "descr")
	if err != nil {
		return Array{}, err
	}
	fortran, err := headerBool(header, "fortran_order")
	if err != nil {
		return Array{}, err
	}
	shape, err := headerShape(header)
	if err != nil {
		return Array{}, err
	}
	a := Array{Dtype: descr, Shape: shape, Data: b[off+hlen:]}
	if err := a.checkSize(); err != nil {
		return Array{}, err
	}
	if fortran && len(shape) > 1 {
		if len(shape) != 2 {
			return Array{}, fmt.Errorf("fortran-ordered %d-d array not supported", len(shape))
		}
		a.Data = transpose(a.Data, shape[1], shape[0], len(a.Data)/max(1, shape[0]*shape[1]))
	}
	return a, nil
}

// transpose turns a rows x cols matrix of size-byte elements into cols x
// rows.
func transpose(src []byte, rows, cols, size int) []byte {
	dst := make([]byte, len(src))
	for r := 0; r < rows; r++ {
		for c := 0; c < cols; c++ {
			copy(dst[(c*rows+r)*size:(c*rows+r+1)*size], src[(r*cols+c)*size:(r*cols+c+1)*size])
		}
	}
	return dst
}

// headerValue returns the text after 'key': in a .npy header dict.
func headerValue(header, key string) (string, error) {
	for _, q := range []string{"'", `"`} {
		if i := strings.Index(header, q+key+q); i >= 0 {
			rest := strings.TrimLeft(header[i+len(key)+2:], " ")
			if !strings.HasPrefix(rest, ":") {
				break
			}
			return strings.TrimLeft(rest[1:], " "), nil
		}
	}
	return "", fmt.Errorf(".npy header %q lacks %q", header, key)
}

func headerString(header, key string) (string, error) {
	v, err := headerValue(header, key)
	if err != nil {
		return "", err
	}
	if v == "" || (v[0] != '\'' && v[0] != '"') {
		return "", fmt.Errorf(".npy header %q: %s is not a string", header, key)
	}
	end := strings.IndexByte(v[1:], v[0])
	if end < 0 {
		return "", fmt.Errorf(".npy header %q: unterminated %s", header, key)
	}
	return v[1 : 1+end], nil
}

func headerBool(header, key string) (bool, error) {
	v, err := headerValue(header, key)
	if err != nil {
		return false, err
	}
	switch {
	case strings.HasPrefix(v, "True"):
		return true, nil
	case strings.HasPrefix(v, "False"):
		return false, nil
	}
	return false, fmt.Errorf(".npy header %q: %s is not True/False", header, key)
}

func headerShape(header string) ([]int, error) {
	v, err := headerValue(header, "shape")
	if err != nil {
		return nil, err
	}
	end := strings.IndexByte(v, ')')
	if !strings.HasPrefix(v, "(") || end < 0 {
		return nil, fmt.Errorf(".npy header %q: shape is not a tuple", header)
	}
	shape := []int{}
	for _, f := range strings.Split(v[1:end], ",") {
		f = strings.TrimSuffix(strings.TrimSpace(f), "L")
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 {
			return nil, fmt.Errorf(".npy header %q: bad dimension %q", header, f)
		}
		shape = append(shape, n)
	}
	return shape, nil
}

// encodeNpy writes a version 1.0 .npy file the way numpy does: the header
// dict padded with spaces and a newline to a multiple of 64 bytes.
func encodeNpy(a Array) []byte {
	dims := make([]string, len(a.Shape))
	for i, d := range a.Shape {
		dims[i] = strconv.Itoa(d)
	}
	shape := strings.Join(dims, ", ")
	if len(dims) == 1 {
		shape += ","
	}
	h := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", a.Dtype, shape)
	pad := 64 - (len(npyMagic)+4+len(h)+1)%64
	if pad == 64 {
		pad = 0
	}
	h += strings.Repeat(" ", pad) + "\n"
	var buf bytes.Buffer
	buf.Grow(len(npyMagic) + 4 + len(h) + len(a.Data))
	buf.Write(npyMagic)
	buf.Write([]byte{1, 0})
	binary.Write(&buf, binary.LittleEndian, uint16(len(h)))
	buf.WriteString(h)
	buf.Write(a.Data)
	return buf.Bytes()
}

// maxNpyEntry bounds one decompressed .npy inside an npz value; a 100-box
// image with 2048-d features and 1601 labels is well under 1 MB, so this
// only stops decompression bombs.
const maxNpyEntry = 256 << 20

// npzReader gives access to the arrays of an npz (a zip of .npy files).
type npzReader struct {
	files map[string]*zip.File
}

func openNpz(b []byte) (*npzReader, error) {
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return nil, fmt.Errorf("npz: %w", err)
	}
	r := &npzReader{files: make(map[string]*zip.File, len(zr.File))}
	for _, f := range zr.File {
		r.files[strings.TrimSuffix(f.Name, ".npy")] = f
	}
	return r, nil
}

// array reads the named array; ok is false when the npz lacks it.
func (r *npzReader) array(name string) (a Array, ok bool, err error) {
	f, ok := r.files[name]
	if !ok {
		return Array{}, false, nil
	}
	if f.UncompressedSize64 > maxNpyEntry {
		return Array{}, true, fmt.Errorf("npz entry %s: %d bytes is too large", f.Name, f.UncompressedSize64)
	}
	rc, err := f.Open()
	if err != nil {
		return Array{}, true, fmt.Errorf("npz entry %s: %w", f.Name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, int64(f.UncompressedSize64)+1))
	if err != nil {
		return Array{}, true, fmt.Errorf("npz entry %s: %w", f.Name, err)
	}
	a, err = parseNpy(b)
	if err != nil {
		return Array{}, true, fmt.Errorf("npz entry %s: %w", f.Name, err)
	}
	return a, true, nil
}

// names returns the array names in the npz.
func (r *npzReader) names() []string {
	out := make([]string, 0, len(r.files))
	for n := range r.files {
		out = append(out, n)
	}
	return out
}

// encodeNpz writes arrays (in the given order) as an npz, deflated when
// compressed (np.savez_compressed) or stored (np.savez).
func encodeNpz(names []string, arrays map[string]Array, compressed bool) ([]byte, error) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	method := zip.Store
	if compressed {
		method = zip.Deflate
	}
	for _, n := range names {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: n + ".npy", Method: method})
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(encodeNpy(arrays[n])); err != nil {
			return nil, err
		}
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
