package ckpt

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestReadTorchFixtures(t *testing.T) {
	expected := loadExpected(t)
	names := fixtureNames(t)
	if len(names) != len(expected) {
		t.Fatalf("%d fixtures but expected.json describes %d: rerun scripts/make_pt_fixtures.py", len(names), len(expected))
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			want := expected[name]
			if want == nil {
				t.Fatalf("expected.json has no entry for %s", name)
			}
			sd, err := ReadTorch(filepath.Join("testdata", name))
			if err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, sd)
			if !slices.Equal(sd.Keys, want.Keys) {
				t.Errorf("keys %q, want %q", sd.Keys, want.Keys)
			}
			if !slices.Equal(sd.Skipped, want.Skipped) {
				t.Errorf("skipped %q, want %q", sd.Skipped, want.Skipped)
			}
			for _, k := range want.Keys {
				compareTensor(t, k, sd.Tensors[k], want.Tensors[k])
			}
		})
	}
}

func TestReadTorchTiedWeights(t *testing.T) {
	ties := [][2]string{
		{"uniter.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"},
		{"uniter.img_embeddings.img_linear.weight", "feat_regress.weight"},
	}
	for _, name := range []string{"official_layout_fp16.pt", "legacy_fp32.pt", "bert_prefix_fp16.pt"} {
		sd, err := ReadTorch(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		prefix := "uniter."
		if strings.HasPrefix(name, "bert") {
			prefix = "bert."
		}
		for _, tie := range ties {
			a := sd.Tensors[strings.Replace(tie[0], "uniter.", prefix, 1)]
			b := sd.Tensors[tie[1]]
			if a == nil || b == nil {
				t.Fatalf("%s: tie %v missing", name, tie)
			}
			if !slices.Equal(a.Shape, b.Shape) || !slices.Equal(a.Float, b.Float) {
				t.Errorf("%s: %s and %s differ", name, tie[0], tie[1])
			}
			// Each key owns its data: loading code may modify one
			// parameter without touching its tied twin.
			if &a.Float[0] == &b.Float[0] {
				t.Errorf("%s: %s and %s share memory", name, tie[0], tie[1])
			}
		}
	}
}

func TestReadTorchFileErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.pt")
	_, err := ReadTorch(missing)
	wantErr(t, err, "ckpt "+missing+": file does not exist")

	_, err = ReadTorch(dir)
	wantErr(t, err, "ckpt "+dir+": is a directory")

	empty := writeTemp(t, "empty.pt", nil)
	_, err = ReadTorch(empty)
	wantErr(t, err, "ckpt "+empty+": empty file")

	junk := writeTemp(t, "junk.pt", []byte("hello, world\n"))
	_, err = ReadTorch(junk)
	wantErr(t, err, "not a PyTorch checkpoint")

	tarHeader := make([]byte, 1024)
	copy(tarHeader, "model.pt")
	copy(tarHeader[257:], "ustar")
	_, err = ReadTorch(writeTemp(t, "tar.pt", tarHeader))
	wantErr(t, err, "tar-format")

	official := readFixture(t, "official_layout_fp16.pt")
	cut := writeTemp(t, "model.pt", official[:len(official)/2])
	_, err = ReadTorch(cut)
	wantErr(t, err, "ckpt "+cut+": truncated or corrupt zip archive")

	legacy := readFixture(t, "legacy_fp32.pt")
	cut = writeTemp(t, "legacy.pt", legacy[:len(legacy)-3])
	_, err = ReadTorch(cut)
	wantErr(t, err, "ckpt "+cut+": truncated file: storage")
}

// TestReadTorchTruncated cuts every fixture at every byte: no proper prefix
// of a checkpoint is a valid checkpoint, so each must fail cleanly.
func TestReadTorchTruncated(t *testing.T) {
	for _, name := range fixtureNames(t) {
		data := readFixture(t, name)
		for cut := 0; cut < len(data); cut++ {
			sd, err := readTorch(bytes.NewReader(data[:cut]), int64(cut))
			if err == nil {
				t.Fatalf("%s cut at %d of %d: no error (%d keys)", name, cut, len(data), len(sd.Keys))
			}
		}
	}
}

