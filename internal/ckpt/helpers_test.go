package ckpt

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// expectedTensor is one tensor as scripts/make_pt_fixtures.py recorded it.
type expectedTensor struct {
	DType     string   `json:"dtype"`
	Shape     []int    `json:"shape"`
	FloatBits []uint32 `json:"float_bits"`
	Int       []int64  `json:"int"`
}

type expectedFile struct {
	Keys    []string                   `json:"keys"`
	Skipped []string                   `json:"skipped"`
	Tensors map[string]*expectedTensor `json:"tensors"`
}

func loadExpected(t testing.TB) map[string]*expectedFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]*expectedFile
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// fixtureNames lists the .pt fixtures, sorted.
func fixtureNames(t testing.TB) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join("testdata", "*.pt"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for i, n := range names {
		names[i] = filepath.Base(n)
	}
	return names
}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sameFloat compares bit patterns, treating any two NaNs as equal: the
// payload of a NaN after conversion is not part of the contract.
func sameFloat(a, b float32) bool {
	return math.Float32bits(a) == math.Float32bits(b) || (a != a && b != b)
}

func compareTensor(t *testing.T, key string, got *Tensor, want *expectedTensor) {
	t.Helper()
	if got.DType != want.DType {
		t.Errorf("%s: dtype %q, want %q", key, got.DType, want.DType)
	}
	if fmt.Sprint(got.Shape) != fmt.Sprint(want.Shape) || got.Shape == nil {
		t.Errorf("%s: shape %v, want %v", key, got.Shape, want.Shape)
	}
	if want.FloatBits != nil {
		if got.Int != nil || len(got.Float) != len(want.FloatBits) {
			t.Fatalf("%s: %d floats (ints %v), want %d floats", key, len(got.Float), got.Int != nil, len(want.FloatBits))
		}
		for i, bits := range want.FloatBits {
			if w := math.Float32frombits(bits); !sameFloat(got.Float[i], w) {
				t.Fatalf("%s[%d] = %v (0x%08x), want %v (0x%08x)", key, i, got.Float[i], math.Float32bits(got.Float[i]), w, bits)
			}
		}
		return
	}
	if got.Float != nil || len(got.Int) != len(want.Int) {
		t.Fatalf("%s: %d ints (floats %v), want %d ints", key, len(got.Int), got.Float != nil, len(want.Int))
	}
	for i, v := range want.Int {
		if got.Int[i] != v {
			t.Fatalf("%s[%d] = %d, want %d", key, i, got.Int[i], v)
		}
	}
}

// checkInvariants verifies what every successful read must guarantee,
// whatever the input was.
func checkInvariants(t testing.TB, sd *StateDict) {
	t.Helper()
	if len(sd.Keys) != len(sd.Tensors) {
		t.Fatalf("%d keys but %d tensors", len(sd.Keys), len(sd.Tensors))
	}
	for _, k := range sd.Keys {
		tn := sd.Tensors[k]
		if tn == nil {
			t.Fatalf("key %q has no tensor", k)
		}
		n := 1
		for _, d := range tn.Shape {
			if d < 0 {
				t.Fatalf("key %q: negative dim in %v", k, tn.Shape)
			}
			n *= d
		}
		if floatDTypes[tn.DType] {
			if len(tn.Float) != n || tn.Int != nil {
				t.Fatalf("key %q: %s shape %v with %d floats", k, tn.DType, tn.Shape, len(tn.Float))
			}
		} else if len(tn.Int) != n || tn.Float != nil {
			t.Fatalf("key %q: %s shape %v with %d ints", k, tn.DType, tn.Shape, len(tn.Int))
		}
	}
}

// sameStateDict reports whether a and b hold the same keys, dtypes, shapes
// and bit-identical values.
func sameStateDict(a, b *StateDict) bool {
	if !slices.Equal(a.Keys, b.Keys) || !slices.Equal(a.Skipped, b.Skipped) {
		return false
	}
	for _, k := range a.Keys {
		x, y := a.Tensors[k], b.Tensors[k]
		if x.DType != y.DType || !slices.Equal(x.Shape, y.Shape) || !slices.Equal(x.Int, y.Int) || len(x.Float) != len(y.Float) {
			return false
		}
		for i := range x.Float {
			if math.Float32bits(x.Float[i]) != math.Float32bits(y.Float[i]) {
				return false
			}
		}
	}
	return true
}

