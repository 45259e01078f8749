package db

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/x448/float16"

	"uniter/internal/lmdb"
)

// Compression selects compressed (npz) or uncompressed (msgpack) img_db
// values.
type Compression int

const (
	// CompressAuto takes whichever layout exists, the uncompressed one when
	// both do (it is faster to read).
	CompressAuto Compression = iota
	// CompressNo requires the uncompressed layout.
	CompressNo
	// CompressYes requires the "_compressed" layout.
	CompressYes
)

// ImgDBOptions are the official img_db arguments.
type ImgDBOptions struct {
	// ConfTh is the detection confidence threshold; -1 selects the fixed
	// feat_numbb{NumBB} layout.
	ConfTh float64
	// MaxBB and MinBB clamp the number of boxes kept above ConfTh.
	MaxBB, MinBB int
	// NumBB is the fixed box count of the feat_numbb layout.
	NumBB int
	// Compressed selects the value encoding.
	Compressed Compression
	// ImgDim is the expected feature size (2048 for the official features);
	// 0 accepts whatever the first image read has, and then requires every
	// other image to match it.
	ImgDim int
	// KeepAll makes a writer use the "all" layout (every box stored, nbb
	// computed at read time); readers find the layout by themselves.
	KeepAll bool
}

// DefaultImgDBOptions returns the official defaults: conf_th 0.2, max_bb
// 100, min_bb 10, num_bb 36.
func DefaultImgDBOptions() ImgDBOptions {
	return ImgDBOptions{ConfTh: 0.2, MaxBB: 100, MinBB: 10, NumBB: 36}
}

type layoutKind int

const (
	layoutTh layoutKind = iota
	layoutNumBB
	layoutAll
)

// PyFloat formats f as Python's str(float) does ("0.2", "1.0", "1e-05"),
// which is how the official code spells conf_th in directory names.
func PyFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64)
	mant, exp, _ := strings.Cut(e, "e")
	x, _ := strconv.Atoi(exp)
	if x < -4 || x >= 16 {
		return mant + "e" + exp
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}

func (o ImgDBOptions) thName() string {
	return fmt.Sprintf("th%s_max%d_min%d", PyFloat(o.ConfTh), o.MaxBB, o.MinBB)
}

// NBBFile is the name of the side file {fname: nbb} for these options.
func (o ImgDBOptions) NBBFile() string { return "nbb_" + o.thName() + ".json" }

// layoutName is the LMDB sub-directory of a layout, without suffix.
func (o ImgDBOptions) layoutName(k layoutKind) string {
	switch k {
	case layoutNumBB:
		return fmt.Sprintf("feat_numbb%d", o.NumBB)
	case layoutAll:
		return "all"
	}
	return "feat_" + o.thName()
}

// writeLayout is the layout a writer with these options produces.
func (o ImgDBOptions) writeLayout() layoutKind {
	switch {
	case o.KeepAll:
		return layoutAll
	case o.ConfTh == -1:
		return layoutNumBB
	}
	return layoutTh
}

// ImgDB is an open img_db. It is safe for concurrent use.
type ImgDB struct {
	dir        string
	sub        string
	path       string
	opts       ImgDBOptions
	layout     layoutKind
	compressed bool
	env        *lmdb.Env
	name2nbb   map[string]int // from the nbb json, when present
	computed   sync.Map       // fname -> nbb computed from conf
	dim        atomic.Int64

	// names is read on the first lookup of a name the db lacks, to suggest
	// the closest names it holds; lookups that succeed never pay for it.
	namesOnce sync.Once
	names     []string
}

// Image is one image's regions, truncated to its nbb rows and converted
// from fp16 to float32.
type Image struct {
	Name string
	// NBB is the number of regions kept; Dim the feature size.
	NBB, Dim int
	// Features is [NBB, Dim] row-major.
	Features []float32
	// NormBB is [NBB, 6]: x1, y1, x2, y2, w, h normalised by image size.
	NormBB []float32
	// Conf is [NBB] detection confidences (nil when not loaded).
	Conf []float32
	// SoftLabels is [NBB, NumLabels] detector class distributions (1601 VG
	// classes incl. background); nil when the db has none.
	SoftLabels []float32
	// NumLabels is the soft-label width L (0 without soft labels).
	NumLabels int
}