// TestReadTorchByteFlips corrupts every byte of every fixture in turn.
// Nothing may panic, hang or return malformed tensors. In the zip format
// the pickle and the storages are covered by CRC-32, so a flip that goes
// unnoticed (zip timestamps, alignment padding) must leave every value
// intact; the legacy format has no checksum, so there a flipped tensor
// byte legitimately loads as a different value.
func TestReadTorchByteFlips(t *testing.T) {
	masks := []byte{0xff, 0x01}
	if testing.Short() {
		masks = masks[:1]
	}
	for _, name := range fixtureNames(t) {
		data := readFixture(t, name)
		pristine, err := readTorch(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		isZip := bytes.HasPrefix(data, []byte("PK"))
		failures := 0
		for i := range data {
			for _, mask := range masks {
				mut := bytes.Clone(data)
				mut[i] ^= mask
				sd, err := readTorch(bytes.NewReader(mut), int64(len(mut)))
				if err != nil {
					failures++
					continue
				}
				checkInvariants(t, sd)
				if isZip && !sameStateDict(sd, pristine) {
					t.Fatalf("%s: flipping byte %d with 0x%02x changed the values without an error", name, i, mask)
				}
			}
		}
		t.Logf("%s: %d of %d flips detected", name, failures, len(masks)*len(data))
	}
}

func TestReadTorchZipChecksum(t *testing.T) {
	data := readFixture(t, "official_layout_fp16.pt")
	// The word-embedding storage is the first data record; its bytes sit
	// right after that record's local header and name.
	i := bytes.Index(data, []byte("official_layout_fp16/data/0"))
	if i < 0 {
		t.Fatal("record not found")
	}
	mut := bytes.Clone(data)
	mut[i+200] ^= 0x40
	_, err := readTorch(bytes.NewReader(mut), int64(len(mut)))
	wantErr(t, err, "checksum")
}

func TestReadTorchForged(t *testing.T) {
	pooler := fakeTensor{key: "uniter.pooler.dense.weight", class: "FloatStorage", storage: "0", numel: 100, size: []int{768, 768}, stride: []int{768, 1}}
	ok := fakeTensor{key: "w", class: "HalfStorage", storage: "0", numel: 6, size: []int{2, 3}, stride: []int{3, 1}}
	with := func(f func(*fakeTensor)) fakeTensor {
		c := ok
		c.size, c.stride = slices.Clone(ok.size), slices.Clone(ok.stride)
		f(&c)
		return c
	}
	cases := []struct {
		name    string
		tensors []fakeTensor
		want    string
	}{
		{"view past storage", []fakeTensor{pooler}, `key "uniter.pooler.dense.weight": storage holds 100 elements, view needs 589824`},
		{"offset past storage", []fakeTensor{with(func(f *fakeTensor) { f.offset = 1 })}, "storage holds 6 elements, view needs 7"},
		{"negative stride", []fakeTensor{with(func(f *fakeTensor) { f.stride[0] = -3 })}, "negative stride -3"},
		{"negative size", []fakeTensor{with(func(f *fakeTensor) { f.size[1] = -1 })}, "negative size -1"},
		{"negative offset", []fakeTensor{with(func(f *fakeTensor) { f.offset = -1 })}, "negative storage offset"},
		{"rank mismatch", []fakeTensor{with(func(f *fakeTensor) { f.stride = []int{1} })}, "size has 2 dimensions but stride has 1"},
		{"expanded view", []fakeTensor{with(func(f *fakeTensor) { f.size, f.stride = []int{4, 3}, []int{0, 1} })}, "expanded tensors are not supported"},
		{"huge stride", []fakeTensor{with(func(f *fakeTensor) { f.size[0], f.stride[0] = 3, 1<<62 })}, "view reaches far past its end"},
		{"huge shape", []fakeTensor{with(func(f *fakeTensor) { f.size = []int{1 << 40, 1 << 40} })}, "too many elements"},
		{"unsupported storage", []fakeTensor{with(func(f *fakeTensor) { f.class = "ComplexFloatStorage" })}, "unsupported storage type torch.ComplexFloatStorage"},
		{"storage redeclared", []fakeTensor{ok, with(func(f *fakeTensor) { f.key, f.class = "v", "FloatStorage" })}, "declared twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeTemp(t, "model.pt", zipCheckpoint(t, c.tensors, 4))
			_, err := ReadTorch(path)
			wantErr(t, err, "ckpt "+path+": ", c.want)
		})
	}
}

