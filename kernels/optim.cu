// Fused AdamW: one read of p, g, m, v and one write of p, m, v per element
// (28 bytes/element; ~110M parameters = 3 GB, ~0.7 ms at 4.3 TB/s).
#include "common.cuh"

extern "C" {

// adamw_f32 is compute.Backend.AdamW exactly (the reference's
// optim/adamw.py): eps is added to the uncorrected sqrt(v), the bias
// corrections are folded into step_size = lr*sqrt(1-b2^t)/(1-b1^t) on the
// host in double, and decay = lr*wd is applied after the step. Each element
// is updated in double and stored as float, as the CPU does.
__global__ void adamw_f32(float* p, const float* g, float* m, float* v, double scale, double b1, double b2,
                          double eps, double step_size, double decay, i64 n) {
  FOR_N(i, n) {
    double gi = (double)g[i] * scale;
    double mi = b1 * (double)m[i] + (1.0 - b1) * gi;
    double vi = b2 * (double)v[i] + (1.0 - b2) * gi * gi;
    m[i] = (float)mi;
    v[i] = (float)vi;
    double pi = (double)p[i] - step_size * mi / (sqrt(vi) + eps);
    p[i] = (float)(pi - decay * pi);
  }
}

}  // extern "C"
