package model

import (
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
