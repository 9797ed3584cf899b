/* matvec_avx512.c - AVX-512 matvec (decode) and small-batch matmul for F32,
 * BF16 and Q8 weights with f32 activations, plus the low-precision-activation
 * kernels (Q8 x Q8 with VNNI, BF16 x BF16 with vdpbf16ps).
 *
 * Legend
 *   W [rows, cols] row-major; x, X[t] f32 [cols]; y[r - row0] / Y[t * ldy + r].
 *   "w vector": 16 consecutive weights of one row, widened to f32 (BF16: shift
 *   into the high half; Q8: int8 -> f32 times the block's scale).
 *   matvec: RB rows at a time, one pass over each weight, x from L1.
 *   matmul: RB rows x TB tokens register tile; each w vector is loaded and
 *   widened once per tile and used for TB tokens; the RB rows stay in L1/L2
 *   while the tiles walk over the tokens.
 *   transposed matvec (y[c] = sum_r x_r W[r, c], y [cols]): blocks of TMV_NV
 *   column vectors of y stay in registers while the rows stream past; each
 *   weight is read once, y written once. Q8: x_r times the block scale is
 *   broadcast once per 32-block instead of scaling every weight vector.
 *   Column tails (cols % 16) use masked loads, which never touch memory past
 *   the masked-out lanes.
 *
 * Compiled with the AVX-512 flags (Makefile: *_avx512.c); only called when
 * cpu.c found the features.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <immintrin.h>

#include "hsum_avx512.h"
#include "kernels_impl.h"

#define AI static inline __attribute__((always_inline))

/* Software prefetch in the matvec (decode) kernels, two levels per row stream: into L1
 * (T0) one block of RB rows ahead, into L2 (T1) two blocks ahead. On this Xeon (model 207)
 * one thread keeps only ~16 lines in flight through L1, so without the L2 level a 4-row
 * stream runs at 0.78-0.95 of a plain sequential read. Cold random expert-shaped matrices
 * (tools: a 2-3 GB pool, one thread, thread CPU time), before -> after the T1 level, as a
 * fraction of a plain read in the same run: F32 256x1024 1.02 -> 1.10, BF16 256x1024
 * 0.95 -> 1.06, BF16 1024x256 0.91 -> 1.01, Q8 256x1024 0.78 -> 0.88 (T0 ahead at least
 * 4 KiB). A plain read leans on the hardware prefetcher alone, which these beat. */

/* 2026-12-03 (Zen 5): the T0 / T1 distances are at least MV_PF_D0 / MV_PF_D1 bytes, rounded up to
 * whole RB-row blocks (per row i, the line at the same column of row i + m RB): "one block
 * ahead" alone was 2 KiB for a 1024 x 256 BF16 down projection (4 rows of 512 bytes), less than
 * the memory's latency times its bandwidth (~100 ns x 30 GB/s = 3 KB), so short rows streamed at
 * 0.70 of a plain read against 0.90 for long ones. mv_pf_d[] are the run-time values (the
 * explore harness sets them). */
#ifndef MV_PF_D0
#define MV_PF_D0 4096
#endif
#ifndef MV_PF_D1
#define MV_PF_D1 16384
#endif
size_t mv_pf_d[2] = {MV_PF_D0, MV_PF_D1};

/* Byte distance, a whole number (>= 1) of blocks of blk bytes, that is at least d. */
AI size_t pf_ahead(size_t blk, size_t d) {
    size_t n = (d + blk - 1) / blk;
    return (n ? n : 1) * blk;
}

/* y[0..RB) = the horizontal sums of acc[0..RB) (RB = 4: one hsum4_ps, hsum_avx512.h). */
AI void mv_store(float *y, const __m512 *acc, int RB) {
    if (RB == 4) {
        _mm_storeu_ps(y, hsum4_ps(acc[0], acc[1], acc[2], acc[3]));
        return;
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) y[i] = _mm512_reduce_add_ps(acc[i]);
}

/* ---------------------------------------------------------------- weight loads */

/* Bytes between consecutive rows of W. */
static size_t row_stride(const mat *W) {
    switch (W->dtype) {
    case MAT_F32: return (size_t)W->cols * 4;
    case MAT_BF16: return (size_t)W->cols * 2;
    case MAT_Q8: return (size_t)(W->cols / QK8) * sizeof(block_q8);
    default: return mat_row_bytes(W->dtype, W->cols);
    }
}

/* Byte offset of column k in a row of dtype dt (Q8: inside its block's int8 values). */
AI size_t w_offset(int dt, int k) {
    return dt == MAT_F32 ? (size_t)k * 4 : dt == MAT_BF16 || dt == MAT_F16 ? (size_t)k * 2
         : dt == MAT_Q8_0 ? (size_t)(k >> 5) * sizeof(block_q8_0) + 2 + (k & 31)
         : dt == MAT_Q4_0 ? (size_t)(k >> 5) * sizeof(block_q4_0) + 2 + (k & 15)
                          : (size_t)(k >> 5) * sizeof(block_q8) + 4 + (k & 31);
}

