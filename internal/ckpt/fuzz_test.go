package ckpt

import (
	"bytes"
	"testing"
)

// FuzzReadTorch feeds arbitrary bytes to the .pt reader, seeded with every
// fixture and a forged legacy file. Any input must give either an error or
// a well-formed state dict, without panicking, hanging or allocating
// beyond what the input can justify.
func FuzzReadTorch(f *testing.F) {
	for _, name := range fixtureNames(f) {
		f.Add(readFixture(f, name))
	}
	ft := fakeTensor{key: "w", class: "HalfStorage", storage: "1", numel: 4, size: []int{2, 2}, stride: []int{1, 2}}
	f.Add(legacyCheckpoint([]fakeTensor{ft}, []string{"1"}, []uint64{4}, [][]byte{make([]byte, 8)}))
	f.Fuzz(func(t *testing.T, data []byte) {
		sd, err := readTorch(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		checkInvariants(t, sd)
	})
}

// FuzzReadSafetensors does the same for the safetensors reader.
func FuzzReadSafetensors(f *testing.F) {
	f.Add(safetensorsBytes(`{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"__metadata__":{"k":"v"}}`, 4))
	f.Add(safetensorsBytes(`{"b":{"dtype":"I64","shape":[],"data_offsets":[0,8]}}`, 8))
	f.Fuzz(func(t *testing.T, data []byte) {
		sd, _, err := readSafetensors(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		checkInvariants(t, sd)
	})
}
