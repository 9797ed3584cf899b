/* cpu.c - CPU feature detection and the choice of kernel variants.
 * For now every entry point forwards to the scalar reference; optimized
 * variants register here. */
#include "kernels.h"

static cpu_features features;
static int features_ready;
static int force_scalar;

const cpu_features *cpu_get_features(void) {
    if (!features_ready) {
        __builtin_cpu_init();
        features.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        features.avx512f = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
        features_ready = 1;
    }
    return &features;
}

void cpu_force_scalar(int on) { force_scalar = on; }
const char *cpu_kernel_name(void) { return "scalar"; }

void matvec_rows(const mat *W, const float *x, float *y, int row0, int row1) {
    matvec_rows_ref(W, x, y, row0, row1);
}
void matmul_rows(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    matmul_rows_ref(W, X, n, Y, ldy, row0, row1);
}
void rmsnorm(float *out, const float *x, const float *w, int n, float eps) { rmsnorm_ref(out, x, w, n, eps); }
void softmax(float *x, int n) { softmax_ref(x, n); }
void silu_mul(float *gate, const float *up, int n) { silu_mul_ref(gate, up, n); }