/* 16 weights of a row starting at column k as f32; masked: only the lanes in m
 * are read (others are 0). dt is a compile-time constant after inlining. */
AI __m512 w_load(const char *row, int dt, int k, __mmask16 m, int masked) {
    if (dt == MAT_F32) {
        const float *p = (const float *)row + k;
        return masked ? _mm512_maskz_loadu_ps(m, p) : _mm512_loadu_ps(p);
    } else if (dt == MAT_BF16) {
        const uint16_t *p = (const uint16_t *)row + k;
        __m256i h = masked ? _mm256_maskz_loadu_epi16(m, p) : _mm256_loadu_si256((const __m256i *)p);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else if (dt == MAT_F16) {
        const uint16_t *p = (const uint16_t *)row + k;
        return _mm512_cvtph_ps(masked ? _mm256_maskz_loadu_epi16(m, p) : _mm256_loadu_si256((const __m256i *)p));
    } else if (dt == MAT_Q8_0) {   /* cols % 32 == 0: never masked */
        const block_q8_0 *b = (const block_q8_0 *)row + (k >> 5);
        __m128i q = _mm_loadu_si128((const __m128i *)(b->qs + (k & 31)));
        return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), _mm512_set1_ps(_cvtsh_ss(b->d)));
    } else if (dt == MAT_Q4_0) {   /* columns 0..15 of a block: low nibbles, 16..31: high */
        const block_q4_0 *b = (const block_q4_0 *)row + (k >> 5);
        __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b->qs));
        if (k & 16) q = _mm512_srli_epi32(q, 4);
        q = _mm512_sub_epi32(_mm512_and_si512(q, _mm512_set1_epi32(15)), _mm512_set1_epi32(8));
        return _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(_cvtsh_ss(b->d)));
    } else { /* Q8: cols % 32 == 0, so never masked */
        const block_q8 *b = (const block_q8 *)row + (k >> 5);
        __m128i q = _mm_loadu_si128((const __m128i *)(b->q + (k & 31)));
        return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), _mm512_set1_ps(b->scale));
    }
}

/* ---------------------------------------------------------------- matvec */

/* The T0 / T1 prefetch distances of a stream of blocks of blk bytes (mv_pf_d, whole blocks;
 * T1 at least one block past T0). */
AI void pf_dists(size_t blk, size_t *p0, size_t *p1) {
    size_t a = pf_ahead(blk, mv_pf_d[0]), b = pf_ahead(blk, mv_pf_d[1]);
    *p0 = a;
    *p1 = b > a ? b : a + blk;
}

/* RB rows starting at w (stride rs): y[i] = row_i . x. */
AI void mv_block(const char *w, size_t rs, int dt, int RB, const float *x, int cols, float *y, size_t p0, size_t p1) {
    __m512 acc[4];
    const char *row[4];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) { acc[i] = _mm512_setzero_ps(); row[i] = w + i * rs; }
    int kfull = cols & ~15, k = 0;
    for (; k < kfull; k += 16) {
        __m512 xv = _mm512_loadu_ps(x + k);
        if (dt == MAT_F32)
#pragma GCC unroll 4
            for (int i = 0; i < RB; i++) {
                _mm_prefetch(row[i] + (size_t)k * 4 + p0, _MM_HINT_T0);
                _mm_prefetch(row[i] + (size_t)k * 4 + p1, _MM_HINT_T1);
            }
        if ((dt == MAT_F16 || dt == MAT_Q8_0 || dt == MAT_Q4_0) && (k & 31) == 0)   /* <= 64 bytes per 32 columns */
#pragma GCC unroll 4
            for (int i = 0; i < RB; i++) {
                _mm_prefetch(row[i] + w_offset(dt, k) + p0, _MM_HINT_T0);
                _mm_prefetch(row[i] + w_offset(dt, k) + p1, _MM_HINT_T1);
            }
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) acc[i] = _mm512_fmadd_ps(w_load(row[i], dt, k, 0, 0), xv, acc[i]);
    }
    if (k < cols) {
        __mmask16 m = (__mmask16)((1u << (cols - k)) - 1);
        __m512 xv = _mm512_maskz_loadu_ps(m, x + k);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) acc[i] = _mm512_fmadd_ps(w_load(row[i], dt, k, m, 1), xv, acc[i]);
    }
    mv_store(y, acc, RB);
}

/* F16 rows, 32 columns (64 bytes) per step: two vcvtph2ps of one 512-bit load's halves,
 * prefetched once per line; the rest (< 32 columns) through mv_block's 16-wide loop. */
