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
#include <string.h>
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
    size_t row_bytes = ld * (bf16 ? 2 : 4);
    for (int j0 = 0; j0 < n; j0 += 4) {
        /* rows 8 ahead on their way (as the vdpbf16ps kernel: PF_ROWS) */
        uintptr_t pf = (uintptr_t)rows + (size_t)(j0 + 8) * row_bytes;
        for (size_t b = 0; b < 4 * row_bytes; b += 64) _mm_prefetch((const char *)(pf + b), _MM_HINT_T0);
        for (int h0 = 0; h0 < nh; h0 += 4) score_tile(qc, nh, W, rows, bf16, ld, n, h0, j0, scale, scratch);
    }
    for (int h = 0; h < nh; h++) exp512_sub_max(scratch + (size_t)h * n, n, m + h, l + h);
    for (int h0 = 0; h0 < nh; h0 += 8)
        for (int c0 = 0; c0 < R; c0 += 32) mix_tile(scratch, nh, R, rows, bf16, ld, n, h0, c0, o);
}

void attn_block_avx512(const float *qc, int nh, int W, int R, const void *rows, int bf16, size_t ld, int n, float scale,
                       float *scratch, float *m, float *l, float *o) {
    if (bf16) block(qc, nh, W, R, rows, 1, ld, n, scale, scratch, m, l, o);
    else block(qc, nh, W, R, rows, 0, ld, n, scale, scratch, m, l, o);
}

/* ================================================================ bf16 rows by vdpbf16ps
 * attn_block_avx512bf16 (AVX512_BF16; reference attn_block_bf16_ref): bf16 rows are dotted in
 * bf16 pairs, 32 multiply-adds per instruction (twice the f32 FMA's 16):
 *   qb[h]   = bf16(qc[h]), zero-padded to Wp = W rounded up to 32        (scratch, after pb)
 *   scores: tile of 4 heads x 4 rows, 16 accumulators; per 32-value chunk 4 row loads and 4
 *     query loads for 16 vdpbf16ps. The 16 sums leave by one transpose-add (sum16: 30
 *     shuffles, 15 adds) as one vector [head a][row b] at lane 4a + b. The pass prefetches
 *     the rows PF_ROWS ahead (past the block's end: the next block's first rows): without it
 *     the pass waited on DRAM (tools/bench/attn_bench at depth 16384: 20.4 ms per token's
 *     8 layers on one thread, 5.2 ms with it; in L2 10 us per block either way).
 *   exp: e = bf16(exp(s - m)) per head; scratch [nh][n] gets e (as f32), pb [nh][n2] the same
 *     values as bf16 (n2 = n rounded up to even, the pad 0); l = sum of the rounded e.
 *   mix: o[h][c] for 32 values c and 8 heads (16 accumulators) over row pairs (j, j+1):
 *     the two rows' 32 values interleaved (unpacklo / unpackhi_epi16: value pairs
 *     (row_j[c], row_j+1[c])), one vdpbf16ps with the pair (e[h][j], e[h][j+1]) broadcast.
 *     unpack leaves the values in the order [0-3, 8-11, 16-19, 24-27] / [4-7, 12-15, ...]:
 *     put back by two permutes before the store. An odd n pairs the last row with zeros. */

AI __mmask32 tail_mask32(int rem) { return rem >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << rem) - 1); }

/* lane 4a + b of the result = the sum of the 16 lanes of v[4a + b] */
AI __m512 sum16(__m512 v[16]) {
    __m512 t[8], u[4], z[2];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)   /* per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3] */
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)   /* per 128-bit lane: [a, b, c, d] partial sums */
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44), _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++)   /* lanes [u0 L0+L2, u0 L1+L3, u1 L0+L2, u1 L1+L3] */
        z[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x44), _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(z[0], z[1], 0x88), _mm512_shuffle_f32x4(z[0], z[1], 0xDD));
}

AI __m512bh as_bh(__m512i x) { return (__m512bh)x; }

/* the bf16 pair p[0], p[1] in every 32-bit lane */
AI __m512bh pair_bcast(const uint16_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return as_bh(_mm512_set1_epi32(v));
}

