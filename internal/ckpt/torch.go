package ckpt

import (
	"archive/zip"
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"math/big"
	"os"
	"path"
	"strconv"

	"github.com/nlpodyssey/gopickle/pickle"
	"github.com/nlpodyssey/gopickle/types"
)

// Constants of torch/serialization.py for the legacy format.
const (
	legacyMagic    = "1950a86a20f9469cfc6c"
	legacyProtocol = 1001
)

// ReadTorch reads a state dict written by torch.save: the zip format
// (torch >= 1.6) or the legacy format (pickles followed by raw storages).
//
// The top-level object must be a dict (or OrderedDict) of tensors; if it
// holds no tensors itself but a dict of tensors under "model" or
// "state_dict", that one is used and the rest of the top level (optimizer
// state, options, step counters) is ignored. Entries of the chosen dict
// that are not tensors are listed in Skipped. Every tensor is materialised
// in C order, honouring its size, stride and storage offset; tensors that
// share a storage (tied weights) come out as separate, equal copies. Errors
// name the file and what is wrong with it; corrupt input never panics.
//
// Only the pickle decoding comes from gopickle: its pytorch.Load hangs on an
// empty file, panics on tar and storage-view inputs, trusts declared sizes
// for allocation and can accept a truncated legacy file, so containers and
// storages are read here instead.
func ReadTorch(path string) (*StateDict, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("ckpt %s: %s", path, statProblem(err))
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("ckpt %s: is a directory, not a checkpoint file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ckpt %s: %s", path, statProblem(err))
	}
	defer f.Close()
	sd, err := readTorch(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("ckpt %s: %w", path, err)
	}
	return sd, nil
}

// statProblem phrases an os error without repeating the path the caller
// already prints.
func statProblem(err error) string {
	if errors.Is(err, fs.ErrNotExist) {
		return "file does not exist"
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// readTorch decodes a checkpoint of size bytes held by r.
func readTorch(r io.ReaderAt, size int64) (*StateDict, error) {
	if size == 0 {
		return nil, errors.New("empty file")
	}
	head := make([]byte, min(size, 512))
	if _, err := r.ReadAt(head, 0); err != nil && err != io.EOF {
		return nil, fmt.Errorf("read: %w", err)
	}
	var (
		root any
		err  error
	)
	switch {
	case bytes.HasPrefix(head, []byte("PK\x03\x04")):
		root, err = loadZip(r, size)
	case len(head) >= 262 && string(head[257:262]) == "ustar":
		return nil, errors.New("tar-format checkpoint (torch < 0.1.10) is not supported")
	case head[0] == 0x80:
		root, err = loadLegacy(r, size)
	default:
		return nil, fmt.Errorf("not a PyTorch checkpoint (file starts with %q)", head[:min(len(head), 8)])
	}
	if err != nil {
		return nil, err
	}
	return buildStateDict(root)
}

// loadZip reads the zip format: <dir>/data.pkl holds the pickled object and
// <dir>/data/<key> the raw little-endian bytes of each storage.
func loadZip(r io.ReaderAt, size int64) (any, error) {
	zr, err := zip.NewReader(r, size)
	if err != nil {
		return nil, fmt.Errorf("truncated or corrupt zip archive: %v", err)
	}
	records := make(map[string]*zip.File, len(zr.File))
	var pkl *zip.File
	for _, f := range zr.File {
		if _, dup := records[f.Name]; dup {
			return nil, fmt.Errorf("zip archive holds %s twice", f.Name)
		}
		records[f.Name] = f
		if path.Base(f.Name) == "data.pkl" && path.Dir(path.Dir(f.Name)) == "." && path.Dir(f.Name) != "." {
			if pkl != nil {
				return nil, errors.New("zip archive holds more than one data.pkl")
			}
			pkl = f
		}
	}
	if pkl == nil {
		return nil, errors.New("zip archive has no <name>/data.pkl record: not written by torch.save")
	}
	prefix := path.Dir(pkl.Name) + "/"
	if _, ok := records[prefix+"constants.pkl"]; ok {
		return nil, errors.New("TorchScript archive (torch.jit.save), not a state dict")
	}
	if bo, ok := records[prefix+"byteorder"]; ok {
		order, err := readRecord(bo, size)
		if err != nil {
			return nil, err
		}
		if string(order) != "little" {
			return nil, fmt.Errorf("byte order %q is not supported", clip(string(order)))
		}
	}
	data, err := readRecord(pkl, size)
	if err != nil {
		return nil, err
	}
	ss := &storageSet{byKey: map[string]*storage{}}
	root, err := unpickle(data, ss)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", pkl.Name, err)
	}
	for _, st := range ss.list {
		name := prefix + "data/" + st.key
		f := records[name]
		st.load = func() ([]byte, error) {
			if f == nil {
				return nil, fmt.Errorf("storage %q: record %s is missing from the archive", st.key, name)
			}
			if want := uint64(st.numel) * uint64(st.dt.size); f.UncompressedSize64 != want {
				return nil, fmt.Errorf("storage %q: record %s holds %d bytes, %d %s elements need %d",
					st.key, name, f.UncompressedSize64, st.numel, st.dt.name, want)
			}
			return readRecord(f, size)
		}
	}
	return root, nil
}

// readRecord returns the contents of one zip record, checked against its
// CRC-32, refusing sizes the archive cannot hold before allocating.
func readRecord(f *zip.File, archiveSize int64) ([]byte, error) {
	limit := uint64(archiveSize)
	if f.Method != zip.Store {
		// Deflate expands by at most about 1032x.
		limit = min(limit, math.MaxUint64/1100) * 1100
	}
	if f.UncompressedSize64 > limit {
		return nil, fmt.Errorf("record %s: declared size %d cannot fit in a %d-byte archive", f.Name, f.UncompressedSize64, archiveSize)
	}
	rc, err := f.Open()
	if err != nil {
		return nil, fmt.Errorf("record %s: %v", f.Name, err)
	}
	defer rc.Close()
	buf := make([]byte, f.UncompressedSize64)
	if _, err := io.ReadFull(rc, buf); err != nil {
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			return nil, fmt.Errorf("record %s: truncated", f.Name)
		}
		return nil, fmt.Errorf("record %s: %v", f.Name, err)
	}
	// archive/zip verifies the CRC only when a read reaches the end.
	var one [1]byte
	if n, err := rc.Read(one[:]); n != 0 || err != io.EOF {
		if err == nil || err == io.EOF {
			return nil, fmt.Errorf("record %s: longer than declared", f.Name)
		}
		return nil, fmt.Errorf("record %s: %v", f.Name, err)
	}
	return buf, nil
}