AI void mv_f16_block(const char *w, size_t rs, int RB, const float *x, int cols, float *y, size_t p0, size_t p1) {
    __m512 a0[4], a1[4];
    const char *row[4];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) { a0[i] = _mm512_setzero_ps(); a1[i] = _mm512_setzero_ps(); row[i] = w + i * rs; }
    int k32 = cols & ~31, k = 0;
    for (; k < k32; k += 32) {
        __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            _mm_prefetch(row[i] + (size_t)k * 2 + p0, _MM_HINT_T0);
            _mm_prefetch(row[i] + (size_t)k * 2 + p1, _MM_HINT_T1);
        }
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            __m512i v = _mm512_loadu_si512(row[i] + (size_t)k * 2);
            a0[i] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(v)), x0, a0[i]);
            a1[i] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1)), x1, a1[i]);
        }
    }
    for (; k + 16 <= cols; k += 16) {
        __m512 xv = _mm512_loadu_ps(x + k);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) a0[i] = _mm512_fmadd_ps(w_load(row[i], MAT_F16, k, 0, 0), xv, a0[i]);
    }
    if (k < cols) {
        __mmask16 m = (__mmask16)((1u << (cols - k)) - 1);
        __m512 xv = _mm512_maskz_loadu_ps(m, x + k);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) a0[i] = _mm512_fmadd_ps(w_load(row[i], MAT_F16, k, m, 1), xv, a0[i]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) a0[i] = _mm512_add_ps(a0[i], a1[i]);
    mv_store(y, a0, RB);
}

/* Q8 rows: per 32-block, the two 16-lane halves are dotted with x unscaled, then
 * the block's scale is applied once (one broadcast and FMA per block and row). */
AI __m512 q8_block_dot(const block_q8 *b, __m512 x0, __m512 x1, __m512 acc) {
    __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b->q)));
    __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b->q + 16))));
    __m512 t = _mm512_fmadd_ps(w1, x1, _mm512_mul_ps(w0, x0));
    return _mm512_fmadd_ps(t, _mm512_set1_ps(b->scale), acc);
}

/* The two-level prefetch of RB Q8 rows at block k: T0 / T1 whole 4-row blocks ahead, at
 * least mv_pf_d[0] / mv_pf_d[1] bytes (pf_dists). */
AI void q8_prefetch_rows(const block_q8 *w, int nb, int RB, int k, size_t p0, size_t p1) {
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) {
        const char *b = (const char *)(w + (size_t)i * nb + k);
        _mm_prefetch(b + p0, _MM_HINT_T0);
        _mm_prefetch(b + p1, _MM_HINT_T1);
    }
}

/* Q8 / Q8_0 rows against x held as int16 per 32-block (q8x_quantize): the block's 32
 * products are exact integers (vpmovsxbw + vpmaddwd, 16 int32 pair sums), then scaled by the
 * row block's scale and x's block scale: 5 vector µops per 32 weights against 7 when x
 * stays f32, which is what lets a Q8 stream keep up with memory on one thread. dt = MAT_Q8
 * (block_q8: f32 scale, 36 bytes) or MAT_Q8_0 (block_q8_0: f16 d, 34 bytes); w is the first
 * row, nb blocks per row. */
AI void mv_q8x16_block(const char *w, int dt, int nb, int RB, const int16_t *xq, const float *dx, float *y,
                       size_t p0, size_t p1) {
    const size_t bs = dt == MAT_Q8 ? sizeof(block_q8) : sizeof(block_q8_0), rs = (size_t)nb * bs;
    const size_t qo = dt == MAT_Q8 ? offsetof(block_q8, q) : offsetof(block_q8_0, qs);
    __m512 acc[4];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) acc[i] = _mm512_setzero_ps();
    for (int k = 0; k < nb; k++) {
        __m512i xv = _mm512_loadu_si512(xq + k * QK8);
        __m512 dxv = _mm512_set1_ps(dx[k]);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            const char *b = w + i * rs + k * bs;
            _mm_prefetch(b + p0, _MM_HINT_T0);
            _mm_prefetch(b + p1, _MM_HINT_T1);
        }
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            const char *b = w + i * rs + k * bs;
            __m512i wq = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(b + qo)));
            __m512 f = _mm512_cvtepi32_ps(_mm512_madd_epi16(wq, xv));
            __m512 sc = dt == MAT_Q8 ? _mm512_set1_ps(((const block_q8 *)b)->scale)
                                     : _mm512_cvtph_ps(_mm256_set1_epi16((short)((const block_q8_0 *)b)->d));
            acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(f, sc), dxv, acc[i]);
        }
    }
    mv_store(y, acc, RB);
}

#include "q8x_avx512.h"   /* q8x_quantize: x as int16 per 32-block for mv_q8x16_block */

