package model

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"

	"uniter/internal/compute"
)

// Param is one trainable tensor with its gradient. Name is the official
// checkpoint key; a tied parameter has further names in Aliases.
type Param struct {
	Name    string
	Aliases []string
	Shape   []int
	W       *compute.Tensor
	G       *compute.Tensor
}

// Decay reports whether AdamW weight decay applies, by the reference's
// substring rule: names containing "bias", "LayerNorm.bias" or
// "LayerNorm.weight" are not decayed (so img_layer_norm.weight is).
func (p *Param) Decay() bool {
	return !strings.Contains(p.Name, "bias") && !strings.Contains(p.Name, "LayerNorm.weight")
}

// Numel is the number of scalars in the parameter.
func (p *Param) Numel() int { return compute.Numel(p.Shape) }

// ParamSet is the ordered set of a model's parameters, addressable by every
// official name including the aliases of tied weights.
type ParamSet struct {
	be     compute.Backend
	list   []*Param
	byName map[string]*Param
	rng    *rand.Rand
	std    float64
	// flat holds every gradient after FlattenGrads.
	flat *compute.Tensor
}

func newParamSet(be compute.Backend, seed uint64, std float64) *ParamSet {
	return &ParamSet{be: be, byName: map[string]*Param{}, rng: rand.New(rand.NewPCG(seed, 0x5eed)), std: std}
}

// InitKind is how a new parameter is initialised.
type InitKind int

const (
	InitNormal InitKind = iota // Linear and Embedding weights ~ N(0, std)
	InitZeros                  // biases, LayerNorm bias
	InitOnes                   // LayerNorm weight
	// InitXavierUniform is U(-a, a) with a = sqrt(6/(fan_in+fan_out)) for a
	// [out, in] weight: torch's MultiheadAttention in_proj_weight, which the
	// official init_weights leaves alone because it is not a Linear.
	InitXavierUniform
)

// Add registers a parameter under its official name, initialised from the
// set's seeded generator; heads declare their weights through it so that
// official checkpoints load without renaming. A repeated name panics: it is
// a programming error, never a data error.
func (s *ParamSet) Add(name string, kind InitKind, shape ...int) *Param {
	if _, dup := s.byName[name]; dup {
		panic("model: duplicate parameter " + name)
	}
	n := compute.Numel(shape)
	host := make([]float32, n)
	switch kind {
	case InitNormal:
		for i := range host {
			host[i] = float32(s.rng.NormFloat64() * s.std)
		}
	case InitOnes:
		for i := range host {
			host[i] = 1
		}
	case InitXavierUniform:
		a := math.Sqrt(6 / float64(shape[0]+shape[len(shape)-1]))
		for i := range host {
			host[i] = float32((2*s.rng.Float64() - 1) * a)
		}
	}
	p := &Param{Name: name, Shape: shape, W: s.be.FromF32(host, shape...), G: s.be.Alloc(compute.F32, shape...)}
	s.list = append(s.list, p)
	s.byName[name] = p
	return p
}

// tie makes alias another name of p (weights stored twice in official
// checkpoints, one parameter here).
func (s *ParamSet) tie(alias string, p *Param) {
	p.Aliases = append(p.Aliases, alias)
	s.byName[alias] = p
}

// List returns the parameters, each once, in creation order.
func (s *ParamSet) List() []*Param { return s.list }

// Get returns the parameter with an official name or alias, or nil.
func (s *ParamSet) Get(name string) *Param { return s.byName[name] }

// Names returns every name including aliases, sorted.
func (s *ParamSet) Names() []string {
	names := make([]string, 0, len(s.byName))
	for n := range s.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Count returns the number of scalars over parameters whose name has prefix.
func (s *ParamSet) Count(prefix string) int {
	n := 0
	for _, p := range s.list {
		if strings.HasPrefix(p.Name, prefix) {
			n += p.Numel()
		}
	}
	return n
}

// ZeroGrad clears every gradient (start of an accumulation window).
func (s *ParamSet) ZeroGrad() {
	if s.flat != nil {
		s.be.Zero(s.flat)
		return
	}
	for _, p := range s.list {
		s.be.Zero(p.G)
	}
}

// Set copies host values into a parameter, checking the shape.
func (s *ParamSet) Set(name string, shape []int, data []float32) error {
	p := s.byName[name]
	if p == nil {
		return fmt.Errorf("no parameter %q", name)
	}
	if !compute.SameShape(shape, p.Shape) {
		return fmt.Errorf("parameter %q: shape %v, model expects %v", name, shape, p.Shape)
	}
	s.be.Copy(p.W, s.be.FromF32(data, shape...))
	return nil
}

// Resize gives parameter name a first dimension of rows: the first
// min(rows, old) rows keep their values, new rows are drawn as kind, and the
// gradient is reallocated (zero). Tasks that grow an embedding table (NLVR2's
// third token type, VCR's extra words) call it before the optimizer exists.
func (s *ParamSet) Resize(name string, rows int, kind InitKind) (*Param, error) {
	p := s.byName[name]
	if p == nil {
		return nil, fmt.Errorf("no parameter %q", name)
	}
	if rows <= 0 {
		return nil, fmt.Errorf("parameter %q: cannot resize to %d rows", name, rows)
	}
	if s.flat != nil {
		return nil, fmt.Errorf("parameter %q: cannot resize after the gradients were flattened", name)
	}
	shape := append([]int{rows}, p.Shape[1:]...)
	rowLen := compute.Numel(p.Shape[1:])
	old := s.be.ToF32(p.W)
	host := make([]float32, rows*rowLen)
	keep := min(rows, p.Shape[0]) * rowLen
	copy(host, old[:keep])
	for i := keep; i < len(host); i++ {
		switch kind {
		case InitNormal:
			host[i] = float32(s.rng.NormFloat64() * s.std)
		case InitOnes:
			host[i] = 1
		}
	}
	p.Shape = shape
	p.W = s.be.FromF32(host, shape...)
	p.G = s.be.Alloc(compute.F32, shape...)
	return p, nil
}

// FlattenGrads moves every gradient into one flat buffer, laid out in the
// order given (each parameter of the set exactly once), and returns it
// zeroed. Data-parallel training all-reduces contiguous ranges of it as the
// backward finishes them; the gradients stay addressable per parameter.
// Resize must not follow: the model's shapes are final by then.
func (s *ParamSet) FlattenGrads(order []*Param) (*compute.Tensor, error) {
	seen := map[*Param]bool{}
	n := 0
	for _, p := range order {
		if s.byName[p.Name] != p || seen[p] {
			return nil, fmt.Errorf("model: flat gradients: parameter %q is not in the set or appears twice", p.Name)
		}
		seen[p] = true
		n += p.Numel()
	}
	if len(seen) != len(s.list) {
		return nil, fmt.Errorf("model: flat gradients: order holds %d of the %d parameters", len(seen), len(s.list))
	}
	flat := s.be.Alloc(compute.F32, n)
	off := 0
	for _, p := range order {
		p.G = &compute.Tensor{Shape: p.Shape, DType: compute.F32, Data: flat.Data.Slice(off, p.Numel())}
		off += p.Numel()
	}
	s.flat = flat
	return flat, nil
}