// loadLegacy reads the pre-1.6 format: pickles of the magic number, the
// protocol version, the system info, the object itself and the sorted
// storage keys, then for each key an 8-byte element count and the raw
// little-endian elements.
func loadLegacy(r io.ReaderAt, size int64) (any, error) {
	var off int64
	next := func(ss *storageSet, what string) (any, error) {
		n, err := pickleLen(bufio.NewReader(io.NewSectionReader(r, off, size-off)), size-off)
		if err != nil {
			return nil, fmt.Errorf("%s at byte %d: %w", what, off, err)
		}
		buf := make([]byte, n)
		if _, err := r.ReadAt(buf, off); err != nil {
			return nil, fmt.Errorf("%s at byte %d: %v", what, off, err)
		}
		v, err := unpickle(buf, ss)
		if err != nil {
			return nil, fmt.Errorf("%s at byte %d: %w", what, off, err)
		}
		off += n
		return v, nil
	}
	magic, err := next(nil, "magic number")
	if err != nil {
		return nil, err
	}
	if m, ok := magic.(*big.Int); !ok || m.Text(16) != legacyMagic {
		return nil, errors.New("not a PyTorch checkpoint (bad magic number)")
	}
	proto, err := next(nil, "protocol version")
	if err != nil {
		return nil, err
	}
	if p, ok := proto.(int); !ok || p != legacyProtocol {
		return nil, fmt.Errorf("unsupported legacy protocol version (want %d)", legacyProtocol)
	}
	sysInfo, err := next(nil, "system info")
	if err != nil {
		return nil, err
	}
	if entries, ok := dictEntries(sysInfo); ok {
		for _, e := range entries {
			if e.key == "little_endian" && e.value == false {
				return nil, errors.New("big-endian checkpoint is not supported")
			}
		}
	}
	ss := &storageSet{legacy: true, byKey: map[string]*storage{}}
	root, err := next(ss, "object pickle")
	if err != nil {
		return nil, err
	}
	keyList, err := next(nil, "storage key list")
	if err != nil {
		return nil, err
	}
	keys, ok := keyList.(*types.List)
	if !ok {
		return nil, fmt.Errorf("storage key list is %s, not a list", describe(keyList))
	}
	for _, k := range *keys {
		key, ok := k.(string)
		if !ok {
			return nil, fmt.Errorf("storage key list holds %s, not a string", describe(k))
		}
		st, ok := ss.byKey[key]
		if !ok {
			return nil, fmt.Errorf("storage %q has data but no tensor refers to it", key)
		}
		if st.load != nil {
			return nil, fmt.Errorf("storage %q is listed twice", key)
		}
		if size-off < 8 {
			return nil, fmt.Errorf("truncated file: storage %q header at byte %d is past the end (%d bytes)", key, off, size)
		}
		var hdr [8]byte
		if _, err := r.ReadAt(hdr[:], off); err != nil {
			return nil, fmt.Errorf("storage %q header at byte %d: %v", key, off, err)
		}
		if n := binary.LittleEndian.Uint64(hdr[:]); n != uint64(st.numel) {
			return nil, fmt.Errorf("storage %q: data header at byte %d says %d elements, pickle says %d", key, off, n, st.numel)
		}
		start, nbytes := off+8, int64(st.numel)*int64(st.dt.size)
		if nbytes > size-start {
			return nil, fmt.Errorf("truncated file: storage %q needs %d bytes at byte %d, file has %d", key, nbytes, start, size)
		}
		st.load = func() ([]byte, error) {
			buf := make([]byte, nbytes)
			if _, err := r.ReadAt(buf, start); err != nil {
				return nil, fmt.Errorf("storage %q at byte %d: %v", key, start, err)
			}
			return buf, nil
		}
		off = start + nbytes
	}
	return root, nil
}