AI void mv_q8_block(const block_q8 *w, int nb, int RB, const float *x, float *y, size_t p0, size_t p1) {
    __m512 acc[4];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) acc[i] = _mm512_setzero_ps();
    for (int k = 0; k < nb; k++) {
        __m512 x0 = _mm512_loadu_ps(x + k * QK8), x1 = _mm512_loadu_ps(x + k * QK8 + 16);
        q8_prefetch_rows(w, nb, RB, k, p0, p1);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) acc[i] = q8_block_dot(w + (size_t)i * nb + k, x0, x1, acc[i]);
    }
    mv_store(y, acc, RB);
}

/* BF16 rows, 32 columns per step without a widening shuffle: one 512-bit load
 * holds 16 (even, odd) pairs; shifting left by 16 gives the even columns as f32,
 * masking the low half gives the odd ones. x was split once into xe (even
 * columns) and xo (odd) for the first kfull columns; the rest (< 32 columns)
 * goes through the 16-wide masked path with the original x. */
AI void mv_bf16_block(const char *w, size_t rs, int RB, const float *xe, const float *xo, int kfull,
                      const float *x, int cols, float *y, size_t p0, size_t p1) {
    __m512 ae[4], ao[4];
    const char *row[4];
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) { ae[i] = _mm512_setzero_ps(); ao[i] = _mm512_setzero_ps(); row[i] = w + i * rs; }
    for (int k = 0; k < kfull; k += 32) {
        __m512 xev = _mm512_loadu_ps(xe + k / 2), xov = _mm512_loadu_ps(xo + k / 2);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            _mm_prefetch(row[i] + (size_t)k * 2 + p0, _MM_HINT_T0);
            _mm_prefetch(row[i] + (size_t)k * 2 + p1, _MM_HINT_T1);
        }
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            __m512i v = _mm512_loadu_si512((const uint16_t *)row[i] + k);
            ae[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), xev, ae[i]);
            ao[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, hi)), xov, ao[i]);
        }
    }
    int k = kfull;
    for (; k + 16 <= cols; k += 16) {
        __m512 xv = _mm512_loadu_ps(x + k);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) ae[i] = _mm512_fmadd_ps(w_load(row[i], MAT_BF16, k, 0, 0), xv, ae[i]);
    }
    if (k < cols) {
        __mmask16 m = (__mmask16)((1u << (cols - k)) - 1);
        __m512 xv = _mm512_maskz_loadu_ps(m, x + k);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) ae[i] = _mm512_fmadd_ps(w_load(row[i], MAT_BF16, k, m, 1), xv, ae[i]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) ae[i] = _mm512_add_ps(ae[i], ao[i]);
    mv_store(y, ae, RB);
}

/* Longest Q8 row whose int16 x goes on the stack (128 KiB); longer rows keep f32 x. */
#define Q8X16_MAX_COLS 65536
/* Longest row whose even/odd split of x goes on the stack (2 x 128 KiB). */
#define BF16_SPLIT_MAX_COLS 65536

static void mv_bf16(const mat *W, const float *x, float *y, int row0, int row1) {
    int cols = W->cols, kfull = cols & ~31;
    size_t rs = (size_t)cols * 2;
    const char *base = (const char *)W->data;
    float xe[kfull / 2 + 1], xo[kfull / 2 + 1];
    const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i io = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (int k = 0; k < kfull; k += 32) {
        __m512 a = _mm512_loadu_ps(x + k), b = _mm512_loadu_ps(x + k + 16);
        _mm512_storeu_ps(xe + k / 2, _mm512_permutex2var_ps(a, ie, b));
        _mm512_storeu_ps(xo + k / 2, _mm512_permutex2var_ps(a, io, b));
    }
    int r = row0;
    size_t p0, p1;
    pf_dists(4 * rs, &p0, &p1);
    for (; r + 4 <= row1; r += 4) mv_bf16_block(base + (size_t)r * rs, rs, 4, xe, xo, kfull, x, cols, y + (r - row0), p0, p1);
    for (; r < row1; r++) mv_bf16_block(base + (size_t)r * rs, rs, 1, xe, xo, kfull, x, cols, y + (r - row0), p0, p1);
}

