package tasks

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"uniter/internal/compute"
	"uniter/internal/data"
)

func TestModelInput(t *testing.T) {
	cfg := fdConfig()
	b := fdBatch(t, data.TaskMRFR, cfg)
	in := ModelInput(b)
	if in.B != b.B || in.T != b.Tmax || in.N != b.Nmax || in.SeqLen() != b.S || seqLen(b) != b.S {
		t.Fatalf("input %dx%dx%d S %d, batch %dx%dx%d S %d", in.B, in.T, in.N, in.SeqLen(), b.B, b.Tmax, b.Nmax, b.S)
	}
	masked := 0
	for i, m := range in.ImgMasks {
		if (m == 1) != b.ImgMasks[i] || m > 1 {
			t.Fatalf("img_masks[%d] = %d, batch %v", i, m, b.ImgMasks[i])
		}
		masked += int(m)
	}
	if masked != b.NMasked {
		t.Errorf("%d masks, batch has %d masked regions", masked, b.NMasked)
	}
	if in := ModelInput(fdBatch(t, data.TaskITM, cfg)); in.ImgMasks != nil {
		t.Errorf("unmasked batch gives img_masks %v", in.ImgMasks)
	}
}

// TestRegionRows checks the joint rows of masked regions against the
// batch's compact-layout target mask.
func TestRegionRows(t *testing.T) {
	b := fdBatch(t, data.TaskMRC, fdConfig())
	rows, err := regionRows(b, b.S)
	if err != nil {
		t.Fatal(err)
	}
	var want []int32
	for k, m := range b.ImgMaskTgt {
		if m {
			want = append(want, int32(k))
		}
	}
	if len(rows) != len(want) {
		t.Fatalf("rows %v, ImgMaskTgt marks %v", rows, want)
	}
	for i := range rows {
		if rows[i] != want[i] {
			t.Fatalf("rows %v, ImgMaskTgt marks %v", rows, want)
		}
	}
}

// TestFP16Gradients emulates mixed precision: a usual loss scale gives the
// fp32 gradients to fp16 resolution, a too-large one overflows to inf in
// the backbone (what the loss scaler detects), not in the heads.
func TestFP16Gradients(t *testing.T) {
	for _, task := range allTasks {
		t.Run(task, func(t *testing.T) {
			p := newFDPretrain(t)
			p.M.SetTrain(false)
			be := p.M.Backend()
			b := fdBatch(t, task, p.M.Cfg)
			const name = "uniter.encoder.layer.0.attention.self.query.weight"
			prm := p.M.Params.Get(name)

			p.M.Params.ZeroGrad()
			if _, err := p.Step(task, b, true, 1); err != nil {
				t.Fatal(err)
			}
			want := be.ToF32(prm.G)

			p.FP16 = true
			const scale = 1024
			p.M.Params.ZeroGrad()
			if _, err := p.Step(task, b, true, scale); err != nil {
				t.Fatal(err)
			}
			got := be.ToF32(prm.G)
			for i := range got {
				got[i] /= scale
			}
			// fp16 keeps 11 significant bits; the rounded row gradients
			// then mix in float32.
			if e := relErr(got, want); !(e < 2e-3) {
				t.Errorf("fp16 gradient relative error %.3g", e)
			}

			p.M.Params.ZeroGrad()
			if _, err := p.Step(task, b, true, 1e12); err != nil {
				t.Fatal(err)
			}
			if be.AllFinite(prm.G) {
				t.Errorf("loss scale 1e12 left %s finite", name)
			}
		})
	}
}

