package ckpt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"uniter/internal/atomicfile"
)

// noTempFiles fails if dir holds anything but the names in keep.
func noTempFiles(t *testing.T, dir string, keep ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !slices.Contains(keep, e.Name()) {
			t.Errorf("stray file %s", e.Name())
		}
	}
}

func TestSafetensorsRoundTrip(t *testing.T) {
	for _, name := range fixtureNames(t) {
		t.Run(name, func(t *testing.T) {
			sd, err := ReadTorch(filepath.Join("testdata", name))
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			path := filepath.Join(dir, "model.safetensors")
			meta := map[string]string{"format": "pt", "source": name, "step": "1000"}
			if err := WriteSafetensors(path, sd, meta); err != nil {
				t.Fatal(err)
			}
			noTempFiles(t, dir, "model.safetensors")
			if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
				t.Errorf("stat: %v, mode %v", err, fi.Mode())
			}
			got, gotMeta, err := ReadSafetensors(path)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(gotMeta, meta) {
				t.Errorf("meta %v, want %v", gotMeta, meta)
			}
			if !slices.Equal(got.Keys, sd.Keys) {
				t.Errorf("keys %q, want %q", got.Keys, sd.Keys)
			}
			for _, k := range sd.Keys {
				a, b := sd.Tensors[k], got.Tensors[k]
				wantDType := "int64"
				if floatDTypes[a.DType] {
					wantDType = "float32"
				}
				if b.DType != wantDType || !slices.Equal(a.Shape, b.Shape) || b.Shape == nil || !slices.Equal(a.Int, b.Int) {
					t.Fatalf("%s: got %s %v, want %s %v", k, b.DType, b.Shape, wantDType, a.Shape)
				}
				for i := range a.Float {
					if math.Float32bits(a.Float[i]) != math.Float32bits(b.Float[i]) {
						t.Fatalf("%s[%d] = %v, want %v", k, i, b.Float[i], a.Float[i])
					}
				}
			}
		})
	}
}

func TestSafetensorsFormat(t *testing.T) {
	sd := &StateDict{
		Keys: []string{"b", "a", "ids"},
		Tensors: map[string]*Tensor{
			"b":   {Shape: []int{2}, DType: "float16", Float: []float32{1.5, -2}},
			"a":   {Shape: []int{}, Float: []float32{3}},
			"ids": {Shape: []int{1, 2}, Int: []int64{7, -1}},
		},
	}
	path := filepath.Join(t.TempDir(), "x.safetensors")
	if err := WriteSafetensors(path, sd, nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b)
	if n%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", n)
	}
	header := string(b[8 : 8+n])
	for _, want := range []string{
		`"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}`,
		`"a":{"dtype":"F32","shape":[],"data_offsets":[8,12]}`,
		`"ids":{"dtype":"I64","shape":[1,2],"data_offsets":[12,28]}`,
	} {
		if !strings.Contains(header, want) {
			t.Errorf("header %s lacks %s", header, want)
		}
	}
	if strings.Contains(header, "__metadata__") {
		t.Errorf("header %s has __metadata__ without meta", header)
	}
	data := b[8+n:]
	if len(data) != 28 || math.Float32frombits(binary.LittleEndian.Uint32(data[4:])) != -2 || int64(binary.LittleEndian.Uint64(data[20:])) != -1 {
		t.Errorf("data section % x", data)
	}
	got, meta, err := ReadSafetensors(path)
	if err != nil {
		t.Fatal(err)
	}
	if meta != nil || !slices.Equal(got.Keys, sd.Keys) || got.Tensors["a"].Float[0] != 3 || got.Tensors["ids"].Int[1] != -1 {
		t.Errorf("read back %+v, meta %v", got, meta)
	}
}