AI void mv_dtype(const mat *W, int dt, const float *x, float *y, int row0, int row1) {
    size_t rs = row_stride(W), p0, p1;
    const char *base = (const char *)W->data;
    int r = row0;
    pf_dists(4 * rs, &p0, &p1);   /* once per call: a division each */
    if (dt == MAT_BF16 && W->cols >= 32 && W->cols <= BF16_SPLIT_MAX_COLS) {
        mv_bf16(W, x, y, row0, row1);
        return;
    }
    if (dt == MAT_Q8 || dt == MAT_Q8_0) {
        int nb = W->cols / QK8;
        if (W->cols <= Q8X16_MAX_COLS) {
            int16_t xq[W->cols];
            float dx[nb];
            if (q8x_quantize(x, W->cols, xq, dx)) {
                for (; r + 4 <= row1; r += 4) mv_q8x16_block(base + (size_t)r * rs, dt, nb, 4, xq, dx, y + (r - row0), p0, p1);
                for (; r < row1; r++) mv_q8x16_block(base + (size_t)r * rs, dt, nb, 1, xq, dx, y + (r - row0), p0, p1);
                return;
            }
        }
        if (dt == MAT_Q8) {
            for (; r + 4 <= row1; r += 4) mv_q8_block((const block_q8 *)(base + (size_t)r * rs), nb, 4, x, y + (r - row0), p0, p1);
            for (; r < row1; r++) mv_q8_block((const block_q8 *)(base + (size_t)r * rs), nb, 1, x, y + (r - row0), p0, p1);
            return;
        }
    }
    if (dt == MAT_F16 && W->cols >= 32) {
        for (; r + 4 <= row1; r += 4) mv_f16_block(base + (size_t)r * rs, rs, 4, x, W->cols, y + (r - row0), p0, p1);
        for (; r < row1; r++) mv_f16_block(base + (size_t)r * rs, rs, 1, x, W->cols, y + (r - row0), p0, p1);
        return;
    }
    for (; r + 4 <= row1; r += 4) mv_block(base + (size_t)r * rs, rs, dt, 4, x, W->cols, y + (r - row0), p0, p1);
    for (; r < row1; r++) mv_block(base + (size_t)r * rs, rs, dt, 1, x, W->cols, y + (r - row0), p0, p1);
}

void matvec_rows_avx512(const mat *W, const float *x, float *y, int row0, int row1) {
    switch (W->dtype) {
    case MAT_F32: mv_dtype(W, MAT_F32, x, y, row0, row1); break;
    case MAT_BF16: mv_dtype(W, MAT_BF16, x, y, row0, row1); break;
    case MAT_Q8: mv_dtype(W, MAT_Q8, x, y, row0, row1); break;
    case MAT_F16: mv_dtype(W, MAT_F16, x, y, row0, row1); break;
    case MAT_Q8_0: mv_dtype(W, MAT_Q8_0, x, y, row0, row1); break;
    default: mat_kernels_resolved(W->dtype, KSET_AVX512)->matvec(W, x, y, row0, row1); break;
    }
}

/* ---------------------------------------------------------------- matmul */

/* Register tile: 4 rows x TB tokens, TB <= 6 (24 accumulators, 4 weight vectors and one x
 * vector: 29 of the 32 zmm); each weight vector is loaded and widened once per tile and
 * used for its TB tokens. n tokens are split into ceil(n / 6) tiles of near-equal width
 * (n = 8: 4 + 4, not 6 + 2: a 2-token tile pays the widening of every weight for 2 FMAs).
 * Measured on Zen 5 (Q8 / BF16, 240 x 1024 hot, GFLOP/s): 4x6 138 / 154, 4x4 128 / 133,
 * 4x2 83 / 87, 3x8 112 / 140, 2x12 63 / 65 (2 x 12 runs out of general registers for the
 * 12 token pointers); so n = 8 runs 4x4 + 4x4 (Q8 128) instead of 4x6 + 4x2 (118). */
#define MM_RB 4
#define MM_TB 6

/* acc[i][t] += w row i (columns k..k+15) times token t; m / masked as w_load. */
AI void mm_step(const char *const *row, int dt, int RB, int TB, const float *const *xt, int k, __mmask16 m,
                int masked, __m512 acc[MM_RB][MM_TB]) {
    __m512 wv[MM_RB];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) wv[i] = w_load(row[i], dt, k, m, masked);
#pragma GCC unroll 8
    for (int t = 0; t < TB; t++) {
        __m512 xv = masked ? _mm512_maskz_loadu_ps(m, xt[t] + k) : _mm512_loadu_ps(xt[t] + k);
        /* x in a register, loaded once for the RB rows: gcc may otherwise fold the load into
         * each row's FMA (RB loads of one vector), which halved the speed of 3-row tiles on
         * Zen 5 (3 x 8 Q8 hot: 57-77 -> 107-115 GFLOP/s) */
        __asm__("" : "+v"(xv));
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
    }
}

/* Tile of RB rows (starting at absolute row r) x TB tokens (starting at t0). The first tile
 * of a row block (t0 = 0) is the one that brings the rows in from memory: it prefetches
 * the next row blocks as the matvec does (T0 one block ahead, T1 two), once per 64-byte
 * line (the k loop steps 32 columns: one line of BF16, 36 bytes of Q8, two of F32). */
AI void mm_tile(const char *w, size_t rs, int dt, int RB, int TB, const float *X, int cols,
                int t0, float *Y, int ldy, int r) {
    __m512 acc[MM_RB][MM_TB];
    const char *row[MM_RB];
    const float *xt[MM_TB];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) {
        row[i] = w + i * rs;
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) acc[i][t] = _mm512_setzero_ps();
    }
