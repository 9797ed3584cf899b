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
/* 1 when matvec_rows would quantize x to block_q8_K for W (k-quant weights, a SIMD kernel
 * set, cols <= KQ_MAX_COLS): threadpool.c then quantizes once per call. */
int cpu_q8K_path(const mat *W);
/* The kernels of type dt for kernel set kset with every NULL filled from the simpler sets
 * (avx512 -> avx2 -> scalar); what the per-ISA entry points use for types they do not
 * handle themselves. */
const mat_kernels *mat_kernels_resolved(mat_dtype dt, int kset);
/* Scale and min of sub-block j (0..7) of a Q4_K / Q5_K block's 12 packed bytes. */
void kq_scale_min(int j, const uint8_t *scales, uint8_t *sc, uint8_t *m);

/* Longest row of k-quant weights whose x the matvec kernels quantize on their own stack
 * (256 blocks of 292 bytes = 73 KiB); longer rows take the f32 reference. */
#define KQ_MAX_COLS 65536
/* Bytes of quantized X (block_q8_K rows) the k-quant matmul kernels keep on their stack per
 * pass over the rows (fits L2; tokens per pass = this / row bytes, at least 1). */
#define KQ_MATMUL_X_BYTES (256 * 1024)

/* ---------------------------------------------------------------- AVX-512 */

void matvec_rows_avx512(const mat *W, const float *x, float *y, int row0, int row1);
void matmul_rows_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);
void matvec_t_rows_avx512(const mat *W, const float *x, float *y, int row0, int row1);
/* matvec_q8p_avx512.c: MAT_Q8P on int16 x (each token bit for bit as alone; reference: matvec_rows_ref) */
void matvec_rows_q8p_avx512(const mat *W, const float *x, float *y, int row0, int row1);
void matmul_rows_q8p_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);
/* tests: 0 = the vpmaddwd + vpaddd path even where CPUID has VNNI, 1 = vpdpwssd if it has, -1 = CPUID */
void q8p_set_vnni(int on);
void matvec_rows_q8q8_avx512vnni(const mat *W, const block_q8 *xq, float *y, int row0, int row1);
void matvec_rows_bf16bf16_avx512bf16(const mat *W, const uint16_t *xb, float *y, int row0, int row1);
/* matmul_lowp_avx512.c: the matmul forms (each token bit-identical to the matvec above; the
 * plain _avx512 Q8 one is for AVX-512 without VNNI and equals matvec_rows_q8q8_avx2). */
void matmul_rows_q8q8_avx512vnni(const mat *W, const block_q8 *XQ, int n, float *Y, int ldy, int row0, int row1);
void matmul_rows_q8q8_avx512(const mat *W, const block_q8 *XQ, int n, float *Y, int ldy, int row0, int row1);
void matmul_rows_bf16bf16_avx512bf16(const mat *W, const uint16_t *XB, int n, float *Y, int ldy, int row0, int row1);

void rmsnorm_avx512(float *out, const float *x, const float *w, int n, float eps);
void softmax_avx512(float *x, int n);
void silu_mul_avx512(float *gate, const float *up, int n);
float vec_dot_avx512(const float *a, const float *b, int n);
void vec_axpy_avx512(float *y, float a, const float *x, int n);
float vec_dot_bf16_avx512(const float *a, const uint16_t *b, int n);
void attn_block_avx512(const float *qc, int nh, int W, int R, const void *rows, int bf16, size_t ld, int n, float scale,
                       float *scratch, float *m, float *l, float *o);
void attn_block_avx512bf16(const float *qc, int nh, int W, int R, const void *rows, int bf16, size_t ld, int n,
                           float scale, float *scratch, float *m, float *l, float *o);
void vec_axpy_bf16_avx512(float *y, float a, const uint16_t *x, int n);
int vec_argmax_avx512(const float *x, int n);
void router_topk_avx512(const float *x, int n, int k, int *idx);
void router_topk_avx2(const float *x, int n, int k, int *idx);
void quantize_row_q8_avx512(const float *x, block_q8 *out, int n);
void quantize_row_bf16_avx512(const float *x, uint16_t *out, int n);
int quantize_row_q8_K_avx512(const float *x, block_q8_K *out, int n);

/* k-quants (matvec_kq_avx512.c): the integer kernels (VNNI vpdpwssd when present) and the
 * f32-x entry points that quantize x first. */
void matvec_rows_q4k_avx512(const mat *W, const float *x, float *y, int row0, int row1);
void matmul_rows_q4k_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);
void matvec_rows_q8K_q4k_avx512(const mat *W, const block_q8_K *xq, float *y, int row0, int row1);
void matmul_rows_q8K_q4k_avx512(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1);
void matvec_rows_q5k_avx512(const mat *W, const float *x, float *y, int row0, int row1);
void matmul_rows_q5k_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);
void matvec_rows_q8K_q5k_avx512(const mat *W, const block_q8_K *xq, float *y, int row0, int row1);
void matmul_rows_q8K_q5k_avx512(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1);
void matvec_rows_q6k_avx512(const mat *W, const float *x, float *y, int row0, int row1);
void matmul_rows_q6k_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);
void matvec_rows_q8K_q6k_avx512(const mat *W, const block_q8_K *xq, float *y, int row0, int row1);
void matmul_rows_q8K_q6k_avx512(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1);

/* Q4_0 / Q5_0 x int8 activations (matvec_q4_0_avx512.c; VNNI vpdpbusd when present). */
void matvec_rows_q4_0_avx512(const mat *W, const float *x, float *y, int row0, int row1);
void matmul_rows_q4_0_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);
void matvec_rows_q5_0_avx512(const mat *W, const float *x, float *y, int row0, int row1);
void matmul_rows_q5_0_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);

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
float vec_dot_bf16_avx2(const float *a, const uint16_t *b, int n);
void vec_axpy_bf16_avx2(float *y, float a, const uint16_t *x, int n);
void quantize_row_q8_avx2(const float *x, block_q8 *out, int n);
int quantize_row_q8_K_avx2(const float *x, block_q8_K *out, int n);

/* k-quants (matvec_kq_avx2.c), as the AVX-512 ones. */
void matvec_rows_q4k_avx2(const mat *W, const float *x, float *y, int row0, int row1);
void matmul_rows_q4k_avx2(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);
void matvec_rows_q8K_q4k_avx2(const mat *W, const block_q8_K *xq, float *y, int row0, int row1);
void matmul_rows_q8K_q4k_avx2(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1);
void matvec_rows_q6k_avx2(const mat *W, const float *x, float *y, int row0, int row1);
void matmul_rows_q6k_avx2(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);
void matvec_rows_q8K_q6k_avx2(const mat *W, const block_q8_K *xq, float *y, int row0, int row1);
void matmul_rows_q8K_q6k_avx2(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1);

/* router_topk's SIMD sets (router_avx2.c, router_avx512.c): the sorted insert of one candidate. */
/* Candidate j enters if fewer than k are held or it beats the last (strictly: an equal value
 * seen later has a higher index and ranks after). */
static inline void topk_insert(const float *x, int *idx, int *have, int k, int j) {
    int p;
    if (*have < k) p = (*have)++;
    else if (x[j] > x[idx[k - 1]]) p = k - 1;
    else return;
    while (p > 0 && x[j] > x[idx[p - 1]]) { idx[p] = idx[p - 1]; p--; }
    idx[p] = j;
}

#endif
