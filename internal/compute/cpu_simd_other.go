//go:build !amd64

package compute

// Without the AVX2 loops of cpu_simd_amd64.go the Go loops do all the work.

const haveAVX2 = false

func geluVector(dst, xs, dout []float32) (n int, complete bool) { return 0, true }

func adamwVector(p, g, m, v []float32, c *[8]float64) int { return 0 }

func sumSqVector(x []float32) (s float64, ok bool) { return 0, false }

func layerNormFwdVector(out, mean, rstd, x, gamma, beta []float32, m, n int, eps float32) bool {
	return false
}

func layerNormParamGradsVector(acc []float64, dout, x, mean, rstd []float32, m, n, lo int) bool {
	return false
}

func layerNormDxVector(dx, dout, x, mean, rstd, gamma []float32, m, n int) bool { return false }

func addVector(d, a, b []float32) bool { return false }

func addBiasVector(x, bias []float32, m, n int) bool { return false }

func sumColsVector(acc []float64, x []float32, m, n, lo int) bool { return false }

func scatterAddVector(dst, src []float32, idx []int32, d, lo, w int) bool { return false }