#pragma GCC unroll 8
    for (int t = 0; t < TB; t++) xt[t] = X + (size_t)(t0 + t) * cols;
    int k32 = cols & ~31, kfull = cols & ~15, k = 0;
    for (; k < k32; k += 32) {
        if (t0 == 0)
#pragma GCC unroll 4
            for (int i = 0; i < RB; i++) {
                const char *p = row[i] + w_offset(dt, k);
                _mm_prefetch(p + RB * rs, _MM_HINT_T0);
                _mm_prefetch(p + 2 * RB * rs, _MM_HINT_T1);
                if (dt == MAT_F32) {
                    _mm_prefetch(p + 64 + RB * rs, _MM_HINT_T0);
                    _mm_prefetch(p + 64 + 2 * RB * rs, _MM_HINT_T1);
                }
            }
        mm_step(row, dt, RB, TB, xt, k, 0, 0, acc);
        mm_step(row, dt, RB, TB, xt, k + 16, 0, 0, acc);
    }
    if (k < kfull) {
        mm_step(row, dt, RB, TB, xt, k, 0, 0, acc);
        k += 16;
    }
    if (k < cols) mm_step(row, dt, RB, TB, xt, k, (__mmask16)((1u << (cols - k)) - 1), 1, acc);
    if (TB == 1) {   /* as before: one plain reduction per row (matmul_rows with n = 1) */
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) Y[(size_t)t0 * ldy + r + i] = _mm512_reduce_add_ps(acc[i][0]);
        return;
    }
    /* outputs j = t * RB + i, four at a time */
    float out[MM_RB * MM_TB];
    int j = 0;
#pragma GCC unroll 8
    for (; j + 4 <= RB * TB; j += 4)
        _mm_storeu_ps(out + j, hsum4_ps(acc[j % RB][j / RB], acc[(j + 1) % RB][(j + 1) / RB],
                                        acc[(j + 2) % RB][(j + 2) / RB], acc[(j + 3) % RB][(j + 3) / RB]));
#pragma GCC unroll 4
    for (; j < RB * TB; j++) out[j] = _mm512_reduce_add_ps(acc[j % RB][j / RB]);
#pragma GCC unroll 8
    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) Y[(size_t)(t0 + t) * ldy + r + i] = out[t * RB + i];
}

/* All n tokens for RB rows: ceil(n / MM_TB) tiles, the wider ones first. */
AI void mm_rows(const char *w, size_t rs, int dt, int RB, const float *X, int n, int cols,
                float *Y, int ldy, int r) {
    int tiles = (n + MM_TB - 1) / MM_TB;
    for (int t = 0, left = n; left > 0; tiles--) {
        int tb = (left + tiles - 1) / tiles;
        switch (tb) {
        case 6: mm_tile(w, rs, dt, RB, 6, X, cols, t, Y, ldy, r); break;
        case 5: mm_tile(w, rs, dt, RB, 5, X, cols, t, Y, ldy, r); break;
        case 4: mm_tile(w, rs, dt, RB, 4, X, cols, t, Y, ldy, r); break;
        case 3: mm_tile(w, rs, dt, RB, 3, X, cols, t, Y, ldy, r); break;
        case 2: mm_tile(w, rs, dt, RB, 2, X, cols, t, Y, ldy, r); break;
        default: mm_tile(w, rs, dt, RB, 1, X, cols, t, Y, ldy, r); break;
        }
        t += tb;
        left -= tb;
    }
}

AI void mm_dtype(const mat *W, int dt, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    size_t rs = row_stride(W);
    const char *base = (const char *)W->data;
    int r = row0;
    for (; r + MM_RB <= row1; r += MM_RB) mm_rows(base + (size_t)r * rs, rs, dt, MM_RB, X, n, W->cols, Y, ldy, r);
    for (; r < row1; r++) mm_rows(base + (size_t)r * rs, rs, dt, 1, X, n, W->cols, Y, ldy, r);
}

void matmul_rows_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    switch (W->dtype) {
    case MAT_F32: mm_dtype(W, MAT_F32, X, n, Y, ldy, row0, row1); break;
    case MAT_BF16: mm_dtype(W, MAT_BF16, X, n, Y, ldy, row0, row1); break;
    case MAT_Q8: mm_dtype(W, MAT_Q8, X, n, Y, ldy, row0, row1); break;
    case MAT_F16: mm_dtype(W, MAT_F16, X, n, Y, ldy, row0, row1); break;
    case MAT_Q8_0: mm_dtype(W, MAT_Q8_0, X, n, Y, ldy, row0, row1); break;
    default: mat_kernels_resolved(W->dtype, KSET_AVX512)->matmul(W, X, n, Y, ldy, row0, row1); break;
    }
}

/* ---------------------------------------------------------------- transposed matvec */