func TestReadTorchForgedContainers(t *testing.T) {
	ok := fakeTensor{key: "w", class: "FloatStorage", storage: "0", numel: 6, size: []int{2, 3}, stride: []int{3, 1}}
	pkl := stateDictPickle([]fakeTensor{ok}, false)
	data24 := make([]byte, 24)
	notDict := newPickle().op(']', '.').Bytes()
	module := newPickle().global("__main__", "Net").op(')', 0x81, '}', 'b', '.').Bytes()
	nested := newPickle().op('}', '(').str("model").op('}').str("step").int(3).op('u', '.').Bytes()
	dupKeys := newPickle().op('}', '(').str("w").tensor(ok, false).str("w").tensor(ok, false).op('u', '.').Bytes()
	cases := []struct {
		name string
		recs []record
		want string
	}{
		{"missing record", []record{{"archive/data.pkl", pkl}}, "record archive/data/0 is missing"},
		{"short record", []record{{"archive/data.pkl", pkl}, {"archive/data/0", data24[:20]}}, "record archive/data/0 holds 20 bytes, 6 float32 elements need 24"},
		{"no data.pkl", []record{{"archive/data/0", data24}}, "no <name>/data.pkl"},
		{"torchscript", []record{{"archive/data.pkl", pkl}, {"archive/constants.pkl", pkl}}, "TorchScript"},
		{"big endian", []record{{"archive/data.pkl", pkl}, {"archive/byteorder", []byte("big")}, {"archive/data/0", data24}}, `byte order "big"`},
		{"top level list", []record{{"archive/data.pkl", notDict}}, "top-level object is a list"},
		{"whole module", []record{{"archive/data.pkl", module}}, "top-level object is a __main__.Net object"},
		{"no tensors", []record{{"archive/data.pkl", nested}}, `no tensors at the top level or under "model"`},
		{"duplicate key", []record{{"archive/data.pkl", dupKeys}, {"archive/data/0", data24}}, `key "w" appears twice`},
		{"truncated pickle", []record{{"archive/data.pkl", pkl[:len(pkl)-1]}}, "truncated pickle"},
		{"bad opcode", []record{{"archive/data.pkl", append(slices.Clone(pkl[:2]), 0xff)}}, "invalid opcode 0xff"},
		{"huge string", []record{{"archive/data.pkl", []byte{0x80, 2, 0x8d, 0, 0, 0, 0, 0, 0, 0, 1, '.'}}}, "truncated pickle"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := zipArchive(t, c.recs...)
			_, err := readTorch(bytes.NewReader(data), int64(len(data)))
			wantErr(t, err, c.want)
		})
	}
}

