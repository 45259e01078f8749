package db

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/x448/float16"

	"uniter/internal/lmdb"
)

// RawImage is one image's detector output in fp16, as the BUTD extractor
// writes it: N regions sorted by confidence.
type RawImage struct {
	// N is the number of regions, D the feature size, L the number of
	// soft-label classes (0 when SoftLabels is nil).
	N, D, L int
	// Features is [N, D] row-major.
	Features []float16.Float16
	// NormBB is [N, 6]: x1, y1, x2, y2, w, h normalised by image size.
	NormBB []float16.Float16
	// Conf is [N] detection confidences.
	Conf []float16.Float16
	// SoftLabels is [N, L], or nil.
	SoftLabels []float16.Float16

	// rawConf holds the confidences as the detector wrote them (often
	// float32) when read by ReadRawNpz; nbb is counted on them.
	rawConf Array
}

func (r *RawImage) validate() error {
	if r.N <= 0 || r.D <= 0 {
		return fmt.Errorf("need at least one region and feature, got N=%d D=%d", r.N, r.D)
	}
	for _, c := range []struct {
		name string
		got  int
		want int
	}{{"features", len(r.Features), r.N * r.D}, {"norm_bb", len(r.NormBB), r.N * 6}, {"conf", len(r.Conf), r.N}, {"soft_labels", len(r.SoftLabels), r.N * r.L}} {
		if c.got != c.want {
			return fmt.Errorf("%s has %d values, want %d (N=%d D=%d L=%d)", c.name, c.got, c.want, r.N, r.D, r.L)
		}
	}
	return nil
}

// f16Array packs the first rows of a [*, cols] fp16 matrix into an Array.
func f16Array(v []float16.Float16, rows, cols int) Array {
	data := make([]byte, 2*rows*cols)
	for i := range rows * cols {
		binary.LittleEndian.PutUint16(data[2*i:], v[i].Bits())
	}
	return Array{Dtype: "<f2", Shape: []int{rows, cols}, Data: data}
}

// ImgWriter builds an img_db. It is not safe for concurrent use. The db is
// written to a hidden temporary directory beside its final place and
// moved there by Close, so a build that fails, or is abandoned with Abort,
// leaves nothing that looks like a db: when dir is absent or empty the
// whole of dir (LMDB and nbb json) is staged and appears in one rename;
// when dir already holds other layouts only the new LMDB sub-directory is
// staged, and the nbb json follows it.
type ImgWriter struct {
	dir        string
	path       string
	stage      string // the hidden directory being built
	final      string // where Close moves stage: dir or path
	opts       ImgDBOptions
	layout     layoutKind
	compressed bool
	env        *lmdb.Env
	names      []string
	name2nbb   map[string]int
	closed     bool
}

// CreateImgDB creates an img_db in dir with the layout opts select, storing
// what the official convert_imgdir.py stores: in
// feat_th{conf}_max{max}_min{min} the first nbb = min(max_bb, max(min_bb,
// #(conf > conf_th))) regions (every region of an image with fewer), plus
// the nbb json; with ConfTh -1 the same rule (every region up to MaxBB)
// in feat_numbb{NumBB}, where NumBB only names the directory and no nbb
// json is written; with KeepAll every region in "all". Compressed dbs get
// npz values and the "_compressed" suffix. The LMDB sub-directory must not
// exist yet, or be empty.
func CreateImgDB(dir string, opts ImgDBOptions, compressed bool) (*ImgWriter, error) {
	w := &ImgWriter{dir: dir, opts: opts, layout: opts.writeLayout(), compressed: compressed, name2nbb: map[string]int{}}
	sub := opts.layoutName(w.layout)
	if compressed {
		sub += "_compressed"
	}
	w.path = filepath.Join(dir, sub)
	envDir := ""
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		// dir holds other layouts (the official img_dbs keep several side
		// by side): stage only the new sub-directory, which must be free.
		w.final = w.path
		if w.stage, err = StageDir(w.path); err != nil {
			return nil, fmt.Errorf("img_db %w", err)
		}
		envDir = w.stage
	} else {
		// A failed build then leaves not even an empty dir behind.
		w.final = dir
		if w.stage, err = StageDir(dir); err != nil {
			return nil, fmt.Errorf("img_db %w", err)
		}
		envDir = filepath.Join(w.stage, sub)
	}
	env, err := lmdb.Create(envDir, lmdb.Options{})
	if err != nil {
		os.RemoveAll(w.stage)
		return nil, fmt.Errorf("img_db %s: %w", dir, err)
	}
	w.env = env
	return w, nil
}