/* Column vectors per register block: 16 x 16 = 256 columns of y in 16 accumulators
 * (half the zmm registers), looping over the rows inside; for rows of up to 256
 * columns (MLA's R = 256 here, 512 in DeepSeek-V3: two blocks) the weights are
 * read in one contiguous stream. */
#define TMV_NV 16
/* Software prefetch: the same columns TMV_PF_ROWS rows ahead; 0 = off. Measured
 * (64 x 256 head slices streamed from DRAM, 1 thread, 2 alternating runs): 8 vs 16
 * vectors per block 285/285 -> 237/252 us (BF16), 16 vectors + 4 rows of
 * prefetch 243/186 us (BF16) and 200/204 -> 162/152 us (Q8). */
#ifndef TMV_PF_ROWS
#define TMV_PF_ROWS 4
#endif

/* 16 weights of a row at column k as f32, Q8 without its scale (tmv_coef has it). */
AI __m512 tmv_load(const char *row, int dt, int k, __mmask16 m, int masked) {
    if (dt == MAT_Q8) {
        const block_q8 *b = (const block_q8 *)row + (k >> 5);
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b->q + (k & 31)))));
    }
    return w_load(row, dt, k, m, masked);
}

/* What the vector at column k of a row is multiplied by: x_r (Q8: x_r times the block's scale). */
AI __m512 tmv_coef(const char *row, int dt, int k, float xr) {
    if (dt == MAT_Q8) return _mm512_set1_ps(xr * ((const block_q8 *)row)[k >> 5].scale);
    return _mm512_set1_ps(xr);
}

/* y[c0, c0 + 16 NV) = sum over the nr rows starting at w (stride rs) of x_r row_r; when
 * masked, the last vector has only the lanes in m (read and written). The first row's
 * product starts the sum, as in the reference. */
AI void tmv_cols(const char *w, size_t rs, int dt, int NV, int masked, __mmask16 m, const float *x, int nr,
                 int c0, float *y) {
    __m512 acc[TMV_NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; v++) {
        int k = c0 + 16 * v;
        acc[v] = _mm512_mul_ps(tmv_load(w, dt, k, m, masked && v == NV - 1), tmv_coef(w, dt, k, x[0]));
    }
    for (int r = 1; r < nr; r++) {
        const char *row = w + (size_t)r * rs;
        if (TMV_PF_ROWS)
#pragma GCC unroll 16
            for (int v = 0; v < NV; v += dt == MAT_F32 ? 1 : 2)
                _mm_prefetch(row + TMV_PF_ROWS * rs + w_offset(dt, c0 + 16 * v), _MM_HINT_T0);
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++) {
            int k = c0 + 16 * v;
            acc[v] = _mm512_fmadd_ps(tmv_load(row, dt, k, m, masked && v == NV - 1), tmv_coef(row, dt, k, x[r]), acc[v]);
        }
    }
#pragma GCC unroll 16
    for (int v = 0; v < NV; v++) {
        if (masked && v == NV - 1) _mm512_mask_storeu_ps(y + c0 + 16 * v, m, acc[v]);
        else _mm512_storeu_ps(y + c0 + 16 * v, acc[v]);
    }
}

AI void tmv_dtype(const mat *W, int dt, const float *x, float *y, int row0, int row1) {
    size_t rs = row_stride(W);
    const char *w = (const char *)W->data + (size_t)row0 * rs;
    int cols = W->cols, nr = row1 - row0, c = 0;
    if (nr <= 0) {
        memset(y, 0, sizeof(float) * (size_t)cols);
        return;
    }
    for (; c + 16 * TMV_NV <= cols; c += 16 * TMV_NV) tmv_cols(w, rs, dt, TMV_NV, 0, 0, x, nr, c, y);
    for (; c + 16 <= cols; c += 16) tmv_cols(w, rs, dt, 1, 0, 0, x, nr, c, y);
    if (c < cols) tmv_cols(w, rs, dt, 1, 1, (__mmask16)((1u << (cols - c)) - 1), x, nr, c, y);
}

void matvec_t_rows_avx512(const mat *W, const float *x, float *y, int row0, int row1) {
    switch (W->dtype) {
    case MAT_F32: tmv_dtype(W, MAT_F32, x, y, row0, row1); break;
    case MAT_BF16: tmv_dtype(W, MAT_BF16, x, y, row0, row1); break;
    case MAT_Q8: tmv_dtype(W, MAT_Q8, x, y, row0, row1); break;
    case MAT_F16: tmv_dtype(W, MAT_F16, x, y, row0, row1); break;
    case MAT_Q8_0: tmv_dtype(W, MAT_Q8_0, x, y, row0, row1); break;
    case MAT_Q4_0: tmv_dtype(W, MAT_Q4_0, x, y, row0, row1); break;
    default: mat_kernels_resolved(W->dtype, KSET_AVX512)->matvec_t(W, x, y, row0, row1); break;
    }
}