/* acc[4a + b] += q[a][c..c+32) . r[b][c..c+32) (k: the values in the row) */
AI void score_chunk(__m512 acc[16], const uint16_t *const q[4], const uint16_t *const r[4], int c, __mmask32 k) {
    __m512i x0 = _mm512_maskz_loadu_epi16(k, r[0] + c), x1 = _mm512_maskz_loadu_epi16(k, r[1] + c);
    __m512i x2 = _mm512_maskz_loadu_epi16(k, r[2] + c), x3 = _mm512_maskz_loadu_epi16(k, r[3] + c);
#pragma GCC unroll 4
    for (int a = 0; a < 4; a++) {
        __m512bh qv = as_bh(_mm512_loadu_si512(q[a] + c));   /* zero past W */
        acc[4 * a + 0] = _mm512_dpbf16_ps(acc[4 * a + 0], qv, as_bh(x0));
        acc[4 * a + 1] = _mm512_dpbf16_ps(acc[4 * a + 1], qv, as_bh(x1));
        acc[4 * a + 2] = _mm512_dpbf16_ps(acc[4 * a + 2], qv, as_bh(x2));
        acc[4 * a + 3] = _mm512_dpbf16_ps(acc[4 * a + 3], qv, as_bh(x3));
    }
}

/* s[h][j0..j0+4) for heads h0..h0+4 (clamped; only real ones stored). */
AI void score_tile_dp(const uint16_t *qb, int Wp, int nh, int W, const uint16_t *rows, size_t ld, int n, int h0, int j0,
                      float scale, float *s) {
    const uint16_t *q[4], *r[4];
    for (int i = 0; i < 4; i++) {
        int h = h0 + i < nh ? h0 + i : nh - 1, j = j0 + i < n ? j0 + i : n - 1;
        q[i] = qb + (size_t)h * Wp;
        r[i] = rows + (size_t)j * ld;
    }
    __m512 acc[16];
#pragma GCC unroll 16
    for (int a = 0; a < 16; a++) acc[a] = _mm512_setzero_ps();
    int c = 0;
#pragma GCC unroll 3
    for (; c + 32 <= W; c += 32) score_chunk(acc, q, r, c, (__mmask32)0xFFFFFFFFu);
    if (c < W) score_chunk(acc, q, r, c, tail_mask32(W - c));
    __m512 v = _mm512_mul_ps(sum16(acc), _mm512_set1_ps(scale));
    __mmask8 kr = (__mmask8)(n - j0 >= 4 ? 0xF : (1u << (n - j0)) - 1);
    _mm_mask_storeu_ps(s + (size_t)h0 * n + j0, kr, _mm512_castps512_ps128(v));   /* head h0: lanes 0..3 */
    if (h0 + 1 < nh) _mm_mask_storeu_ps(s + (size_t)(h0 + 1) * n + j0, kr, _mm512_extractf32x4_ps(v, 1));
    if (h0 + 2 < nh) _mm_mask_storeu_ps(s + (size_t)(h0 + 2) * n + j0, kr, _mm512_extractf32x4_ps(v, 2));
    if (h0 + 3 < nh) _mm_mask_storeu_ps(s + (size_t)(h0 + 3) * n + j0, kr, _mm512_extractf32x4_ps(v, 3));
}

/* One head: e = bf16(exp(s - max)) over n scores in place (as f32) and into pb (bf16, padded
 * to even with 0); *max, *sum = the sum of the rounded e. */
AI void exp_bf16(float *x, uint16_t *pb, int n, float *max, float *sum) {
    __m512 ninf = _mm512_set1_ps(-INFINITY);
    float mval = max512(x, n);
    __m512 m = _mm512_set1_ps(mval), s = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        __mmask16 t = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m256i eb = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_mov_ps(t, exp512(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, t, x + i), m))));
        __m512 e = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(eb), 16));
        _mm512_mask_storeu_ps(x + i, t, e);
        _mm256_mask_storeu_epi16(pb + i, t, eb);
        s = _mm512_add_ps(s, e);
    }
    if (n & 1) pb[n] = 0;
    *max = mval;
    *sum = _mm512_reduce_add_ps(s);
}

