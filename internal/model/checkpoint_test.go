package model

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"uniter/internal/compute"

	"github.com/x448/float16"
)

// TestLoadOfficialFP16 loads the golden model saved as the official code
// saves it (fp16, tied weights stored twice) and checks every weight against
// the fp32 golden value rounded to fp16, then runs the golden batch.
func TestLoadOfficialFP16(t *testing.T) {
	g, cfg := loadGolden(t)
	path := goldenDir + "tiny_official_fp16.pt"
	sd, embedded, err := ReadCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	if embedded != nil {
		t.Errorf("an official .pt carries no config, got %+v", embedded)
	}
	m, _ := goldenModel(t, g, cfg) // heads registered; weights replaced below
	rep, err := m.LoadStateDict(sd, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Unexpected)+len(rep.Missing) > 0 {
		t.Errorf("official layout not fully matched: %s", rep)
	}
	be := m.Backend()
	for _, p := range m.Params.List() {
		want := g.F32("param/" + p.Name)
		for i, v := range be.ToF32(p.W) {
			if r := float16.Fromfloat32(want[i]).Float32(); v != r {
				t.Fatalf("%s[%d] = %g, want fp16(%g) = %g", p.Name, i, v, want[i], r)
			}
		}
	}
	// fp16 weights move the outputs by about fp16 resolution, no more.
	m.SetTrain(false)
	if err := m.Forward(goldenInput(g, cfg, true)); err != nil {
		t.Fatal(err)
	}
	if e := relErr(be.ToF32(m.Pooled()), g.F32("out/pooled")); e > 2e-2 {
		t.Errorf("pooled output with fp16 weights: relative error %.3g", e)
	}
}

// TestLoadLegacyBertPrefix loads a legacy-format fp32 backbone with the
// "bert." prefix and gamma/beta names: exact weights, heads reported missing.
func TestLoadLegacyBertPrefix(t *testing.T) {
	g, cfg := loadGolden(t)
	path := goldenDir + "tiny_legacy_bert.pt"
	sd, _, err := ReadCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := goldenModel(t, g, cfg)
	for _, p := range m.Params.List() {
		m.Backend().Zero(p.W)
	}
	rep, err := m.LoadStateDict(sd, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Unexpected) != 0 || len(rep.Missing) == 0 || !strings.Contains(rep.String(), "randomly initialised") {
		t.Errorf("report %q: want no unexpected keys and the heads missing", rep)
	}
	for _, p := range m.Params.List() {
		if !strings.HasPrefix(p.Name, "uniter.") {
			continue
		}
		want := g.F32("param/" + p.Name)
		for i, v := range m.Backend().ToF32(p.W) {
			if v != want[i] {
				t.Fatalf("%s[%d] = %g, want %g", p.Name, i, v, want[i])
			}
		}
	}
}

// TestReadCheckpointDamaged: a truncated or corrupted official file fails
// with an error naming the file, never a panic.
func TestReadCheckpointDamaged(t *testing.T) {
	src, err := os.ReadFile(goldenDir + "tiny_official_fp16.pt")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cases := map[string][]byte{
		"truncated.pt": src[:len(src)/2],
		"header.pt":    src[:100],
		"empty.pt":     {},
	}
	flipped := append([]byte(nil), src...)
	for i := 0; i < 64; i++ {
		flipped[i] ^= 0xff
	}
	cases["flipped.pt"] = flipped
	for name, b := range cases {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ReadCheckpoint(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %v, want one naming the file", name, err)
		}
	}
	if _, _, err := ReadCheckpoint(filepath.Join(dir, "absent.pt")); err == nil || !strings.Contains(err.Error(), "absent.pt") {
		t.Errorf("missing file: %v", err)
	}
}

func TestReadCheckpointConfig(t *testing.T) {
	be := compute.NewCPU(1)
	m, _ := New(be, fdConfig(), 1)
	dir := filepath.Join(t.TempDir(), "ck")
	if err := m.Save(dir); err != nil {
		t.Fatal(err)
	}
	c, err := ReadCheckpointConfig(dir)
	if err != nil || c == nil || *c != fdConfig() {
		t.Fatalf("config %+v, err %v; want %+v", c, err, fdConfig())
	}
	if c, err := ReadCheckpointConfig(goldenDir + "tiny_official_fp16.pt"); c != nil || err != nil {
		t.Errorf("official .pt: config %+v err %v, want none", c, err)
	}
	if _, err := ReadCheckpointConfig(filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Error("missing checkpoint accepted")
	}
}
