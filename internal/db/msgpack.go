package db

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// maxDepth bounds msgpack nesting so that hostile input cannot exhaust the
// stack; real UNITER values nest at most three levels.
const maxDepth = 64

// errShort reports a msgpack value cut off before its end.
var errShort = errors.New("msgpack: truncated input")

// mpDecoder decodes the msgpack subset that Python's msgpack produces for
// UNITER values into plain Go values: nil, bool, int64 (uint64 above
// MaxInt64), float64, string (str), []byte (bin), []any and map[string]any.
//
// It is hand-written rather than taken from a generic library because every
// length here comes from untrusted bytes: each is checked against the bytes
// left before anything is allocated, so corrupt values fail cleanly.
type mpDecoder struct {
	b   []byte
	pos int
}

func (d *mpDecoder) need(n int) ([]byte, error) {
	if n < 0 || n > len(d.b)-d.pos {
		return nil, errShort
	}
	s := d.b[d.pos : d.pos+n]
	d.pos += n
	return s, nil
}

func (d *mpDecoder) byte1() (byte, error) {
	s, err := d.need(1)
	if err != nil {
		return 0, err
	}
	return s[0], nil
}

func (d *mpDecoder) uintN(n int) (uint64, error) {
	s, err := d.need(n)
	if err != nil {
		return 0, err
	}
	switch n {
	case 1:
		return uint64(s[0]), nil
	case 2:
		return uint64(binary.BigEndian.Uint16(s)), nil
	case 4:
		return uint64(binary.BigEndian.Uint32(s)), nil
	default:
		return binary.BigEndian.Uint64(s), nil
	}
}

// count reads an element count and rejects counts that the remaining bytes
// cannot hold (every element takes at least minSize bytes).
func (d *mpDecoder) count(n, minSize int) (int, error) {
	c, err := d.uintN(n)
	if err != nil {
		return 0, err
	}
	if c > uint64(len(d.b)-d.pos)/uint64(minSize) {
		return 0, errShort
	}
	return int(c), nil
}

// value decodes one msgpack object.
func (d *mpDecoder) value(depth int) (any, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("msgpack: nesting deeper than %d", maxDepth)
	}
	c, err := d.byte1()
	if err != nil {
		return nil, err
	}
	switch {
	case c <= 0x7f:
		return int64(c), nil
	case c >= 0xe0:
		return int64(int8(c)), nil
	case c&0xf0 == 0x80:
		return d.mapBody(int(c&0x0f), depth)
	case c&0xf0 == 0x90:
		return d.arrayBody(int(c&0x0f), depth)
	case c&0xe0 == 0xa0:
		return d.str(int(c & 0x1f))
	}
	switch c {
	case 0xc0:
		return nil, nil
	case 0xc2:
		return false, nil
	case 0xc3:
		return true, nil
	case 0xc4, 0xc5, 0xc6:
		n, err := d.count(1<<(c-0xc4), 1)
		if err != nil {
			return nil, err
		}
		s, err := d.need(n)
		if err != nil {
			return nil, err
		}
		// Alias the input rather than copy: callers hand in buffers they own
		// (a copy out of LMDB, a decompressed value), and image data is large.
		return s[:n:n], nil
	case 0xca:
		u, err := d.uintN(4)
		return float64(math.Float32frombits(uint32(u))), err
	case 0xcb:
		u, err := d.uintN(8)
		return math.Float64frombits(u), err
	case 0xcc, 0xcd, 0xce, 0xcf:
		u, err := d.uintN(1 << (c - 0xcc))
		if err != nil {
			return nil, err
		}
		if u > math.MaxInt64 {
			return u, nil
		}
		return int64(u), nil
	case 0xd0:
		u, err := d.uintN(1)
		return int64(int8(u)), err
	case 0xd1:
		u, err := d.uintN(2)
		return int64(int16(u)), err
	case 0xd2:
		u, err := d.uintN(4)
		return int64(int32(u)), err
	case 0xd3:
		u, err := d.uintN(8)
		return int64(u), err
	case 0xd9, 0xda, 0xdb:
		n, err := d.count(1<<(c-0xd9), 1)
		if err != nil {
			return nil, err
		}
		return d.str(n)
	case 0xdc, 0xdd:
		n, err := d.count(2<<(c-0xdc), 1)
		if err != nil {
			return nil, err
		}
		return d.arrayBody(n, depth)
	case 0xde, 0xdf:
		n, err := d.count(2<<(c-0xde), 2)
		if err != nil {
			return nil, err
		}
		return d.mapBody(n, depth)
	}
	return nil, fmt.Errorf("msgpack: unsupported type code 0x%02x at byte %d", c, d.pos-1)
}

func (d *mpDecoder) str(n int) (string, error) {
	s, err := d.need(n)
	if err != nil {
		return "", err
	}
	return string(s), nil
}

func (d *mpDecoder) arrayBody(n, depth int) ([]any, error) {
	if n > len(d.b)-d.pos {
		return nil, errShort
	}
	a := make([]any, n)
	for i := range a {
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		a[i] = v
	}
	return a, nil
}

// mapBody decodes n key/value pairs. Keys must be str or bin (msgpack-numpy
// writes b'nd' etc. as bin); both become Go strings.
func (d *mpDecoder) mapBody(n, depth int) (map[string]any, error) {
	if n > (len(d.b)-d.pos)/2 {
		return nil, errShort
	}
	m := make(map[string]any, n)
	for i := 0; i < n; i++ {
		at := d.pos
		k, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		var ks string
		switch k := k.(type) {
		case string:
			ks = k
		case []byte:
			ks = string(k)
		default:
			return nil, fmt.Errorf("msgpack: map key at byte %d is %T, want str or bin", at, k)
		}
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		m[ks] = v
	}
	return m, nil
}

// decodeMsgpack decodes b, which must hold exactly one msgpack object.
func decodeMsgpack(b []byte) (any, error) {
	d := &mpDecoder{b: b}
	v, err := d.value(0)
	if err != nil {
		return nil, err
	}
	if d.pos != len(b) {
		return nil, fmt.Errorf("msgpack: %d trailing bytes after the value", len(b)-d.pos)
	}
	return v, nil
}