// Box7 returns the [NBB, 7] box features the model embeds: x1, y1, x2, y2,
// w, h and w*h, the product taken in float32 as the official
// torch.cat([bb, bb[:, 4:5]*bb[:, 5:]], -1) does on fp16-loaded boxes.
func (im *Image) Box7() []float32 {
	out := make([]float32, im.NBB*7)
	for i := 0; i < im.NBB; i++ {
		b := im.NormBB[i*6 : i*6+6]
		copy(out[i*7:], b)
		out[i*7+6] = b[4] * b[5]
	}
	return out
}

// OpenImgDB opens the img_db in dir, finding its LMDB sub-directory from
// opts: feat_th{conf}_max{max}_min{min} (or feat_numbb{n} when ConfTh is
// -1), then "all", each optionally with "_compressed" as opts.Compressed
// allows.
func OpenImgDB(dir string, opts ImgDBOptions) (*ImgDB, error) {
	d := &ImgDB{dir: dir, opts: opts}
	if err := d.findLayout(); err != nil {
		return nil, err
	}
	if d.layout != layoutNumBB && opts.ConfTh != -1 {
		nbbPath := filepath.Join(dir, opts.NBBFile())
		b, err := os.ReadFile(nbbPath)
		switch {
		case err == nil:
			if err := json.Unmarshal(b, &d.name2nbb); err != nil {
				return nil, fmt.Errorf("img_db %s: %s: %w", dir, nbbPath, err)
			}
			for name, n := range d.name2nbb {
				if n < 0 {
					return nil, fmt.Errorf("img_db %s: %s: image %q has negative nbb %d", dir, nbbPath, name, n)
				}
			}
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("img_db %s: %w", dir, err)
		}
	}
	env, err := lmdb.Open(d.path)
	if err != nil {
		return nil, fmt.Errorf("img_db %s: %w", dir, err)
	}
	d.env = env
	if opts.ImgDim > 0 {
		d.dim.Store(int64(opts.ImgDim))
	}
	return d, nil
}

func (d *ImgDB) findLayout() error {
	o := d.opts
	kinds := []layoutKind{layoutTh, layoutAll}
	if o.ConfTh == -1 {
		kinds[0] = layoutNumBB
	}
	var suffixes []string
	switch o.Compressed {
	case CompressNo:
		suffixes = []string{""}
	case CompressYes:
		suffixes = []string{"_compressed"}
	default:
		suffixes = []string{"", "_compressed"}
	}
	var tried []string
	for _, k := range kinds {
		for _, s := range suffixes {
			sub := o.layoutName(k) + s
			tried = append(tried, sub)
			if _, err := os.Stat(filepath.Join(d.dir, sub, "data.mdb")); err == nil {
				d.sub, d.layout, d.compressed = sub, k, s != ""
				d.path = filepath.Join(d.dir, sub)
				return nil
			}
		}
	}
	ents, err := os.ReadDir(d.dir)
	if err != nil {
		return fmt.Errorf("img_db %s: %w", d.dir, err)
	}
	var found []string
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() {
			name += "/"
		}
		found = append(found, name)
	}
	return fmt.Errorf("img_db %s: no LMDB sub-directory for conf_th %s max_bb %d min_bb %d num_bb %d: looked for %s; found %s",
		d.dir, PyFloat(o.ConfTh), o.MaxBB, o.MinBB, o.NumBB, strings.Join(tried, ", "), listOrNone(found))
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "nothing"
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}

// Dir returns the img_db directory.
func (d *ImgDB) Dir() string { return d.dir }

// SubDir returns the name of the LMDB sub-directory in use.
func (d *ImgDB) SubDir() string { return d.sub }

// Compressed reports whether values are npz (the "_compressed" layout).
func (d *ImgDB) Compressed() bool { return d.compressed }