// pk writes pickle protocol 2 opcodes, enough to forge checkpoints that
// torch would never write.
type pk struct{ bytes.Buffer }

func newPickle() *pk {
	p := &pk{}
	p.Write([]byte{0x80, 2})
	return p
}

func (p *pk) op(ops ...byte) *pk { p.Write(ops); return p }

func (p *pk) global(module, name string) *pk {
	p.WriteString("c" + module + "\n" + name + "\n")
	return p
}

func (p *pk) str(s string) *pk {
	p.WriteByte('X')
	binary.Write(&p.Buffer, binary.LittleEndian, uint32(len(s)))
	p.WriteString(s)
	return p
}

func (p *pk) int(n int) *pk {
	fmt.Fprintf(&p.Buffer, "I%d\n", n)
	return p
}

func (p *pk) ints(ns ...int) *pk {
	p.op('(')
	for _, n := range ns {
		p.int(n)
	}
	return p.op('t')
}

// fakeTensor describes one forged tensor entry.
type fakeTensor struct {
	key     string
	class   string // torch storage class, e.g. "HalfStorage"
	storage string // storage key
	numel   int
	offset  int
	size    []int
	stride  []int
}

// tensor pickles a _rebuild_tensor_v2 call; legacy adds the sixth
// (view metadata) element of the persistent id.
func (p *pk) tensor(ft fakeTensor, legacy bool) *pk {
	p.global("torch._utils", "_rebuild_tensor_v2").op('(')
	p.op('(').str("storage").global("torch", ft.class).str(ft.storage).str("cpu").int(ft.numel)
	if legacy {
		p.op('N')
	}
	p.op('t', 'Q')
	p.int(ft.offset).ints(ft.size...).ints(ft.stride...)
	p.op(0x89).global("collections", "OrderedDict").op(')', 'R')
	return p.op('t', 'R')
}

// stateDict pickles an OrderedDict of the given tensors.
func stateDictPickle(tensors []fakeTensor, legacy bool) []byte {
	p := newPickle()
	p.global("collections", "OrderedDict").op(')', 'R', '(')
	for _, ft := range tensors {
		p.str(ft.key).tensor(ft, legacy)
	}
	p.op('u', '.')
	return p.Bytes()
}

type record struct {
	name string
	data []byte
}

// zipArchive builds a zip with stored (uncompressed) records, as torch does.
func zipArchive(t testing.TB, records ...record) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, r := range records {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: r.name, Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		w.Write(r.data)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// zipCheckpoint forges a zip-format checkpoint whose storages hold
// numel*elemSize zero bytes each.
func zipCheckpoint(t testing.TB, tensors []fakeTensor, elemSize int) []byte {
	t.Helper()
	recs := []record{{"archive/data.pkl", stateDictPickle(tensors, false)}}
	seen := map[string]bool{}
	for _, ft := range tensors {
		if !seen[ft.storage] {
			seen[ft.storage] = true
			recs = append(recs, record{"archive/data/" + ft.storage, make([]byte, ft.numel*elemSize)})
		}
	}
	recs = append(recs, record{"archive/version", []byte("3\n")})
	return zipArchive(t, recs...)
}

// legacyCheckpoint forges a legacy-format checkpoint; data gives each
// storage's element count header and raw bytes.
func legacyCheckpoint(tensors []fakeTensor, keys []string, headers []uint64, data [][]byte) []byte {
	var b bytes.Buffer
	b.Write([]byte{0x80, 2, 0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, '.'})
	b.Write(newPickle().int(legacyProtocol).op('.').Bytes())
	b.Write(newPickle().op('}', '(').str("little_endian").op(0x88, 'u', '.').Bytes())
	b.Write(stateDictPickle(tensors, true))
	p := newPickle().op('(')
	for _, k := range keys {
		p.str(k)
	}
	b.Write(p.op('l', '.').Bytes())
	for i := range headers {
		binary.Write(&b, binary.LittleEndian, headers[i])
		b.Write(data[i])
	}
	return b.Bytes()
}

// safetensorsBytes forges a safetensors file: header, then dataLen zero bytes.
func safetensorsBytes(header string, dataLen int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(b, header...), make([]byte, dataLen)...)
}

func writeTemp(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not contain %q", err, p)
		}
	}
}
