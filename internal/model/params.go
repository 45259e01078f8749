package model

import (
	"fmt"
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
}

func newParamSet(be compute.Backend, seed uint64, std float64) *ParamSet {
	return &ParamSet{be: be, byName: map[string]*Param{}, rng: rand.New(rand.NewPCG(seed, 0x5eed)), std: std}
}

// init kinds of section 1.2 of the reference.
type initKind int

const (
	initNormal initKind = iota // Linear and Embedding weights ~ N(0, std)
	initZeros                  // biases, LayerNorm bias
	initOnes                   // LayerNorm weight
)

func (s *ParamSet) add(name string, kind initKind, shape ...int) *Param {
	if _, dup := s.byName[name]; dup {
		panic("model: duplicate parameter " + name)
	}
	n := compute.Numel(shape)
	host := make([]float32, n)
	switch kind {
	case initNormal:
		for i := range host {
			host[i] = float32(s.rng.NormFloat64() * s.std)
		}
	case initOnes:
		for i := range host {
			host[i] = 1
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
