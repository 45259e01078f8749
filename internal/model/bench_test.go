package model

import (
	"math/rand/v2"
	"testing"

	"uniter/internal/compute"
)

func benchModel(b *testing.B, preset string, backward bool) {
	c, _ := Preset(preset)
	m, err := New(compute.NewCPU(0), c, 1)
	if err != nil {
		b.Fatal(err)
	}
	m.SetTrain(backward)
	in := SyntheticInput(c, 8, 40, 50, 1) // the `uniter bench` default shape
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := m.Forward(in); err != nil {
			b.Fatal(err)
		}
		if backward {
			m.Backward(false) // Forward zeroed GradSeq: the cost is the same for any gradient
		}
	}
	b.ReportMetric(float64(8*90*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

func BenchmarkBaseForward(b *testing.B)         { benchModel(b, "base", false) }
func BenchmarkBaseForwardBackward(b *testing.B) { benchModel(b, "base", true) }
func BenchmarkTinyForwardBackward(b *testing.B) { benchModel(b, "tiny", true) }

// BenchmarkTinyTrainStep is a training step of the CPU demo
// (configs/demo.yaml, make demo) at its shapes: the tiny model on the
// synthetic world's 220 words, token-bucket batches of about 1000 joint
// rows (40 examples of 20 tokens and 4 regions of 2048 features), no
// dropout. A step zeroes the gradients, runs the forward, the MLM head on
// every seventh text row, the backward and an AdamW update of every
// parameter: the backend work of the trainer's step without its host-side
// loss code and data loading.
func BenchmarkTinyTrainStep(b *testing.B) {
	c, _ := Preset("tiny")
	c.VocabSize, c.HiddenDropoutProb, c.AttentionProbsDropoutProb = 220, 0, 0
	be := compute.NewCPU(0)
	m, err := New(be, c, 1)
	if err != nil {
		b.Fatal(err)
	}
	heads := NewPretrainHeads(m)
	m.SetTrain(true)
	const batch, txt, nbb = 40, 20, 4
	in := SyntheticInput(c, batch, txt, nbb, 1)
	s := txt + nbb
	var rows []int32
	for ex := range batch {
		for j := 1; j < txt-1; j += 7 {
			rows = append(rows, int32(ex*s+j))
		}
	}
	mlmRows := be.FromI32(rows, len(rows))
	r := rand.New(rand.NewPCG(2, 3))
	dl := make([]float32, len(rows)*c.VocabSize)
	for i := range dl {
		dl[i] = float32(r.NormFloat64() * 1e-3)
	}
	dlogits := be.FromF32(dl, len(rows), c.VocabSize)
	params := m.Params.List()
	moments := make([][2]*compute.Tensor, len(params))
	for i, p := range params {
		moments[i] = [2]*compute.Tensor{be.Alloc(compute.F32, p.Shape...), be.Alloc(compute.F32, p.Shape...)}
	}
	b.ResetTimer()
	for step := 1; step <= b.N; step++ {
		m.Params.ZeroGrad()
		if err := m.Forward(in); err != nil {
			b.Fatal(err)
		}
		heads.MLM(mlmRows)
		heads.MLMBackward(dlogits)
		m.Backward(false)
		for i, p := range params {
			be.AdamW(p.W, p.G, moments[i][0], moments[i][1], 1, 1e-4, 0.9, 0.98, 1e-6, 0.01, step)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "steps/s")
	b.ReportMetric(float64(batch*s*b.N)/b.Elapsed().Seconds(), "tokens/s")
}