func TestWriteSafetensorsInvalid(t *testing.T) {
	f := func(shape []int, xs ...float32) *Tensor { return &Tensor{Shape: shape, DType: "float32", Float: xs} }
	cases := []struct {
		name string
		sd   *StateDict
		want string
	}{
		{"nil", nil, "nil state dict"},
		{"count mismatch", &StateDict{Keys: []string{"a"}, Tensors: map[string]*Tensor{"a": f([]int{3}, 1, 2)}}, `key "a": shape [3] needs 3 values, tensor has 2`},
		{"missing tensor", &StateDict{Keys: []string{"a"}, Tensors: map[string]*Tensor{}}, `key "a" has no tensor`},
		{"duplicate key", &StateDict{Keys: []string{"a", "a"}, Tensors: map[string]*Tensor{"a": f([]int{1}, 1)}}, "listed twice"},
		{"unlisted tensor", &StateDict{Keys: []string{"a"}, Tensors: map[string]*Tensor{"a": f([]int{1}, 1), "b": f([]int{1}, 1)}}, "state dict has 2 tensors but lists 1 keys"},
		{"reserved name", &StateDict{Keys: []string{"__metadata__"}, Tensors: map[string]*Tensor{"__metadata__": f([]int{1}, 1)}}, "reserved"},
		{"negative dim", &StateDict{Keys: []string{"a"}, Tensors: map[string]*Tensor{"a": f([]int{-1})}}, "invalid shape"},
		{"unknown dtype", &StateDict{Keys: []string{"a"}, Tensors: map[string]*Tensor{"a": {Shape: []int{1}, DType: "complex64"}}}, `unknown dtype "complex64"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "x.safetensors")
			err := WriteSafetensors(path, c.sd, nil)
			wantErr(t, err, "ckpt "+path+": ", c.want)
			noTempFiles(t, dir)
		})
	}
}

func TestWriteSafetensorsAtomic(t *testing.T) {
	sd := &StateDict{Keys: []string{"w"}, Tensors: map[string]*Tensor{"w": {Shape: []int{2}, DType: "float32", Float: []float32{1, 2}}}}

	t.Run("missing dir", func(t *testing.T) {
		dir := t.TempDir()
		err := WriteSafetensors(filepath.Join(dir, "nope", "x.safetensors"), sd, nil)
		wantErr(t, err, "no such file or directory")
		noTempFiles(t, dir)
	})

	t.Run("read-only dir", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root ignores directory permissions")
		}
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o555); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(dir, 0o755)
		err := WriteSafetensors(filepath.Join(dir, "x.safetensors"), sd, nil)
		wantErr(t, err, "permission denied")
		noTempFiles(t, dir)
	})

	t.Run("target is a directory", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(dir, "x.safetensors")
		if err := os.Mkdir(target, 0o755); err != nil {
			t.Fatal(err)
		}
		err := WriteSafetensors(target, sd, nil)
		wantErr(t, err, "ckpt "+target)
		noTempFiles(t, dir, "x.safetensors")
	})

	t.Run("failure mid-write keeps the old file", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(dir, "x.safetensors")
		if err := WriteSafetensors(target, sd, map[string]string{"v": "1"}); err != nil {
			t.Fatal(err)
		}
		before, _ := os.ReadFile(target)
		boom := errors.New("disk full")
		err := atomicfile.Write(target, func(w io.Writer) error {
			w.Write(bytes.Repeat([]byte("x"), 3<<20))
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("error %v, want %v", err, boom)
		}
		after, _ := os.ReadFile(target)
		if !bytes.Equal(before, after) {
			t.Error("old checkpoint was modified")
		}
		noTempFiles(t, dir, "x.safetensors")
	})

	t.Run("overwrite", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(dir, "x.safetensors")
		for _, v := range []string{"1", "2"} {
			if err := WriteSafetensors(target, sd, map[string]string{"v": v}); err != nil {
				t.Fatal(err)
			}
		}
		_, meta, err := ReadSafetensors(target)
		if err != nil || meta["v"] != "2" {
			t.Fatalf("meta %v, err %v", meta, err)
		}
		noTempFiles(t, dir, "x.safetensors")
	})
}

func TestReadSafetensorsCorrupt(t *testing.T) {
	sd, err := ReadTorch(filepath.Join("testdata", "int64.pt"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "x.safetensors")
	if err := WriteSafetensors(path, sd, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for cut := 0; cut < len(data); cut++ {
		if _, _, err := readSafetensors(bytes.NewReader(data[:cut]), int64(cut)); err == nil {
			t.Fatalf("cut at %d of %d: no error", cut, len(data))
		}
	}
	for i := range data {
		mut := bytes.Clone(data)
		mut[i] ^= 0xff
		if got, _, err := readSafetensors(bytes.NewReader(mut), int64(len(mut))); err == nil {
			checkInvariants(t, got)
		}
	}
	_, _, err = ReadSafetensors(filepath.Join(t.TempDir(), "missing.safetensors"))
	wantErr(t, err, "missing.safetensors: file does not exist")

	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"gap", safetensorsBytes(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), "do not follow"},
		{"size mismatch", safetensorsBytes(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 4), "do not match 2 F32"},
		{"trailing data", safetensorsBytes(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 8), "data section holds 8 bytes, header describes 4"},
		{"unsupported dtype", safetensorsBytes(`{"a":{"dtype":"U32","shape":[1],"data_offsets":[0,4]}}`, 4), "dtype U32 is not supported"},
		{"huge shape", safetensorsBytes(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, 4), "too many elements"},
		{"not json", safetensorsBytes(`{"a":`, 0), "invalid safetensors header"},
		{"huge header", binary.LittleEndian.AppendUint64(nil, 1<<40), "header of 1099511627776 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := readSafetensors(bytes.NewReader(c.data), int64(len(c.data)))
			wantErr(t, err, c.want)
		})
	}
}