// StageDir prepares building a db directory at final without ever showing
// a partial one there: it creates final's parent if needed and returns a
// new hidden, world-readable directory beside final to build in, which
// CommitDir then moves to final. final must not exist, or be an empty
// directory. Errors start with final.
func StageDir(final string) (string, error) {
	// Without Clean "out/" would split into parent "out/" and base "",
	// staging inside final instead of beside it.
	final = filepath.Clean(final)
	if ents, err := os.ReadDir(final); err == nil && len(ents) > 0 {
		return "", fmt.Errorf("%s: already exists and is not empty (remove it to rebuild)", final)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("%s: %w", final, err)
	}
	parent, base := filepath.Split(final)
	if parent == "" {
		parent = "."
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", fmt.Errorf("%s: %w", final, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+base+".tmp-")
	if err != nil {
		return "", fmt.Errorf("%s: %w", final, err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("%s: %w", final, err)
	}
	return tmp, nil
}

// CommitDir moves the directory tmp that StageDir returned to final; on
// error tmp is left for the caller to remove. Errors start with final.
func CommitDir(tmp, final string) error {
	final = filepath.Clean(final)
	// os.Rename refuses to replace a directory, even an empty one; Remove
	// deletes only an empty one, which StageDir allowed.
	if err := os.Remove(final); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: %w", final, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("%s: %w", final, err)
	}
	return nil
}

// Path returns the LMDB sub-directory being written.
func (w *ImgWriter) Path() string { return w.path }

// Put stores image fname, keeping the regions the layout asks for, and
// returns how many it stored: the nbb for feat_th and feat_numbb, every
// region for "all".
func (w *ImgWriter) Put(fname string, raw RawImage) (int, error) {
	errorf := func(format string, args ...any) error {
		return fmt.Errorf("img_db %s: key %q: %s", w.path, fname, fmt.Sprintf(format, args...))
	}
	if w.closed {
		return 0, errorf("writer closed")
	}
	if fname == "" || fname == keysKey {
		return 0, errorf("not an image name")
	}
	if _, dup := w.name2nbb[fname]; dup {
		return 0, errorf("duplicate image name")
	}
	if err := raw.validate(); err != nil {
		return 0, errorf("%v", err)
	}
	if w.opts.ImgDim > 0 && raw.D != w.opts.ImgDim {
		return 0, errorf("feature size %d, want %d", raw.D, w.opts.ImgDim)
	}
	conf := f16Array(raw.Conf, raw.N, 1)
	if raw.rawConf.Dtype != "" {
		conf = raw.rawConf
	}
	nbb := raw.N
	if w.layout != layoutAll {
		// The official converter counts conf > conf_th for feat_numbb too
		// (conf_th -1 counts every region) and stores arr[:nbb], which is
		// every row when the image has fewer; record what is stored.
		n, err := CountNBB(conf, w.opts)
		if err != nil {
			return 0, errorf("conf: %v", err)
		}
		nbb = min(n, raw.N)
	}
	arrays := map[string]Array{
		"norm_bb":  f16Array(raw.NormBB, nbb, 6),
		"features": f16Array(raw.Features, nbb, raw.D),
		"conf":     f16Array(raw.Conf, nbb, 1),
	}
	if raw.SoftLabels != nil {
		arrays["soft_labels"] = f16Array(raw.SoftLabels, nbb, raw.L)
	}
	val, err := EncodeImgValue(arrays, w.compressed)
	if err != nil {
		return 0, errorf("%v", err)
	}
	if err := w.env.Put([]byte(fname), val); err != nil {
		return 0, fmt.Errorf("img_db %s: %w", w.dir, err)
	}
	w.names = append(w.names, fname)
	w.name2nbb[fname] = nbb
	return nbb, nil
}

// Close stores __keys__ (every name, in put order), commits and closes the
// LMDB environment (LMDB must not be open across the rename), writes the
// nbb json for the feat_th layout and moves the db into place. On error
// nothing is left at Path, nor at dir when Create found it absent or
// empty. The "all" layout gets no nbb json: the official reader takes its
// presence to mean a feat_th sub-directory exists.
func (w *ImgWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	if err := w.commit(); err != nil {
		os.RemoveAll(w.stage)
		return err
	}
	if w.layout == layoutTh && w.final == w.path {
		if err := writeJSONAtomic(filepath.Join(w.dir, w.opts.NBBFile()), w.name2nbb); err != nil {
			os.RemoveAll(w.path)
			return fmt.Errorf("img_db %s: %w", w.dir, err)
		}
	}
	return nil
}

func (w *ImgWriter) commit() error {
	keys, err := json.Marshal(append([]string{}, w.names...))
	if err != nil {
		w.env.Close()
		return fmt.Errorf("img_db %s: %w", w.path, err)
	}
	if err := w.env.Put([]byte(keysKey), keys); err != nil {
		w.env.Close()
		return fmt.Errorf("img_db %s: %w", w.path, err)
	}
	if err := w.env.Close(); err != nil {
		return fmt.Errorf("img_db %s: %w", w.path, err)
	}
	if w.layout == layoutTh && w.final == w.dir {
		// Staged with the LMDB, so both appear in the one rename.
		if err := writeJSONAtomic(filepath.Join(w.stage, w.opts.NBBFile()), w.name2nbb); err != nil {
			return fmt.Errorf("img_db %s: %w", w.dir, err)
		}
	}
	if err := CommitDir(w.stage, w.final); err != nil {
		return fmt.Errorf("img_db %w", err)
	}
	return nil
}

// Abort abandons the db: the images put so far are discarded and nothing
// is left at Path. Close after Abort does nothing.
func (w *ImgWriter) Abort() {
	if w.closed {
		return
	}
	w.closed = true
	w.env.Close()
	os.RemoveAll(w.stage)
}
