/* blas.c - OpenBLAS's sgemm loaded at run time, with its kernels chosen by us (blas.h).
 *
 * Notation as in blas.h: C [m, n] = alpha A [m, k] op(B) + beta C, row-major.
 */
#include "blas.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels.h"

/* cblas_sgemm's enums (cblas.h): row-major 101, no-transpose 111, transpose 112 */
enum { CBLAS_ROW_MAJOR = 101, CBLAS_NO_TRANS = 111, CBLAS_TRANS = 112 };
typedef void (*cblas_sgemm_fn)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *A,
                               int lda, const float *B, int ldb, float beta, float *C, int ldc);

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static cblas_sgemm_fn openblas_sgemm;      /* NULL: the plain C product */
static char blas_desc[96] = "not loaded";

static void blas_load(void) {
    /* before OpenBLAS's constructor runs: its kernels, and no threads of its own */
    if (!getenv("OPENBLAS_CORETYPE")) {
        const cpu_features *f = cpu_get_features();
        if (f->avx512f && f->avx2_fma) setenv("OPENBLAS_CORETYPE", "SkylakeX", 0);
        else if (f->avx2_fma) setenv("OPENBLAS_CORETYPE", "Haswell", 0);
    }
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    void *lib = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!lib) lib = dlopen("libopenblas.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(blas_desc, sizeof blas_desc, "none: plain C sgemm (libopenblas.so.0 not found)");
        return;
    }
    openblas_sgemm = (cblas_sgemm_fn)dlsym(lib, "cblas_sgemm");
    char *(*corename)(void) = (char *(*)(void))dlsym(lib, "openblas_get_corename");
    void (*set_threads)(int) = (void (*)(int))dlsym(lib, "openblas_set_num_threads");
    if (set_threads) set_threads(1);
    if (!openblas_sgemm) snprintf(blas_desc, sizeof blas_desc, "none: plain C sgemm (no cblas_sgemm in OpenBLAS)");
    else snprintf(blas_desc, sizeof blas_desc, "OpenBLAS (%s)", corename ? corename() : "?");
}

void blas_init(void) { pthread_once(&blas_once, blas_load); }

const char *blas_name(void) {
    blas_init();
    return blas_desc;
}

void blas_sgemm_ref(int b_trans, int m, int n, int k, float alpha, const float *A, int lda, const float *B, int ldb,
                    float beta, float *C, int ldc) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int p = 0; p < k; p++) s += A[(size_t)i * lda + p] * (b_trans ? B[(size_t)j * ldb + p] : B[(size_t)p * ldb + j]);
            float *c = &C[(size_t)i * ldc + j];
            *c = alpha * s + (beta == 0.0f ? 0.0f : beta * *c);   /* beta 0: C may hold garbage, as in BLAS */
        }
}

void blas_sgemm(int b_trans, int m, int n, int k, float alpha, const float *A, int lda, const float *B, int ldb,
                float beta, float *C, int ldc) {
    blas_init();
    if (openblas_sgemm)
        openblas_sgemm(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, b_trans ? CBLAS_TRANS : CBLAS_NO_TRANS, m, n, k, alpha, A, lda,
                       B, ldb, beta, C, ldc);
    else
        blas_sgemm_ref(b_trans, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
