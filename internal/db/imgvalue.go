package db

import (
	"bytes"
	"fmt"
	"math"
	"sort"

	"github.com/vmihailenco/msgpack/v5"
)

// imgArrays are the arrays of an img_db value, in the order the official
// converter writes them.
var imgArrays = []string{"norm_bb", "features", "conf", "soft_labels"}

// DecodeImgValue decodes a raw img_db value into its named arrays: a
// msgpack map of msgpack-numpy arrays, or, when compressed, an npz
// (np.savez_compressed bytes). Array data may alias b.
func DecodeImgValue(b []byte, compressed bool) (map[string]Array, error) {
	if compressed {
		return decodeNpzValue(b, nil)
	}
	return decodeMsgpackImg(b)
}

// npzQuirk is an entry every official compressed value carries: the
// converter calls np.savez_compressed(writer, **dump, allow_pickle=True),
// and savez_compressed stores the stray keyword as a 0-d bool array.
const npzQuirk = "allow_pickle"

// decodeNpzValue reads the named arrays (all but the allow_pickle quirk when
// want is nil) of an npz value.
func decodeNpzValue(b []byte, want []string) (map[string]Array, error) {
	r, err := openNpz(b)
	if err != nil {
		return nil, fmt.Errorf("corrupt value: %w", err)
	}
	if want == nil {
		for _, n := range r.names() {
			if n != npzQuirk {
				want = append(want, n)
			}
		}
	}
	out := make(map[string]Array, len(want))
	for _, n := range want {
		a, ok, err := r.array(n)
		if err != nil {
			return nil, fmt.Errorf("corrupt value: %w", err)
		}
		if ok {
			out[n] = a
		}
	}
	return out, nil
}

func decodeMsgpackImg(b []byte) (map[string]Array, error) {
	v, err := decodeMsgpack(b)
	if err != nil {
		return nil, fmt.Errorf("corrupt value: %w", err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("corrupt value: msgpack holds %s, want a map of arrays", describe(v))
	}
	out := make(map[string]Array, len(m))
	for name, x := range m {
		a, err := fromMsgpackNumpy(x)
		if err != nil {
			return nil, fmt.Errorf("corrupt value: array %q: %w", name, err)
		}
		out[name] = a
	}
	return out, nil
}

// fromMsgpackNumpy converts msgpack-numpy's encoding of an ndarray,
// {b'nd': True, b'type': '<f2', b'kind': b"", b'shape': [...], b'data': ...},
// into an Array.
func fromMsgpackNumpy(x any) (Array, error) {
	m, ok := x.(map[string]any)
	if !ok {
		return Array{}, fmt.Errorf("want a msgpack-numpy map, got %s", describe(x))
	}
	if nd, _ := m["nd"].(bool); !nd {
		return Array{}, fmt.Errorf("not a msgpack-numpy ndarray (nd = %s)", describe(m["nd"]))
	}
	var a Array
	switch t := m["type"].(type) {
	case string:
		a.Dtype = t
	case []byte:
		a.Dtype = string(t)
	default:
		return Array{}, fmt.Errorf("type is %s, want a dtype string", describe(m["type"]))
	}
	shape, ok := m["shape"].([]any)
	if !ok {
		return Array{}, fmt.Errorf("shape is %s, want a list", describe(m["shape"]))
	}
	for _, d := range shape {
		n, ok := d.(int64)
		if !ok || n < 0 || n > math.MaxInt32 {
			return Array{}, fmt.Errorf("bad dimension %s in shape", describe(d))
		}
		a.Shape = append(a.Shape, int(n))
	}
	data, ok := m["data"].([]byte)
	if !ok {
		return Array{}, fmt.Errorf("data is %s, want bytes", describe(m["data"]))
	}
	a.Data = data
	if err := a.checkSize(); err != nil {
		return Array{}, err
	}
	return a, nil
}

// orderedNames lists the arrays of m: the official ones first, in the
// official order, then any others sorted.
func orderedNames(m map[string]Array) []string {
	var names []string
	seen := map[string]bool{}
	for _, n := range imgArrays {
		if _, ok := m[n]; ok {
			names = append(names, n)
			seen[n] = true
		}
	}
	var rest []string
	for n := range m {
		if !seen[n] {
			rest = append(rest, n)
		}
	}
	sort.Strings(rest)
	return append(names, rest...)
}

// EncodeImgValue encodes arrays as an img_db value: the official
// msgpack_numpy.patch() + msgpack.dumps(use_bin_type=True) layout, or
// np.savez_compressed bytes when compressed.
func EncodeImgValue(arrays map[string]Array, compressed bool) ([]byte, error) {
	names := orderedNames(arrays)
	for _, n := range names {
		a := arrays[n]
		if err := a.checkSize(); err != nil {
			return nil, fmt.Errorf("array %q: %w", n, err)
		}
	}
	if compressed {
		return encodeNpz(names, arrays, true)
	}
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	if err := enc.EncodeMapLen(len(names)); err != nil {
		return nil, err
	}
	for _, n := range names {
		a := arrays[n]
		if err := encodeMsgpackNumpy(enc, n, a); err != nil {
			return nil, fmt.Errorf("array %q: %w", n, err)
		}
	}
	return buf.Bytes(), nil
}

// encodeMsgpackNumpy writes one name -> ndarray entry exactly as
// msgpack-numpy 0.4 does: bin keys, the dtype as str, kind as empty bin.
func encodeMsgpackNumpy(enc *msgpack.Encoder, name string, a Array) error {
	if err := enc.EncodeString(name); err != nil {
		return err
	}
	if err := enc.EncodeMapLen(5); err != nil {
		return err
	}
	steps := []func() error{
		func() error { return enc.EncodeBytes([]byte("nd")) },
		func() error { return enc.EncodeBool(true) },
		func() error { return enc.EncodeBytes([]byte("type")) },
		func() error { return enc.EncodeString(a.Dtype) },
		func() error { return enc.EncodeBytes([]byte("kind")) },
		func() error { return enc.EncodeBytes([]byte{}) },
		func() error { return enc.EncodeBytes([]byte("shape")) },
		func() error {
			if err := enc.EncodeArrayLen(len(a.Shape)); err != nil {
				return err
			}
			for _, d := range a.Shape {
				if err := enc.EncodeInt(int64(d)); err != nil {
					return err
				}
			}
			return nil
		},
		func() error { return enc.EncodeBytes([]byte("data")) },
		func() error { return enc.EncodeBytes(a.Data) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	return nil
}