// unpickle decodes one pickle. gopickle panics on some malformed input
// (unhashable dict keys, bad stack shapes), so panics become errors here.
func unpickle(data []byte, ss *storageSet) (v any, err error) {
	if _, err := pickleLen(bufio.NewReader(bytes.NewReader(data)), int64(len(data))); err != nil {
		return nil, err
	}
	u := pickle.NewUnpickler(bytes.NewReader(data))
	u.FindClass = findClass
	if ss != nil {
		u.PersistentLoad = ss.persistentLoad
	}
	defer func() {
		if p := recover(); p != nil {
			v, err = nil, fmt.Errorf("corrupt pickle: %s", clip(fmt.Sprint(p)))
		}
	}()
	v, err = u.Load()
	if err != nil {
		return nil, fmt.Errorf("unpickling: %s", clip(err.Error()))
	}
	return v, nil
}

// torchStorages maps torch.<Name>Storage classes to element types.
var torchStorages = map[string]*dtype{
	"HalfStorage":     dtFloat16,
	"BFloat16Storage": dtBFloat16,
	"FloatStorage":    dtFloat32,
	"DoubleStorage":   dtFloat64,
	"LongStorage":     dtInt64,
	"IntStorage":      dtInt32,
	"ShortStorage":    dtInt16,
	"CharStorage":     dtInt8,
	"ByteStorage":     dtUint8,
	"BoolStorage":     dtBool,
}

// findClass resolves the globals a pickle names. Anything a state dict does
// not need becomes an opaque pyClass, so that checkpoints carrying extra
// Python objects (argparse options, numpy scalars) still load.
func findClass(module, name string) (any, error) {
	switch module + "." + name {
	case "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2":
		return rebuildTensor{}, nil
	case "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state":
		return rebuildParameter{}, nil
	}
	if module == "torch" {
		if dt, ok := torchStorages[name]; ok {
			return &storageClass{dt: dt}, nil
		}
	}
	return &pyClass{name: module + "." + name}, nil
}

// storageClass is a torch.<Type>Storage global as named in a persistent id.
type storageClass struct{ dt *dtype }

// pyClass is a Python class or function the reader does not interpret.
type pyClass struct{ name string }

// Call implements types.Callable (REDUCE).
func (c *pyClass) Call(...any) (any, error) { return &pyObject{class: c.name}, nil }

