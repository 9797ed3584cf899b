/* attn_avx512.c - AVX-512 attn_block: one query's heads against a block of cache rows
 * (the definition and its scalar reference: kernels.h, ref.c attn_block_ref).
 *
 * Legend
 *   nh heads, W = R + dr values per cache row, n rows in the block, ld row stride (values).
 *   scores: register tile of 4 heads x 4 rows (16 accumulators); per 16-value chunk, 4 row
 *     vectors and 4 query vectors are loaded for 16 FMAs, so the loop is FMA-bound, not
 *     load-bound as one vec_dot per (head, row) is (2 loads per FMA). The 16 sums are
 *     reduced 4 at a time (hsum4). Rows and heads past the end repeat the last one and are
 *     not stored.
 *   exp: exp512_sub_max (exp_avx512.h, the loops softmax_avx512 uses too), per head over its n scores.
 *   mix: o[h][c] for 32 values c at a time and all heads (up to 8 per pass: 16
 *     accumulators), walking the n rows; each row chunk is loaded once for 8 heads and each
 *     e[h][j] broadcast once for 2 chunks. The block's rows (n * W values) stay in L2 across
 *     the R / 32 passes.
 *   bf16 rows are widened exactly (zero-extend, shift into the high half).
 *   Column tails (W % 16, R % 32) use masked loads: no access past a row.
 */
#include <math.h>
#include <stdint.h>
#include <immintrin.h>

#include "exp_avx512.h"
#include "kernels_impl.h"

#define AI static inline __attribute__((always_inline))

AI __mmask16 tail_mask(int rem) { return rem >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rem) - 1); }

/* 16 values of a row at c (masked), widened to f32. */
AI __m512 row_load(const void *row, int bf16, int c, __mmask16 k) {
    if (bf16) {
        __m256i h = _mm256_maskz_loadu_epi16(k, (const uint16_t *)row + c);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_maskz_loadu_ps(k, (const float *)row + c);
}

/* [sum a, sum b, sum c, sum d] */
AI __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(b), 1)));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(c), 1)));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(d), 1)));
    __m256 ab = _mm256_hadd_ps(a8, b8), cd = _mm256_hadd_ps(c8, d8);   /* a01 a23 b01 b23 | a45 a67 b45 b67 */
    __m256 abcd = _mm256_hadd_ps(ab, cd);                               /* a0-3 b0-3 c0-3 d0-3 | a4-7 ... */
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}


/* ---------------------------------------------------------------- scores */

/* s[h][j0..j0+4) for heads h0..h0+4 (clamped to the last head / row; only real ones stored). */
AI void score_tile(const float *qc, int nh, int W, const void *rows, int bf16, size_t ld, int n, int h0, int j0,
                   float scale, float *s) {
    const float *q[4];
    const char *r[4];
    size_t vb = bf16 ? 2 : 4;
    for (int i = 0; i < 4; i++) {
        int h = h0 + i < nh ? h0 + i : nh - 1, j = j0 + i < n ? j0 + i : n - 1;
        q[i] = qc + (size_t)h * W;
        r[i] = (const char *)rows + (size_t)j * ld * vb;
    }
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int a = 0; a < 4; a++)
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) acc[a][b] = _mm512_setzero_ps();
    for (int c = 0; c < W; c += 16) {
        __mmask16 k = tail_mask(W - c);
        __m512 x0 = row_load(r[0], bf16, c, k), x1 = row_load(r[1], bf16, c, k);
        __m512 x2 = row_load(r[2], bf16, c, k), x3 = row_load(r[3], bf16, c, k);
#pragma GCC unroll 4
        for (int a = 0; a < 4; a++) {
            __m512 qv = _mm512_maskz_loadu_ps(k, q[a] + c);
            acc[a][0] = _mm512_fmadd_ps(qv, x0, acc[a][0]);
            acc[a][1] = _mm512_fmadd_ps(qv, x1, acc[a][1]);
            acc[a][2] = _mm512_fmadd_ps(qv, x2, acc[a][2]);
            acc[a][3] = _mm512_fmadd_ps(qv, x3, acc[a][3]);
        }
    }
    float v[4][4];
#pragma GCC unroll 4
    for (int a = 0; a < 4; a++)
        _mm_storeu_ps(v[a], _mm_mul_ps(hsum4(acc[a][0], acc[a][1], acc[a][2], acc[a][3]), _mm_set1_ps(scale)));
    for (int a = 0; a < 4 && h0 + a < nh; a++)
        for (int b = 0; b < 4 && j0 + b < n; b++) s[(size_t)(h0 + a) * n + j0 + b] = v[a][b];
}


/* ---------------------------------------------------------------- mix */

/* o[h][c0..c0+32) for heads h0..h0+8 (clamped; only real heads stored). */
AI void mix_tile(const float *e, int nh, int R, const void *rows, int bf16, size_t ld, int n, int h0, int c0, float *o) {
    const float *eh[8];
    for (int a = 0; a < 8; a++) eh[a] = e + (size_t)(h0 + a < nh ? h0 + a : nh - 1) * n;
    __mmask16 k0 = tail_mask(R - c0), k1 = R - c0 > 16 ? tail_mask(R - c0 - 16) : 0;
    __m512 acc[8][2];
#pragma GCC unroll 8
    for (int a = 0; a < 8; a++) acc[a][0] = acc[a][1] = _mm512_setzero_ps();
    size_t vb = bf16 ? 2 : 4;
    const char *row = rows;
    for (int j = 0; j < n; j++, row += ld * vb) {
        __m512 x0 = row_load(row, bf16, c0, k0), x1 = row_load(row, bf16, c0 + 16, k1);
#pragma GCC unroll 8
        for (int a = 0; a < 8; a++) {
            __m512 w = _mm512_set1_ps(eh[a][j]);
            acc[a][0] = _mm512_fmadd_ps(w, x0, acc[a][0]);
            acc[a][1] = _mm512_fmadd_ps(w, x1, acc[a][1]);
        }
    }
#pragma GCC unroll 8
    for (int a = 0; a < 8; a++) {
        if (h0 + a >= nh) break;
        float *oh = o + (size_t)(h0 + a) * R + c0;
        _mm512_mask_storeu_ps(oh, k0, acc[a][0]);
        _mm512_mask_storeu_ps(oh + 16, k1, acc[a][1]);   /* k1 = 0: stores nothing */
    }
}

/* ---------------------------------------------------------------- the block */

/* bf16 a constant in each copy, so that the tiles' accumulators stay in registers */
AI void block(const float *qc, int nh, int W, int R, const void *rows, int bf16, size_t ld, int n, float scale,
              float *scratch, float *m, float *l, float *o) {
    for (int j0 = 0; j0 < n; j0 += 4)
        for (int h0 = 0; h0 < nh; h0 += 4) score_tile(qc, nh, W, rows, bf16, ld, n, h0, j0, scale, scratch);
    for (int h = 0; h < nh; h++) exp512_sub_max(scratch + (size_t)h * n, n, m + h, l + h);
    for (int h0 = 0; h0 < nh; h0 += 8)
        for (int c0 = 0; c0 < R; c0 += 32) mix_tile(scratch, nh, R, rows, bf16, ld, n, h0, c0, o);
}

void attn_block_avx512(const float *qc, int nh, int W, int R, const void *rows, int bf16, size_t ld, int n, float scale,
                       float *scratch, float *m, float *l, float *o) {
    if (bf16) block(qc, nh, W, R, rows, 1, ld, n, scale, scratch, m, l, o);
    else block(qc, nh, W, R, rows, 0, ld, n, scale, scratch, m, l, o);
}
