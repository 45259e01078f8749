package compute

import "math"

// Hot loops call the small kernels below, which stay within the compiler's
// inlining budget; calling math.Exp or math.Erfc per element would cost two
// to three times as much.

// expPoly is exp(x) for -708 < x <= 709 to within 3e-15 relative; other x
// give garbage, so callers check the range.
func expPoly(x float64) float64 {
	// x = (32k + j) ln2/32 + r with |r| <= ln2/64, so exp(x) =
	// 2^k * 2^(j/32) * exp(r); adding 1.5*2^52 rounds x*32/ln2 to the
	// integer 32k+j held in the low bits. Degree 5 in r leaves a truncation
	// error of r^6/720 < 3e-15.
	kf := x*(32/math.Ln2) + 0x1.8p52
	k := math.Float64bits(kf)
	kf -= 0x1.8p52
	r := x - kf*expLn2Hi - kf*expLn2Lo
	p := 1 + r*(1+r*(1.0/2+r*(1.0/6+r*(1.0/24+r*(1.0/120)))))
	return math.Float64frombits(expTable[k&31]+(k>>5)<<52) * p
}

// ln2/32 split so that kf*expLn2Hi is exact for every kf that occurs.
const (
	expLn2Hi = 0x1.62e42fefa0000p-6
	expLn2Lo = math.Ln2/32 - expLn2Hi
)

// expTable holds the bits of 2^(j/32), j = 0..31.
var expTable = func() (t [32]uint64) {
	for j := range t {
		t[j] = math.Float64bits(math.Exp2(float64(j) / 32))
	}
	return t
}()

// exp64 is exp(x) to within 3e-15 relative. It returns 0 at or below -708
// (float32 results underflow long before) and propagates NaN and +Inf so
// that overflow reaches the loss scaler.
func exp64(x float64) float64 {
	if x > -708 && x <= 709 {
		return expPoly(x)
	}
	if x != x || x > 0 {
		return x + math.Inf(1)
	}
	return 0
}

// keepScale is scale where DropoutKeep(seed, i, p) holds and 0 elsewhere,
// computed without a branch because a random mask defeats the branch
// predictor: u >= p exactly when the rounded u-p has a clear sign bit.
// Multiplying by it, as PyTorch does, lets NaN and Inf through dropped
// elements so that overflow still reaches the loss scaler.
func keepScale(seed uint64, i int, p, scale float32) float32 {
	u := DropoutUniform(seed, uint64(i))
	return float32(1-math.Float32bits(u-p)>>31) * scale
}

// rowMax is the largest element of a non-empty row. It ignores NaNs, which
// the exponentials then propagate, because the builtin max's NaN handling
// made it the most expensive step of attention.
func rowMax(row []float32) float32 {
	m := row[0]
	for _, x := range row[1:] {
		if x > m {
			m = x
		}
	}
	return m
}

// expInto sets dst[j] = exp(src[j] - shift), rounded to float32, and
// returns the float64 sum of the unrounded values. dst may alias src, or be
// nil when only the sum is wanted.
func expInto(dst, src []float32, shift float64) float64 {
	if dst != nil {
		dst = dst[:len(src)]
	}
	var sum float64
	for j, v := range src {
		x := float64(v) - shift
		var e float64
		if x > -708 && x <= 709 {
			e = expPoly(x)
		} else {
			e = exp64(x)
		}
		sum += e
		if dst != nil {
			dst[j] = float32(e)
		}
	}
	return sum
}

// The standard normal CDF Phi is tabulated on [-phiRange, phiRange) as
// degree-7 Taylor polynomials about the centres of intervals of width
// 1/phiSteps. Truncation error is below 1e-8 relative even in the left
// tail, where 1+erf cancels, far under float32 resolution.
const (
	phiRange  = 6
	phiSteps  = 8
	phiDegree = 7
)