/* ---------------------------------------------------------------- Q8 x Q8 (VNNI) */

/* One block: |w| (u8) times sign(w) * xq (s8), 4-byte groups summed into 8 int32
 * lanes by vpdpbusd, widened to f32 and scaled by dw * dx. Exact integer part. */
AI __m256 q8q8_block(const block_q8 *wb, __m256i xq, __m256 acc, float dx) {
    __m256i wq = _mm256_loadu_si256((const __m256i *)wb->q);
    __m256i ax = _mm256_abs_epi8(wq);
    __m256i sy = _mm256_sign_epi8(xq, wq);
    __m256i d = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(wb->scale * dx), acc);
}


void matvec_rows_q8q8_avx512vnni(const mat *W, const block_q8 *xq, float *y, int row0, int row1) {
    int nb = W->cols / QK8;
    const block_q8 *base = (const block_q8 *)W->data;
    int r = row0;
    size_t p0, p1;   /* the f32-activation kernels' two levels (was T0 only, MV_PF_Q8 ahead) */
    pf_dists(4 * (size_t)nb * sizeof(block_q8), &p0, &p1);
    for (; r + 4 <= row1; r += 4) {
        const block_q8 *w0 = base + (size_t)r * nb, *w1 = w0 + nb, *w2 = w1 + nb, *w3 = w2 + nb;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k < nb; k++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)xq[k].q);
            float dx = xq[k].scale;
            _mm_prefetch((const char *)(w0 + k) + p0, _MM_HINT_T0);
            _mm_prefetch((const char *)(w1 + k) + p0, _MM_HINT_T0);
            _mm_prefetch((const char *)(w2 + k) + p0, _MM_HINT_T0);
            _mm_prefetch((const char *)(w3 + k) + p0, _MM_HINT_T0);
            _mm_prefetch((const char *)(w0 + k) + p1, _MM_HINT_T1);
            _mm_prefetch((const char *)(w1 + k) + p1, _MM_HINT_T1);
            _mm_prefetch((const char *)(w2 + k) + p1, _MM_HINT_T1);
            _mm_prefetch((const char *)(w3 + k) + p1, _MM_HINT_T1);
            a0 = q8q8_block(w0 + k, xv, a0, dx);
            a1 = q8q8_block(w1 + k, xv, a1, dx);
            a2 = q8q8_block(w2 + k, xv, a2, dx);
            a3 = q8q8_block(w3 + k, xv, a3, dx);
        }
        y[r - row0] = hsum256(a0);
        y[r - row0 + 1] = hsum256(a1);
        y[r - row0 + 2] = hsum256(a2);
        y[r - row0 + 3] = hsum256(a3);
    }
    for (; r < row1; r++) {
        const block_q8 *w0 = base + (size_t)r * nb;
        __m256 a0 = _mm256_setzero_ps();
        for (int k = 0; k < nb; k++)
            a0 = q8q8_block(w0 + k, _mm256_loadu_si256((const __m256i *)xq[k].q), a0, xq[k].scale);
        y[r - row0] = hsum256(a0);
    }
}

/* ---------------------------------------------------------------- BF16 x BF16 (vdpbf16ps) */

/* 32 bf16 pairs per instruction; the products are exact in f32, the sums round. */
AI void bb_block(const uint16_t *w, size_t rs, int RB, const uint16_t *xb, int cols, float *y, size_t p0, size_t p1) {
    __m512 acc[4];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) acc[i] = _mm512_setzero_ps();
    int kfull = cols & ~31, k = 0;
    for (; k < kfull; k += 32) {
        __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + k);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {   /* the f32-activation kernels' two levels (was T0 only, 2 KiB ahead) */
            _mm_prefetch((const char *)(w + i * rs + k) + p0, _MM_HINT_T0);
            _mm_prefetch((const char *)(w + i * rs + k) + p1, _MM_HINT_T1);
        }
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++)
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_loadu_si512(w + i * rs + k), xv);
    }
    if (k < cols) {
        __mmask32 m = (__mmask32)((1ull << (cols - k)) - 1);
        __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(m, xb + k);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++)
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_maskz_loadu_epi16(m, w + i * rs + k), xv);
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) y[i] = _mm512_reduce_add_ps(acc[i]);
}

void matvec_rows_bf16bf16_avx512bf16(const mat *W, const uint16_t *xb, float *y, int row0, int row1) {
    size_t rs = (size_t)W->cols;
    const uint16_t *base = (const uint16_t *)W->data;
    int r = row0;
    size_t p0, p1;
    pf_dists(4 * rs * 2, &p0, &p1);
    for (; r + 4 <= row1; r += 4) bb_block(base + (size_t)r * rs, rs, 4, xb, W->cols, y + (r - row0), p0, p1);
    for (; r < row1; r++) bb_block(base + (size_t)r * rs, rs, 1, xb, W->cols, y + (r - row0), p0, p1);
}
