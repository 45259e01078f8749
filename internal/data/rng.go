package data

import "math/rand/v2"

// newRNG returns a generator determined only by seed and the given stream
// coordinates (epoch, batch, example, ...). Deriving generators from
// coordinates instead of sharing one lets any worker reproduce any example's
// randomness, in any order, after any restart.
func newRNG(seed uint64, stream ...uint64) *rand.Rand {
	h := splitmix(seed ^ 0x9e3779b97f4a7c15)
	for _, s := range stream {
		h = splitmix(h ^ splitmix(s+0x632be59bd9b4e019))
	}
	return rand.New(rand.NewPCG(h, splitmix(h)))
}

// splitmix is the SplitMix64 finaliser: a bijective mix so that nearby
// coordinates give unrelated seeds.
func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// Stream tags keep the generators of different consumers of one seed apart.
const (
	streamSampler uint64 = iota + 1
	streamMLM
	streamMRM
	streamITM
	streamMixer
	streamSynth
)
