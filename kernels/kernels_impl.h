/* kernels_impl.h - the optimized variants behind the dispatching entry points.
 *
 * Internal to kernels/ (and tests/test_kernels.c, which checks each variant
 * against its reference directly). The engine calls the un-suffixed names in
 * kernels.h; kernels/cpu.c picks one of these once, from CPUID.
 *
 *   *_avx512   AVX-512 F/BW/VL/DQ (+ BF16 / VNNI for the low-precision kernels)
 *   *_avx2     AVX2 + FMA
 */
#ifndef MOE_KERNELS_IMPL_H
#define MOE_KERNELS_IMPL_H

#include "kernels.h"

/* MAT_Q8 / MAT_BF16 when matvec_rows would use low-precision activations for W, else 0. */
int cpu_lowp_kind(const mat *W);

/* ---------------------------------------------------------------- AVX-512 */

void matvec_rows_avx512(const mat *W, const float *x, float *y, int row0, int row1);
void matmul_rows_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);
void matvec_t_rows_avx512(const mat *W, const float *x, float *y, int row0, int row1);
void matvec_rows_q8q8_avx512vnni(const mat *W, const block_q8 *xq, float *y, int row0, int row1);
void matvec_rows_bf16bf16_avx512bf16(const mat *W, const uint16_t *xb, float *y, int row0, int row1);

void rmsnorm_avx512(float *out, const float *x, const float *w, int n, float eps);
void softmax_avx512(float *x, int n);
void silu_mul_avx512(float *gate, const float *up, int n);
float vec_dot_avx512(const float *a, const float *b, int n);
void vec_axpy_avx512(float *y, float a, const float *x, int n);
int vec_argmax_avx512(const float *x, int n);
void quantize_row_q8_avx512(const float *x, block_q8 *out, int n);
void quantize_row_bf16_avx512(const float *x, uint16_t *out, int n);

/* ---------------------------------------------------------------- AVX2 + FMA */

void matvec_rows_avx2(const mat *W, const float *x, float *y, int row0, int row1);
void matmul_rows_avx2(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);
void matvec_t_rows_avx2(const mat *W, const float *x, float *y, int row0, int row1);
void matvec_rows_q8q8_avx2(const mat *W, const block_q8 *xq, float *y, int row0, int row1);

void rmsnorm_avx2(float *out, const float *x, const float *w, int n, float eps);
void softmax_avx2(float *x, int n);
void silu_mul_avx2(float *gate, const float *up, int n);
float vec_dot_avx2(const float *a, const float *b, int n);
void vec_axpy_avx2(float *y, float a, const float *x, int n);
void quantize_row_q8_avx2(const float *x, block_q8 *out, int n);

#endif
