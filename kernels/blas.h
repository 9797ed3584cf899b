/* blas.h - the one matrix product moe takes from OpenBLAS (prefill attention).
 *
 * OpenBLAS is loaded at run time (dlopen "libopenblas.so.0") instead of linked, so that
 * moe can tell it which kernels to use before it initialises: OpenBLAS picks its kernels
 * from the CPU model in a constructor, and a build older than the CPU (Debian 12 ships
 * 0.3.21) falls back to its SSE3 "Prescott" kernels, about 4x slower on a current Xeon
 * (18 vs 90 GFLOP/s for a 512x1024x512 sgemm, one thread). blas_init sets
 * OPENBLAS_CORETYPE from our own CPUID check (AVX-512 -> SkylakeX, AVX2+FMA -> Haswell)
 * unless the environment already sets it, and OPENBLAS_NUM_THREADS=1 (moe's own pool
 * runs the products; OpenBLAS never starts threads beside it). Without the library, a
 * plain C product is used and blas_name() says so.
 *
 * Notation: row-major C [m, n] = alpha * A [m, k] * op(B) + beta * C, where op(B) is
 * B [k, n] (b_trans = 0) or the transpose of B [n, k] (b_trans = 1); lda, ldb, ldc are
 * the row strides in floats.
 */
#ifndef MOE_BLAS_H
#define MOE_BLAS_H

/* Loads OpenBLAS once (thread-safe; blas_sgemm calls it too). Call early, before other
 * threads read the environment: it may setenv. */
void blas_init(void);
/* "OpenBLAS (SkylakeX)" or "none: plain C sgemm (libopenblas.so.0 not found)". */
const char *blas_name(void);

void blas_sgemm(int b_trans, int m, int n, int k, float alpha, const float *A, int lda, const float *B, int ldb,
                float beta, float *C, int ldc);
/* The plain C product (the fallback, and the reference the tests compare with). */
void blas_sgemm_ref(int b_trans, int m, int n, int k, float alpha, const float *A, int lda, const float *B, int ldb,
                    float beta, float *C, int ldc);

#endif