// PyNew implements types.PyNewable (NEWOBJ).
func (c *pyClass) PyNew(...any) (any, error) { return &pyObject{class: c.name}, nil }

// pyObject is an instance of a pyClass; its state is dropped.
type pyObject struct{ class string }

// PySetState implements types.PyStateSettable (BUILD).
func (*pyObject) PySetState(any) error { return nil }

// storage is one typed storage of the checkpoint. Its bytes are read only
// when a tensor needs them and dropped after its last tensor is built, so
// peak memory stays near the size of the converted output.
type storage struct {
	key   string
	dt    *dtype
	numel int
	load  func() ([]byte, error) // set by the container reader; nil: no data in the file
	data  []byte
	users int // tensors still to be materialised from this storage
}

func (s *storage) bytes() ([]byte, error) {
	if s.data != nil {
		return s.data, nil
	}
	if s.load == nil {
		return nil, fmt.Errorf("storage %q has no data in the file", s.key)
	}
	b, err := s.load()
	if err != nil {
		return nil, err
	}
	s.data = b
	return b, nil
}

func (s *storage) release() {
	s.users--
	if s.users <= 0 {
		s.data = nil
	}
}

// storageSet collects the storages a pickle refers to by persistent id.
type storageSet struct {
	legacy bool
	byKey  map[string]*storage
	list   []*storage
}

// persistentLoad resolves ('storage', class, key, location, numel) ids, with
// a sixth view-metadata element in the legacy format.
func (ss *storageSet) persistentLoad(pid any) (any, error) {
	t, ok := pid.(*types.Tuple)
	if !ok || t.Len() < 5 {
		return nil, fmt.Errorf("persistent id is %s, not a storage tuple", describe(pid))
	}
	if kind, _ := t.Get(0).(string); kind != "storage" {
		return nil, fmt.Errorf("persistent id of kind %s, not storage", describe(t.Get(0)))
	}
	cls, ok := t.Get(1).(*storageClass)
	if !ok {
		return nil, fmt.Errorf("unsupported storage type %s", describe(t.Get(1)))
	}
	key, ok := t.Get(2).(string)
	if !ok {
		return nil, fmt.Errorf("storage key is %s, not a string", describe(t.Get(2)))
	}
	numel, ok := t.Get(4).(int)
	if !ok || numel < 0 || numel > math.MaxInt64/8 {
		return nil, fmt.Errorf("storage %q: invalid element count %s", key, describe(t.Get(4)))
	}
	if ss.legacy && t.Len() > 5 && t.Get(5) != nil {
		return nil, fmt.Errorf("storage %q: storage views (torch < 0.4) are not supported", key)
	}
	if st, ok := ss.byKey[key]; ok {
		if st.dt != cls.dt || st.numel != numel {
			return nil, fmt.Errorf("storage %q declared twice with different types or sizes", key)
		}
		return st, nil
	}
	st := &storage{key: key, dt: cls.dt, numel: numel}
	ss.byKey[key] = st
	ss.list = append(ss.list, st)
	return st, nil
}

// rebuildTensor is torch._utils._rebuild_tensor(_v2): (storage,
// storage_offset, size, stride, ...); the requires_grad, backward hooks
// and metadata arguments do not affect the values.
type rebuildTensor struct{}

// Call implements types.Callable.
func (rebuildTensor) Call(args ...any) (any, error) {
	if len(args) < 4 {
		return nil, fmt.Errorf("_rebuild_tensor: %d arguments, want at least 4", len(args))
	}
	st, ok := args[0].(*storage)
	if !ok {
		return nil, fmt.Errorf("_rebuild_tensor: storage argument is %s", describe(args[0]))
	}
	off, ok := args[1].(int)
	if !ok {
		return nil, fmt.Errorf("_rebuild_tensor: storage offset is %s", describe(args[1]))
	}
	size, err := intTuple(args[2], "size")
	if err != nil {
		return nil, err
	}
	stride, err := intTuple(args[3], "stride")
	if err != nil {
		return nil, err
	}
	return &tensorView{st: st, offset: off, size: size, stride: stride}, nil
}

// rebuildParameter is torch._utils._rebuild_parameter(_with_state): an
// nn.Parameter wrapping the tensor in its first argument.
type rebuildParameter struct{}

