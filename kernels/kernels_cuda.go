//go:build cuda

package kernels

import _ "embed"

// Fatbin is every kernel of this directory compiled by nvcc 11.8 for sm_80
// and sm_90 plus compute_90 PTX (see Makefile). The build fails when
// uniter.fatbin is missing: run `make cuda` (or `make -C kernels`) first.
//
//go:embed uniter.fatbin
var Fatbin []byte
