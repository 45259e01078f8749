package db

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/x448/float16"
)

// ReadRawNpz decodes one image's detector output, a .npz written by
// np.savez or np.savez_compressed with norm_bb [N,6], features [N,D], conf
// [N] or [N,1] and optionally soft_labels [N,L], in float32 or float16.
// float32 arrays are rounded to fp16 as the official converter's
// astype(np.float16) does; the nbb a writer keeps is still counted on the
// original confidences, as the converter counts before converting.
func ReadRawNpz(b []byte) (RawImage, error) {
	arrays, err := decodeNpzValue(b, nil)
	if err != nil {
		return RawImage{}, err
	}
	return rawFromArrays(arrays)
}

func rawFromArrays(arrays map[string]Array) (RawImage, error) {
	for _, n := range []string{"features", "norm_bb", "conf"} {
		if _, ok := arrays[n]; !ok {
			return RawImage{}, fmt.Errorf("no %s array (has %v)", n, orderedNames(arrays))
		}
	}
	feat := arrays["features"]
	if len(feat.Shape) != 2 || feat.Shape[0] == 0 || feat.Shape[1] == 0 {
		return RawImage{}, fmt.Errorf("features shape %v, want [N, D] with N, D > 0", feat.Shape)
	}
	r := RawImage{N: feat.Shape[0], D: feat.Shape[1]}
	type field struct {
		name string
		cols int // -1: any (soft_labels)
		dst  *[]float16.Float16
	}
	fields := []field{{"features", r.D, &r.Features}, {"norm_bb", 6, &r.NormBB}, {"conf", 1, &r.Conf}}
	if sl, ok := arrays["soft_labels"]; ok {
		r.L = -1 // a shape other than [N, L] is reported below
		if len(sl.Shape) == 2 {
			r.L = sl.Shape[1]
		}
		fields = append(fields, field{"soft_labels", r.L, &r.SoftLabels})
	}
	for _, f := range fields {
		a := arrays[f.name]
		ok := len(a.Shape) == 2 && a.Shape[0] == r.N && a.Shape[1] == f.cols
		if f.name == "conf" && len(a.Shape) == 1 && a.Shape[0] == r.N {
			ok = true
		}
		if !ok {
			want := fmt.Sprintf("[%d, %d]", r.N, f.cols)
			switch {
			case f.name == "conf":
				want = fmt.Sprintf("[%d] or [%d, 1]", r.N, r.N)
			case f.cols < 0:
				want = fmt.Sprintf("[%d, L]", r.N)
			}
			return RawImage{}, fmt.Errorf("%s shape %v, want %s to match features %v", f.name, a.Shape, want, feat.Shape)
		}
		v, err := toFloat16(a)
		if err != nil {
			return RawImage{}, fmt.Errorf("%s: %w", f.name, err)
		}
		*f.dst = v
	}
	r.rawConf = arrays["conf"]
	// The array may alias the caller's buffer; keep a copy.
	r.rawConf.Data = append([]byte(nil), r.rawConf.Data...)
	return r, nil
}

// toFloat16 returns an array's values as fp16, rounding float32 to nearest
// even like numpy.
func toFloat16(a Array) ([]float16.Float16, error) {
	switch a.Dtype {
	case "<f2":
		out := make([]float16.Float16, len(a.Data)/2)
		for i := range out {
			out[i] = float16.Frombits(binary.LittleEndian.Uint16(a.Data[2*i:]))
		}
		return out, nil
	case "<f4":
		out := make([]float16.Float16, len(a.Data)/4)
		for i := range out {
			out[i] = float16.Fromfloat32(math.Float32frombits(binary.LittleEndian.Uint32(a.Data[4*i:])))
		}
		return out, nil
	}
	return nil, fmt.Errorf("unsupported dtype %q (want float16 or float32)", a.Dtype)
}