/* o[h][c0..c0+32) for heads h0..h0+8 (clamped; only real heads stored). */
AI void mix_tile_dp(const uint16_t *pb, int n2, int nh, int R, const uint16_t *rows, size_t ld, int n, int h0, int c0,
                    float *o) {
    const uint16_t *eh[8];   /* read as (e[h][j], e[h][j+1]) pairs */
    for (int a = 0; a < 8; a++) eh[a] = pb + (size_t)(h0 + a < nh ? h0 + a : nh - 1) * n2;
    __mmask32 k = tail_mask32(R - c0);
    __m512 acc[8][2];
#pragma GCC unroll 8
    for (int a = 0; a < 8; a++) acc[a][0] = acc[a][1] = _mm512_setzero_ps();
    const uint16_t *row = rows + c0;
    int j = 0;
    for (; j + 2 <= n; j += 2, row += 2 * ld) {
        __m512i x0 = _mm512_maskz_loadu_epi16(k, row), x1 = _mm512_maskz_loadu_epi16(k, row + ld);
        __m512bh lo = as_bh(_mm512_unpacklo_epi16(x0, x1)), hi = as_bh(_mm512_unpackhi_epi16(x0, x1));
#pragma GCC unroll 8
        for (int a = 0; a < 8; a++) {
            __m512bh w = pair_bcast(eh[a] + j);
            acc[a][0] = _mm512_dpbf16_ps(acc[a][0], w, lo);
            acc[a][1] = _mm512_dpbf16_ps(acc[a][1], w, hi);
        }
    }
    if (j < n) {   /* the last row, paired with zeros (e's pad is 0) */
        __m512i x0 = _mm512_maskz_loadu_epi16(k, row), z = _mm512_setzero_si512();
        __m512bh lo = as_bh(_mm512_unpacklo_epi16(x0, z)), hi = as_bh(_mm512_unpackhi_epi16(x0, z));
#pragma GCC unroll 8
        for (int a = 0; a < 8; a++) {
            __m512bh w = pair_bcast(eh[a] + j);
            acc[a][0] = _mm512_dpbf16_ps(acc[a][0], w, lo);
            acc[a][1] = _mm512_dpbf16_ps(acc[a][1], w, hi);
        }
    }
    const __m512i i0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i i1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    __mmask16 k0 = (__mmask16)k, k1 = (__mmask16)(k >> 16);
#pragma GCC unroll 8
    for (int a = 0; a < 8; a++) {
        if (h0 + a >= nh) break;
        float *oh = o + (size_t)(h0 + a) * R + c0;
        _mm512_mask_storeu_ps(oh, k0, _mm512_permutex2var_ps(acc[a][0], i0, acc[a][1]));
        _mm512_mask_storeu_ps(oh + 16, k1, _mm512_permutex2var_ps(acc[a][0], i1, acc[a][1]));
    }
}

/* The passes are separate functions, each with only its own constants live, so that the
 * tiles' 16 accumulators stay in registers (inlined into one, gcc kept exp512's constants
 * in registers across the score loop and spilled 3 accumulators to the stack). */
#ifndef PF_ROWS
#define PF_ROWS 8   /* software prefetch distance of the score pass, rows */
#endif
__attribute__((noinline)) static void score_pass(const uint16_t *qb, int Wp, int nh, int W, const uint16_t *rows, size_t ld,
                                                 int n, float scale, float *s) {
    size_t row_bytes = ld * 2;
    for (int j0 = 0; j0 < n; j0 += 4) {
        /* rows j0 + PF_ROWS .. + 4 on their way (at the block's end: the next block's first rows) */
        uintptr_t pf = (uintptr_t)rows + (size_t)(j0 + PF_ROWS) * row_bytes;
        for (size_t b = 0; b < 4 * row_bytes; b += 64) _mm_prefetch((const char *)(pf + b), _MM_HINT_T0);
        for (int h0 = 0; h0 < nh; h0 += 4) score_tile_dp(qb, Wp, nh, W, rows, ld, n, h0, j0, scale, s);
    }
}

__attribute__((noinline)) static void mix_pass(const uint16_t *pb, int n2, int nh, int R, const uint16_t *rows, size_t ld,
                                               int n, float *o) {
    for (int h0 = 0; h0 < nh; h0 += 8)
        for (int c0 = 0; c0 < R; c0 += 32) mix_tile_dp(pb, n2, nh, R, rows, ld, n, h0, c0, o);
}

void attn_block_avx512bf16(const float *qc, int nh, int W, int R, const void *rows, int bf16, size_t ld, int n,
                           float scale, float *scratch, float *m, float *l, float *o) {
    if (!bf16) { block(qc, nh, W, R, rows, 0, ld, n, scale, scratch, m, l, o); return; }
    int n2 = n + (n & 1), Wp = (W + 31) & ~31;
    uint16_t *pb = (uint16_t *)(scratch + (size_t)nh * n), *qb = pb + (size_t)nh * n2;
    for (int h = 0; h < nh; h++)
        for (int c = 0; c < Wp; c += 32) {
            __mmask16 k0 = tail_mask(W - c), k1 = W - c > 16 ? tail_mask(W - c - 16) : 0;
            __m512 a = _mm512_maskz_loadu_ps(k0, qc + (size_t)h * W + c), b = _mm512_maskz_loadu_ps(k1, qc + (size_t)h * W + c + 16);
            _mm512_storeu_si512(qb + (size_t)h * Wp + c, (__m512i)_mm512_cvtne2ps_pbh(b, a));
        }
    const uint16_t *r16 = rows;
    score_pass(qb, Wp, nh, W, r16, ld, n, scale, scratch);
    for (int h = 0; h < nh; h++) exp_bf16(scratch + (size_t)h * n, pb + (size_t)h * n2, n, m + h, l + h);
    mix_pass(pb, n2, nh, R, r16, ld, n, o);
}