// Call implements types.Callable.
func (rebuildParameter) Call(args ...any) (any, error) {
	if len(args) < 1 {
		return nil, errors.New("_rebuild_parameter: no arguments")
	}
	tv, ok := args[0].(*tensorView)
	if !ok {
		return nil, fmt.Errorf("_rebuild_parameter: data is %s, not a tensor", describe(args[0]))
	}
	return tv, nil
}

func intTuple(v any, what string) ([]int, error) {
	t, ok := v.(*types.Tuple)
	if !ok {
		return nil, fmt.Errorf("_rebuild_tensor: %s is %s, not a tuple", what, describe(v))
	}
	out := make([]int, t.Len())
	for i := range out {
		n, ok := t.Get(i).(int)
		if !ok {
			return nil, fmt.Errorf("_rebuild_tensor: %s holds %s, not an int", what, describe(t.Get(i)))
		}
		out[i] = n
	}
	return out, nil
}

type dictEntry struct{ key, value any }

// dictEntries lists a pickled dict or OrderedDict in insertion order.
func dictEntries(v any) ([]dictEntry, bool) {
	switch d := v.(type) {
	case *types.Dict:
		out := make([]dictEntry, len(*d))
		for i, e := range *d {
			out[i] = dictEntry{e.Key, e.Value}
		}
		return out, true
	case *types.OrderedDict:
		out := make([]dictEntry, 0, d.Len())
		for e := d.List.Front(); e != nil; e = e.Next() {
			oe := e.Value.(*types.OrderedDictEntry)
			out = append(out, dictEntry{oe.Key, oe.Value})
		}
		return out, true
	}
	return nil, false
}

func hasTensor(entries []dictEntry) bool {
	for _, e := range entries {
		if _, ok := e.value.(*tensorView); ok {
			return true
		}
	}
	return false
}

// stateDictEntries picks the dict holding the tensors: the top level, or a
// training checkpoint's "model" or "state_dict" entry.
func stateDictEntries(root any) ([]dictEntry, error) {
	entries, ok := dictEntries(root)
	if !ok {
		return nil, fmt.Errorf("top-level object is %s, not a dict of tensors", describe(root))
	}
	if hasTensor(entries) {
		return entries, nil
	}
	for _, name := range []string{"model", "state_dict"} {
		for _, e := range entries {
			if e.key != name {
				continue
			}
			if sub, ok := dictEntries(e.value); ok && hasTensor(sub) {
				return sub, nil
			}
		}
	}
	return nil, errors.New(`no tensors at the top level or under "model" or "state_dict"`)
}

func buildStateDict(root any) (*StateDict, error) {
	entries, err := stateDictEntries(root)
	if err != nil {
		return nil, err
	}
	sd := &StateDict{Tensors: make(map[string]*Tensor)}
	views := make(map[string]*tensorView)
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		key, ok := e.key.(string)
		if !ok {
			sd.Skipped = append(sd.Skipped, describeKey(e.key))
			continue
		}
		if seen[key] {
			return nil, fmt.Errorf("key %q appears twice", key)
		}
		seen[key] = true
		tv, ok := e.value.(*tensorView)
		if !ok {
			sd.Skipped = append(sd.Skipped, key)
			continue
		}
		sd.Keys = append(sd.Keys, key)
		views[key] = tv
		tv.st.users++
	}
	for _, key := range sd.Keys {
		t, err := views[key].materialise()
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", key, err)
		}
		sd.Tensors[key] = t
	}
	return sd, nil
}

// describe names the kind of a decoded pickle value for error messages
// without printing it: values may be huge or self-referencing.
func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case *pyObject:
		return "a " + clip(x.class) + " object"
	case *pyClass:
		return clip(x.name)
	case *tensorView:
		return "a tensor"
	case string:
		return strconv.Quote(clip(x))
	case int, bool, float64:
		return fmt.Sprint(x)
	case *big.Int:
		return "a big integer"
	case *types.Dict, *types.OrderedDict:
		return "a dict"
	case *types.List:
		return "a list"
	case *types.Tuple:
		return "a tuple"
	}
	return fmt.Sprintf("a %T", v)
}

// describeKey renders a non-string dict key for StateDict.Skipped.
func describeKey(k any) string {
	switch k.(type) {
	case int, bool, float64:
		return fmt.Sprint(k)
	}
	return "<" + describe(k) + ">"
}