func TestReadTorchLegacyForged(t *testing.T) {
	ok := fakeTensor{key: "w", class: "LongStorage", storage: "140", numel: 3, size: []int{3}, stride: []int{1}}
	raw := []byte{1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	good := legacyCheckpoint([]fakeTensor{ok}, []string{"140"}, []uint64{3}, [][]byte{raw})
	sd, err := readTorch(bytes.NewReader(good), int64(len(good)))
	if err != nil {
		t.Fatal(err)
	}
	if got := sd.Tensors["w"].Int; !slices.Equal(got, []int64{1, 2, -1}) {
		t.Fatalf("values %v", got)
	}
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"count mismatch", legacyCheckpoint([]fakeTensor{ok}, []string{"140"}, []uint64{4}, [][]byte{raw}), `storage "140": data header at byte`},
		{"unknown key", legacyCheckpoint([]fakeTensor{ok}, []string{"141"}, []uint64{3}, [][]byte{raw}), `storage "141" has data but no tensor`},
		{"listed twice", legacyCheckpoint([]fakeTensor{ok}, []string{"140", "140"}, []uint64{3, 3}, [][]byte{raw, raw}), "listed twice"},
		{"no data", legacyCheckpoint([]fakeTensor{ok}, nil, nil, nil), `storage "140" has no data in the file`},
		{"bad magic", append([]byte{0x80, 2, 'K', 7, '.'}, good[15:]...), "bad magic number"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := readTorch(bytes.NewReader(c.data), int64(len(c.data)))
			wantErr(t, err, c.want)
		})
	}
}

func TestReadTorchParameterAndV1(t *testing.T) {
	// nn.Parameter objects and the pre-1.0 _rebuild_tensor both occur in
	// checkpoints saved without state_dict() or by old torch.
	p := newPickle().op('}', '(')
	p.str("param").global("torch._utils", "_rebuild_parameter").op('(')
	p.tensor(fakeTensor{class: "FloatStorage", storage: "0", numel: 2, size: []int{2}, stride: []int{1}}, false)
	p.op(0x88).global("collections", "OrderedDict").op(')', 'R', 't', 'R')
	p.str("v1").global("torch._utils", "_rebuild_tensor").op('(')
	p.op('(').str("storage").global("torch", "FloatStorage").str("0").str("cpu").int(2).op('t', 'Q')
	p.int(1).ints(1).ints(1).op('t', 'R')
	p.str("opt").int(5)
	p.op('u', '.')
	raw := []byte{0, 0, 0x80, 0x3f, 0, 0, 0, 0x40} // 1.0, 2.0
	data := zipArchive(t, record{"a/data.pkl", p.Bytes()}, record{"a/data/0", raw})
	sd, err := readTorch(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if got := sd.Tensors["param"].Float; !slices.Equal(got, []float32{1, 2}) {
		t.Errorf("param %v", got)
	}
	if got := sd.Tensors["v1"].Float; !slices.Equal(got, []float32{2}) {
		t.Errorf("v1 %v", got)
	}
	if !slices.Equal(sd.Skipped, []string{"opt"}) {
		t.Errorf("skipped %v", sd.Skipped)
	}
}

// BenchmarkReadTorch measures the fp16 path on a synthetic checkpoint
// shaped like uniter-base's largest tensors.
func BenchmarkReadTorch(b *testing.B) {
	const n = 28996 * 768
	tensors := []fakeTensor{
		{key: "word", class: "HalfStorage", storage: "0", numel: n, size: []int{28996, 768}, stride: []int{768, 1}},
		{key: "decoder", class: "HalfStorage", storage: "0", numel: n, size: []int{28996, 768}, stride: []int{768, 1}},
		{key: "word_t", class: "HalfStorage", storage: "0", numel: n, size: []int{768, 28996}, stride: []int{1, 768}},
	}
	data := zipCheckpoint(b, tensors, 2)
	path := writeTemp(b, "bench.pt", data)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := ReadTorch(path); err != nil {
			b.Fatal(err)
		}
	}
}

func ExampleReadTorch() {
	sd, err := ReadTorch("testdata/official_layout_fp16.pt")
	if err != nil {
		fmt.Println(err)
		return
	}
	w := sd.Tensors["uniter.embeddings.word_embeddings.weight"]
	fmt.Println(len(sd.Keys), w.DType, w.Shape, len(w.Float))
	_, err = ReadTorch("testdata/missing.pt")
	fmt.Println(err)
	// Output:
	// 15 float16 [50 16] 800
	// ckpt testdata/missing.pt: file does not exist
}