// Names returns the image names listed under the special key __keys__, or,
// for dbs without it, every key.
func (d *ImgDB) Names() ([]string, error) {
	b, err := d.env.Get([]byte(keysKey))
	if errors.Is(err, lmdb.ErrNotFound) {
		var names []string
		err := d.env.ForEach(func(k, _ []byte) error {
			names = append(names, string(k))
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("img_db %s: %w", d.path, err)
		}
		return names, nil
	}
	if err != nil {
		return nil, fmt.Errorf("img_db %s: %w", d.path, err)
	}
	var names []string
	if err := json.Unmarshal(b, &names); err != nil {
		return nil, fmt.Errorf("img_db %s: key %q: want a JSON list of names: %w", d.path, keysKey, err)
	}
	return names, nil
}

// keysKey is the special key holding a JSON list of every image name.
const keysKey = "__keys__"

// NBB returns the number of regions image fname contributes: fixed for
// the feat_numbb layout, from the nbb json when present, else
// min(max_bb, max(min_bb, #(conf > conf_th))) computed from the stored
// confidences.
func (d *ImgDB) NBB(fname string) (int, error) {
	if n, ok := d.knownNBB(fname); ok {
		return n, nil
	}
	var n int
	err := d.view(fname, []string{"conf"}, func(arrays map[string]Array) error {
		var err error
		n, err = d.computeNBB(fname, arrays)
		return err
	})
	return n, err
}

func (d *ImgDB) knownNBB(fname string) (int, bool) {
	if d.layout == layoutNumBB || d.opts.ConfTh == -1 {
		return d.opts.NumBB, true
	}
	if n, ok := d.name2nbb[fname]; ok {
		return n, true
	}
	if n, ok := d.computed.Load(fname); ok {
		return n.(int), true
	}
	return 0, false
}

func (d *ImgDB) computeNBB(fname string, arrays map[string]Array) (int, error) {
	conf, ok := arrays["conf"]
	if !ok {
		return 0, d.errorf(fname, "no conf array to compute nbb from (and %s lacks it)", d.opts.NBBFile())
	}
	n, err := CountNBB(conf, d.opts)
	if err != nil {
		return 0, d.errorf(fname, "conf: %v", err)
	}
	d.computed.Store(fname, n)
	return n, nil
}

// CountNBB applies the official rule min(max_bb, max(min_bb, #(conf >
// conf_th))). The comparison is made in the array's own precision, as numpy
// does for `fp16_array > 0.2`.
func CountNBB(conf Array, o ImgDBOptions) (int, error) {
	vals, err := toFloat32(conf)
	if err != nil {
		return 0, err
	}
	var th float32
	if conf.Dtype == "<f2" {
		th = float16.Fromfloat32(float32(o.ConfTh)).Float32()
	} else {
		th = float32(o.ConfTh)
	}
	count := 0
	for _, v := range vals {
		if v > th {
			count++
		}
	}
	return min(o.MaxBB, max(o.MinBB, count)), nil
}

func (d *ImgDB) errorf(fname, format string, args ...any) error {
	return fmt.Errorf("img_db %s: key %q: %s", d.path, fname, fmt.Sprintf(format, args...))
}

// view decodes fname's value in place in the memory map and calls fn with
// its arrays, whose data is valid only during fn; want limits which arrays
// are decoded from an npz (nil: all).
func (d *ImgDB) view(fname string, want []string, fn func(map[string]Array) error) error {
	if fname == "" || fname == keysKey {
		return d.errorf(fname, "not an image name")
	}
	var decodeErr, fnErr error
	err := d.env.View([]byte(fname), func(b []byte) error {
		var arrays map[string]Array
		if d.compressed {
			arrays, decodeErr = decodeNpzValue(b, want)
		} else {
			arrays, decodeErr = decodeMsgpackImg(b)
		}
		if decodeErr != nil {
			return decodeErr
		}
		fnErr = fn(arrays)
		return fnErr
	})
	switch {
	case decodeErr != nil:
		return d.errorf(fname, "%v", decodeErr)
	case fnErr != nil:
		return fnErr
	case errors.Is(err, lmdb.ErrNotFound):
		return d.errorf(fname, "image not in db%s", d.closestNames(fname))
	case err != nil:
		return fmt.Errorf("img_db %s: %w", d.path, err)
	}
	return nil
}

// Get reads image fname: its first nbb regions' features, boxes,
// confidences and soft labels (nil when the db stores none).
func (d *ImgDB) Get(fname string) (*Image, error) {
	return d.get(fname, imgArrays)
}

// GetFeat reads only image fname's features and boxes, which is all most
// tasks need; it skips converting confidences and soft labels.
func (d *ImgDB) GetFeat(fname string) (*Image, error) {
	return d.get(fname, []string{"features", "norm_bb"})
}

func (d *ImgDB) get(fname string, want []string) (*Image, error) {
	nbb, known := d.knownNBB(fname)
	loadWant := want
	if !known && !slices.Contains(want, "conf") {
		loadWant = append(append([]string{}, want...), "conf")
	}
	if !known {
		nbb = -1
	}
	var im *Image
	err := d.view(fname, loadWant, func(arrays map[string]Array) error {
		var err error
		im, err = d.decode(fname, arrays, nbb, want)
		return err
	})
	return im, err
}

// decode validates an image's arrays and converts the wanted ones' first
// nbb rows; nbb < 0 means compute it from conf.
func (d *ImgDB) decode(fname string, arrays map[string]Array, nbb int, want []string) (*Image, error) {
	var err error
	feat, ok := arrays["features"]
	if !ok {
		return nil, d.errorf(fname, "no features array (has %v)", orderedNames(arrays))
	}
	if len(feat.Shape) != 2 {
		return nil, d.errorf(fname, "features shape %v, want [N, D]", feat.Shape)
	}
	rows, dim := feat.Shape[0], feat.Shape[1]
	if dim == 0 {
		return nil, d.errorf(fname, "features shape %v has no feature columns", feat.Shape)
	}
	if err := d.checkDim(fname, dim); err != nil {
		return nil, err
	}
	check := func(name string, cols int) error {
		a, ok := arrays[name]
		if !ok {
			return nil
		}
		shapeOK := len(a.Shape) == 2 && a.Shape[0] == rows && (cols < 0 || a.Shape[1] == cols)
		if name == "conf" && len(a.Shape) == 1 && a.Shape[0] == rows {
			shapeOK = true
		}
		if !shapeOK {
			want := fmt.Sprintf("[%d, %d]", rows, cols)
			if cols < 0 {
				want = fmt.Sprintf("[%d, L]", rows)
			}
			return d.errorf(fname, "%s shape %v, want %s to match features %v", name, a.Shape, want, feat.Shape)
		}
		return nil
	}
	if _, ok := arrays["norm_bb"]; !ok {
		return nil, d.errorf(fname, "no norm_bb array (has %v)", orderedNames(arrays))
	}
	for _, c := range []struct {
		name string
		cols int
	}{{"norm_bb", 6}, {"conf", 1}, {"soft_labels", -1}} {
		if err := check(c.name, c.cols); err != nil {
			return nil, err
		}
	}
	if nbb < 0 {
		if nbb, err = d.computeNBB(fname, arrays); err != nil {
			return nil, err
		}
	}
	if nbb > rows && (d.layout == layoutNumBB || d.opts.ConfTh == -1) {
		// The official reader slices arr[:num_bb]: a ground-truth image
		// with fewer boxes gives all of them.
		nbb = rows
	}
	if nbb > rows {
		return nil, d.errorf(fname, "nbb %d exceeds the %d stored regions", nbb, rows)
	}
	im := &Image{Name: fname, NBB: nbb, Dim: dim}
	conv := func(name string, cols int) ([]float32, error) {
		a := arrays[name]
		size, _ := itemSize(a.Dtype)
		a.Data = a.Data[:nbb*cols*size]
		v, err := toFloat32(a)
		if err != nil {
			return nil, d.errorf(fname, "%s: %v", name, err)
		}
		return v, nil
	}
	if im.Features, err = conv("features", dim); err != nil {
		return nil, err
	}
	if im.NormBB, err = conv("norm_bb", 6); err != nil {
		return nil, err
	}
	if slices.Contains(want, "conf") {
		if _, ok := arrays["conf"]; ok {
			if im.Conf, err = conv("conf", 1); err != nil {
				return nil, err
			}
		}
	}
	if slices.Contains(want, "soft_labels") {
		if sl, ok := arrays["soft_labels"]; ok {
			im.NumLabels = sl.Shape[1]
			if im.SoftLabels, err = conv("soft_labels", im.NumLabels); err != nil {
				return nil, err
			}
		}
	}
	return im, nil
}

func (d *ImgDB) checkDim(fname string, dim int) error {
	want := d.dim.Load()
	if want == 0 && d.dim.CompareAndSwap(0, int64(dim)) {
		return nil
	}
	want = d.dim.Load()
	if int64(dim) != want {
		src := "other images in the db"
		if d.opts.ImgDim > 0 {
			src = "--img-dim"
		}
		return d.errorf(fname, "feature size %d, want %d (from %s)", dim, want, src)
	}
	return nil
}

// maxSuggestions is how many names a missing-image error lists.
const maxSuggestions = 3

// closestNames lists, for the error on a name the db lacks, the names it
// holds closest to fname: those equal but for case first (the usual slip,
// COCO_train2014_... for coco_train2014_...), then by edit distance, ties
// in name order. It returns "" when the db lists no names.
func (d *ImgDB) closestNames(fname string) string {
	d.namesOnce.Do(func() {
		names, err := d.Names()
		if err != nil {
			return
		}
		d.names = slices.DeleteFunc(names, func(n string) bool { return n == keysKey })
	})
	if len(d.names) == 0 {
		return ""
	}
	type cand struct {
		name string
		dist int // edit distance ignoring case
	}
	want := []rune(strings.ToLower(fname))
	var best []cand
	for _, n := range d.names {
		// Once the list is full a name needs only its distance bounded by
		// the worst listed, which cuts most rows short.
		bound := math.MaxInt
		if len(best) == maxSuggestions {
			bound = best[maxSuggestions-1].dist + 1
		}
		c := cand{n, editDistance(want, []rune(strings.ToLower(n)), bound)}
		if c.dist >= bound {
			continue
		}
		i, _ := slices.BinarySearchFunc(best, c, func(a, b cand) int {
			if a.dist != b.dist {
				return a.dist - b.dist
			}
			return strings.Compare(a.name, b.name)
		})
		if i < maxSuggestions {
			best = slices.Insert(best, i, c)[:min(len(best)+1, maxSuggestions)]
		}
	}
	quoted := make([]string, len(best))
	for i, c := range best {
		quoted[i] = strconv.Quote(c.name)
	}
	return fmt.Sprintf("; closest of its %d names: %s", len(d.names), strings.Join(quoted, ", "))
}

// editDistance is the Levenshtein distance of a and b, or any value >=
// bound once it is known to reach bound.
func editDistance(a, b []rune, bound int) int {
	if d := len(a) - len(b); d >= bound || -d >= bound {
		return bound
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		rowMin := cur[0]
		for j := 1; j <= len(b); j++ {
			sub := prev[j-1]
			if a[i-1] != b[j-1] {
				sub++
			}
			cur[j] = min(sub, prev[j]+1, cur[j-1]+1)
			rowMin = min(rowMin, cur[j])
		}
		if rowMin >= bound {
			return bound
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Close closes the LMDB environment; no Get may be in flight.
func (d *ImgDB) Close() error { return d.env.Close() }

var (
	f16Once  sync.Once
	f16Table *[1 << 16]float32
)

// f16ToF32 returns the float32 of every fp16 bit pattern; a table lookup
// converts features several times faster than bit manipulation, and an
// array indexed by uint16 needs no bounds checks.
func f16ToF32() *[1 << 16]float32 {
	f16Once.Do(func() {
		t := new([1 << 16]float32)
		for i := range t {
			t[i] = float16.Frombits(uint16(i)).Float32()
		}
		f16Table = t
	})
	return f16Table
}

// toFloat32 converts an array's data to float32.
func toFloat32(a Array) ([]float32, error) {
	switch a.Dtype {
	case "<f2":
		t := f16ToF32()
		out := make([]float32, len(a.Data)/2)
		data := a.Data[:2*len(out)]
		for i := range out {
			out[i] = t[uint16(data[2*i])|uint16(data[2*i+1])<<8]
		}
		return out, nil
	case "<f4":
		out := make([]float32, len(a.Data)/4)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(a.Data[4*i:]))
		}
		return out, nil
	}
	return nil, fmt.Errorf("unsupported dtype %q", a.Dtype)
}

// GroundTruthOptions are how the original opens a ground-truth-box img_db
// (RE and VCR) whatever the config says: conf_th -1 and num_bb 100, the
// feat_numbb100 layout, every stored box up to 100; max_bb and min_bb as
// given.
func GroundTruthOptions(o ImgDBOptions) ImgDBOptions {
	o.ConfTh, o.NumBB = -1, 100
	return o
}