// TestStepErrors covers inputs the step must refuse with an error naming
// the problem, before running anything.
func TestStepErrors(t *testing.T) {
	p := newFDPretrain(t)
	cfg := p.M.Cfg
	cases := []struct {
		name, task string
		edit       func(b *data.Batch)
		want       string
	}{
		{"unknown task", "mlmx", nil, "unknown pretraining task"},
		{"no MLM labels", data.TaskMLM, func(b *data.Batch) { b.MLMLabels = nil }, "no MLM labels"},
		{"nothing masked", data.TaskMLM, func(b *data.Batch) {
			for i := range b.MLMLabels {
				b.MLMLabels[i] = -1
			}
		}, "no masked tokens"},
		{"MLM label out of range", data.TaskMLM, func(b *data.Batch) { b.MLMLabels[1] = int32(cfg.VocabSize) }, "out of range"},
		{"negative MLM label", data.TaskMLM, func(b *data.Batch) { b.MLMLabels[1] = -5 }, "out of range"},
		{"MLM label on padding", data.TaskMLM, func(b *data.Batch) { b.MLMLabels[b.Tmax+b.TxtLens[1]] = 7 }, "past the text"},
		{"MLM labels short", data.TaskMLM, func(b *data.Batch) { b.MLMLabels = b.MLMLabels[1:] }, "MLM labels have"},
		{"no region masks", data.TaskMRFR, func(b *data.Batch) { b.ImgMasks, b.NMasked = nil, 0 }, "no masked regions"},
		{"MRFR targets short", data.TaskMRFR, func(b *data.Batch) { b.MRFRTargets = b.MRFRTargets[1:] }, "MRFR targets"},
		{"feature size", data.TaskMRFR, func(b *data.Batch) { b.ImgDim++ }, "region features"},
		{"masked padding region", data.TaskMRFR, func(b *data.Batch) { b.ImgMasks[2*b.Nmax+b.NBB[2]] = true }, "masked but"},
		{"mask count", data.TaskMRFR, func(b *data.Batch) { b.NMasked++ }, "counts"},
		{"no MRC labels", data.TaskMRC, func(b *data.Batch) { b.MRCLabels = nil }, "MRC labels"},
		{"MRC label out of range", data.TaskMRC, func(b *data.Batch) { b.MRCLabels[0] = data.LabelDim }, "out of range"},
		{"no soft labels", data.TaskMRCKL, func(b *data.Batch) { b.MRCSoft = nil }, "soft label"},
		{"negative soft label", data.TaskMRCKL, func(b *data.Batch) { b.MRCSoft[3] = -0.5 }, "not a probability"},
		{"NaN soft label", data.TaskMRCKL, func(b *data.Batch) { b.MRCSoft[3] = float32(math.NaN()) }, "not a probability"},
		{"ITM labels short", data.TaskITM, func(b *data.Batch) { b.Labels = b.Labels[1:] }, "ITM labels"},
		{"ITM label 2", data.TaskITM, func(b *data.Batch) { b.Labels[2] = 2 }, "want 0 or 1"},
		{"region counts", data.TaskITM, func(b *data.Batch) { b.NBB = b.NBB[1:] }, "region counts"},
		{"bad token id", data.TaskITM, func(b *data.Batch) { b.InputIDs[0] = int32(cfg.VocabSize) }, "input_ids"},
		{"no regions", data.TaskITM, func(b *data.Batch) { b.Nmax = 0 }, "text and regions"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			task := c.task
			if task == "mlmx" {
				task = data.TaskMLM
			}
			b := fdBatch(t, task, cfg)
			if c.edit != nil {
				c.edit(b)
			}
			p.M.Params.ZeroGrad()
			_, err := p.Step(c.task, b, true, 1)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
			for _, prm := range p.M.Params.List() {
				if p.M.Backend().SumSq(prm.G) != 0 {
					t.Fatalf("%s has a gradient after a refused step", prm.Name)
				}
			}
		})
	}
	if _, err := (&Pretrain{}).Step(data.TaskMLM, fdBatch(t, data.TaskMLM, cfg), false, 1); err == nil {
		t.Error("a Pretrain without a model ran")
	}
	if _, err := p.Step(data.TaskMLM, nil, false, 1); err == nil {
		t.Error("a nil batch ran")
	}
}

// TestArgmaxFrom checks the device argmax of the heads' accuracies against
// torch's x[:, from:].max(-1)[1] + from on the host: the lowest column on
// ties, the first NaN, columns before from never chosen, and the cached
// column index reused across batch sizes and rebuilt for another width.
func TestArgmaxFrom(t *testing.T) {
	be := compute.NewCPU(0)
	rng := rand.New(rand.NewPCG(4, 2))
	host := func(x []float32, c, from int) []int32 {
		var out []int32
		for i := 0; i < len(x)/c; i++ {
			row := x[i*c : (i+1)*c]
			best := from
			for j := from; j < c; j++ {
				if row[j] != row[j] {
					best = j
					break
				}
				if row[j] > row[best] {
					best = j
				}
			}
			out = append(out, int32(best))
		}
		return out
	}
	var cols colSelect
	// rows is the size of the cached index after the case: grown to at
	// least twice the old one, kept for fewer rows, rebuilt for another
	// width or start (and untouched from 0, which gathers nothing).
	for _, c := range []struct{ n, c, from, rows int }{
		{3, 7, 1, 3}, {9, 7, 1, 9}, {2, 7, 1, 9}, {5, 31, 1, 5}, {4, 31, 0, 5}, {6, 31, 3, 6}, {1, 2, 1, 1},
	} {
		x := make([]float32, c.n*c.c)
		for k := range x {
			x[k] = float32(rng.IntN(4)) // many ties
		}
		x[0] = 10 // column 0 of row 0 is the largest
		if c.n > 2 {
			x[2*c.c+c.c-1] = float32(math.NaN())
			x[2*c.c+c.c/2] = float32(math.Inf(1))
		}
		logits := be.FromF32(x, c.n, c.c)
		got := argmaxFrom(be, logits, c.from, &cols)
		if want := host(x, c.c, c.from); !slices.Equal(got, want) {
			t.Errorf("%d x %d from %d: %v, want %v", c.n, c.c, c.from, got, want)
		}
		if !slices.Equal(be.ToF32(logits), x) && !slices.ContainsFunc(x, func(v float32) bool { return v != v }) {
			t.Errorf("%d x %d: the logits changed", c.n, c.c)
		}
		if cols.rows != c.rows {
			t.Errorf("%d x %d from %d: cached index of %d rows, want %d", c.n, c.c, c.from, cols.rows, c.rows)
		}
		if got1 := argmaxFrom(be, logits, c.from, nil); !slices.Equal(got1, got) {
			t.Errorf("%d x %d from %d: %v without the cache, %v with it", c.n, c.c, c.from, got1, got)
		}
	}
}
