package ckpt

import (
	"errors"
	"fmt"
	"math"
)

// maxElements bounds a tensor's element count far above any real model so
// that index arithmetic on sizes and strides cannot overflow.
const maxElements = 1 << 48

// tensorView is a tensor as pickled: a strided window on a storage.
type tensorView struct {
	st     *storage
	offset int
	size   []int
	stride []int
}

// numel validates the view against its storage and returns its element
// count. Every element it addresses must lie inside the storage, and it may
// not address more elements than the storage holds: overlapping (expanded)
// views never occur in state dicts, and refusing them bounds the output by
// the file size.
func (v *tensorView) numel() (int, error) {
	if len(v.size) != len(v.stride) {
		return 0, fmt.Errorf("size has %d dimensions but stride has %d", len(v.size), len(v.stride))
	}
	if v.offset < 0 {
		return 0, fmt.Errorf("negative storage offset %d", v.offset)
	}
	n := 1
	for i, s := range v.size {
		if s < 0 {
			return 0, fmt.Errorf("negative size %d in dimension %d", s, i)
		}
		if v.stride[i] < 0 {
			return 0, fmt.Errorf("negative stride %d in dimension %d", v.stride[i], i)
		}
		if s > 0 && n > maxElements/s {
			return 0, errors.New("shape has too many elements")
		}
		n *= s
	}
	if n == 0 {
		return 0, nil
	}
	last := v.offset
	for i, s := range v.size {
		step := v.stride[i]
		if step > 0 && s-1 > (math.MaxInt-last)/step {
			return 0, fmt.Errorf("storage holds %d elements, view reaches far past its end", v.st.numel)
		}
		last += (s - 1) * step
	}
	if last >= v.st.numel {
		return 0, fmt.Errorf("storage holds %d elements, view needs %d", v.st.numel, last+1)
	}
	if n > v.st.numel {
		return 0, fmt.Errorf("view of %d elements overlaps itself in a storage of %d (expanded tensors are not supported)", n, v.st.numel)
	}
	return n, nil
}

// contiguous reports whether the view is C-ordered without gaps, so it can
// be converted as one run.
func (v *tensorView) contiguous() bool {
	want := 1
	for i := len(v.size) - 1; i >= 0; i-- {
		if v.size[i] != 1 && v.stride[i] != want {
			return false
		}
		want *= v.size[i]
	}
	return true
}

// materialise converts the view into a C-ordered Tensor.
func (v *tensorView) materialise() (*Tensor, error) {
	defer v.st.release()
	n, err := v.numel()
	if err != nil {
		return nil, err
	}
	dt := v.st.dt
	t := newTensor(dt, append([]int{}, v.size...), n)
	if n == 0 {
		return t, nil
	}
	raw, err := v.st.bytes()
	if err != nil {
		return nil, err
	}
	rank := len(v.size)
	if v.contiguous() {
		dt.decode(t, 0, raw, v.offset, n, 1)
		return t, nil
	}
	// Walk the outer dimensions with an odometer and convert one run along
	// the innermost dimension at a time.
	inner, step := v.size[rank-1], v.stride[rank-1]
	idx := make([]int, rank-1)
	src := v.offset
	for dst := 0; dst < n; dst += inner {
		dt.decode(t, dst, raw, src, inner, step)
		for j := rank - 2; j >= 0; j-- {
			idx[j]++
			src += v.stride[j]
			if idx[j] < v.size[j] {
				break
			}
			src -= v.stride[j] * v.size[j]
			idx[j] = 0
		}
	}
	return t, nil
}
