package model

import (
	"math/rand/v2"
	"testing"

	"uniter/internal/compute"
)

// benchInput is the `uniter bench` default shape: 8 examples of 40 tokens
// and 50 regions each.
func benchInput(c Config, b, t, n int) *Input {
	r := rand.New(rand.NewPCG(1, 2))
	in := &Input{B: b, T: t, N: n, InputIDs: make([]int32, b*t), TxtLens: make([]int, b),
		ImgFeat: make([]float32, b*n*c.ImgDim), ImgPos: make([]float32, b*n*ImgPosDim), NBB: make([]int, b)}
	for i := range in.InputIDs {
		in.InputIDs[i] = int32(1 + r.IntN(c.VocabSize-1))
	}
	for i := range in.ImgFeat {
		in.ImgFeat[i] = float32(r.Float64())
	}
	for i := range in.ImgPos {
		in.ImgPos[i] = float32(r.Float64())
	}
	for i := 0; i < b; i++ {
		in.TxtLens[i], in.NBB[i] = t, n
	}
	return in
}

func benchModel(b *testing.B, preset string, backward bool) {
	c, _ := Preset(preset)
	m, err := New(compute.NewCPU(0), c, 1)
	if err != nil {
		b.Fatal(err)
	}
	m.SetTrain(backward)
	in := benchInput(c, 8, 40, 50)
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
