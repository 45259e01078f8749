package tasks

import (
	"testing"

	"uniter/internal/compute"
)

// The loss functions against PyTorch on random head outputs: the value and
// the gradient w.r.t. the head output, with the official reductions.

func TestXentMatchesPyTorch(t *testing.T) {
	r := loadRef(t, "losses.pt")
	be := compute.NewCPU(0)
	for _, c := range []struct {
		name   string
		ignore int32
		from   int
	}{{"mlm", -1, 0}, {"mrc", 0, 1}, {"itm", -1, 0}} {
		t.Run(c.name, func(t *testing.T) {
			shape := r.tensor(c.name + "/logits").Shape
			logits := be.FromF32(r.f32(c.name+"/logits"), shape...)
			const scale = 4
			loss, correct := xent(be, logits, r.i32(c.name+"/labels"), c.ignore, c.from, scale, nil)
			checkScalar(t, "loss", loss, r.scalar(c.name+"/loss"), refTol)
			want := r.f32(c.name + "/grad")
			for i := range want {
				want[i] *= scale
			}
			checkRel(t, "dlogits", be.ToF32(logits), want, refTol)
			if w := int(r.scalar(c.name + "/correct")); correct != w {
				t.Errorf("correct = %d, PyTorch %d", correct, w)
			}
		})
	}
}

func TestMSEMatchesPyTorch(t *testing.T) {
	r := loadRef(t, "losses.pt")
	be := compute.NewCPU(0)
	shape := r.tensor("mrfr/pred").Shape
	pred := be.FromF32(r.f32("mrfr/pred"), shape...)
	const scale = 0.5
	loss := mse(be, pred, be.FromF32(r.f32("mrfr/target"), shape...), scale)
	checkScalar(t, "loss", loss, r.scalar("mrfr/loss"), refTol)
	want := r.f32("mrfr/grad")
	for i := range want {
		want[i] *= scale
	}
	checkRel(t, "dpred", be.ToF32(pred), want, refTol)
}

func TestSoftmaxKLMatchesPyTorch(t *testing.T) {
	r := loadRef(t, "losses.pt")
	be := compute.NewCPU(0)
	shape := r.tensor("mrckl/logits").Shape
	logits := be.FromF32(r.f32("mrckl/logits"), shape...)
	const scale = 1024
	loss := softmaxKL(be, logits, be.FromF32(r.f32("mrckl/soft"), shape...), scale)
	checkScalar(t, "loss", loss, r.scalar("mrckl/loss"), refTol)
	want := r.f32("mrckl/grad")
	for i := range want {
		want[i] *= scale
	}
	checkRel(t, "dlogits", be.ToF32(logits), want, refTol)
}