// phiTable's rows are indexed by interval; coefficients are for the
// variable s = phiSteps*(x - centre) in [-1/2, 1/2].
var phiTable = func() (tab [2 * phiRange * phiSteps][phiDegree + 1]float64) {
	// Phi^(n)(c) = (-1)^(n-1) He_{n-1}(c) phi(c), He the probabilists'
	// Hermite polynomials.
	for i := range tab {
		c := -phiRange + (float64(i)+0.5)/phiSteps
		pdf := math.Exp(-0.5*c*c) / math.Sqrt(2*math.Pi)
		tab[i][0] = 0.5 * math.Erfc(-c/math.Sqrt2)
		hePrev, he := 0.0, 1.0 // He_{n-2}, He_{n-1}
		sign, scale := 1.0, 1.0
		for n := 1; n <= phiDegree; n++ {
			scale /= float64(n) * phiSteps
			tab[i][n] = sign * he * pdf * scale
			hePrev, he = he, c*he-float64(n-1)*hePrev
			sign = -sign
		}
	}
	return tab
}()

// phiPoly is Phi(x) for u = phiSteps*(x+phiRange) in [0, 2*phiRange*phiSteps).
func phiPoly(u float64) float64 {
	j := int(u)
	s := u - float64(j) - 0.5
	a := &phiTable[j]
	return a[0] + s*(a[1]+s*(a[2]+s*(a[3]+s*(a[4]+s*(a[5]+s*(a[6]+s*a[7]))))))
}

// gelu sets dst = x*Phi(x) when dout is nil, else the backward dst =
// dout*(Phi(x) + x*phi(x)). Both are evaluated in float64 and rounded once;
// dst may alias x or dout. The AVX2 loop, where there is one, takes the
// elements inside the table's range and geluScalar the rest.
func gelu(dst, xs, dout []float32) {
	dst = dst[:len(xs)]
	if dout != nil {
		dout = dout[:len(xs)]
	}
	n, complete := geluVector(dst, xs, dout)
	if !complete {
		geluScalar(dst, xs, dout, 0, n, true)
	}
	geluScalar(dst, xs, dout, n, len(xs), false)
}

// geluScalar is gelu on elements [from, to), or only on those outside the
// table's range when outsideOnly is set.
func geluScalar(dst, xs, dout []float32, from, to int, outsideOnly bool) {
	for i := from; i < to; i++ {
		x := float64(xs[i])
		inside := x > -phiRange && x < phiRange
		if inside && outsideOnly {
			continue
		}
		var cdf float64
		if inside {
			cdf = phiPoly((x + phiRange) * phiSteps)
		} else {
			cdf = 0.5 * math.Erfc(-x/math.Sqrt2)
		}
		if dout == nil {
			dst[i] = float32(x * cdf)
			continue
		}
		var pdf float64
		if h := -0.5 * x * x; h > -708 {
			pdf = expPoly(h) * (1 / math.Sqrt(2*math.Pi))
		}
		dst[i] = float32(float64(dout[i]) * (cdf + x*pdf))
	}
}

// The float64 reductions below keep four partial sums so that the latency
// of one addition does not serialise the loop; the fixed split keeps the
// result deterministic.

// sum64 is sum(x) in float64.
func sum64(x []float32) float64 {
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(x); i += 4 {
		s0 += float64(x[i])
		s1 += float64(x[i+1])
		s2 += float64(x[i+2])
		s3 += float64(x[i+3])
	}
	for ; i < len(x); i++ {
		s0 += float64(x[i])
	}
	return (s0 + s1) + (s2 + s3)
}

// sumSqDev64 is sum((x-mu)^2) in float64.
func sumSqDev64(x []float32, mu float64) float64 {
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(x); i += 4 {
		d0, d1, d2, d3 := float64(x[i])-mu, float64(x[i+1])-mu, float64(x[i+2])-mu, float64(x[i+3])-mu
		s0 += d0 * d0
		s1 += d1 * d1
		s2 += d2 * d2
		s3 += d3 * d3
	}
	for ; i < len(x); i++ {
		d := float64(x[i]) - mu
		s0 += d * d
	}
	return (s0 + s1) + (s2 + s3)
}
