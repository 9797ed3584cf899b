/* matvec_avx2.c - AVX2 + FMA matvec (decode) and small-batch matmul for F32,
 * BF16 and Q8 weights with f32 activations, and Q8 x Q8 integer dots.
 *
 * Legend: as matvec_avx512.c with 8-float vectors. Column tails (cols % 8):
 * F32 through vmaskmovps (masked-out lanes are not read), BF16 by copying the
 * last cols % 8 weights into a zeroed 8-element buffer. Q8 has no tail
 * (cols % 32 == 0). Transposed matvec writes its y tail with vmaskmovps.
 *
 * Compiled with the AVX2 flags (Makefile: *_avx2.c).
 */
#include <string.h>
#include <immintrin.h>

#include "kernels_impl.h"

#define AI static inline __attribute__((always_inline))

/* ---------------------------------------------------------------- loads */

static size_t row_stride(const mat *W) {
    switch (W->dtype) {
    case MAT_F32: return (size_t)W->cols * 4;
    case MAT_BF16: return (size_t)W->cols * 2;
    case MAT_Q8: return (size_t)(W->cols / QK8) * sizeof(block_q8);
    default: return mat_row_bytes(W->dtype, W->cols);
    }
}

/* Lane mask with the first rem (1..7) lanes set. */
AI __m256i tail_mask(int rem) {
    static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(m + 8 - rem));
}

/* 8 weights of a row starting at column k as f32; tail: only the first rem are read. */
AI __m256 w_load(const char *row, int dt, int k, int rem, __m256i m) {
    if (dt == MAT_F32) {
        const float *p = (const float *)row + k;
        return rem ? _mm256_maskload_ps(p, m) : _mm256_loadu_ps(p);
    } else if (dt == MAT_BF16) {
        const uint16_t *p = (const uint16_t *)row + k;
        __m128i h;
        if (rem) {
            uint16_t buf[8] = {0};
            memcpy(buf, p, (size_t)rem * 2);
            h = _mm_loadu_si128((const __m128i *)buf);
        } else {
            h = _mm_loadu_si128((const __m128i *)p);
        }
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    } else if (dt == MAT_F16) {
        const uint16_t *p = (const uint16_t *)row + k;
        __m128i h;
        if (rem) {
            uint16_t buf[8] = {0};
            memcpy(buf, p, (size_t)rem * 2);
            h = _mm_loadu_si128((const __m128i *)buf);
        } else {
            h = _mm_loadu_si128((const __m128i *)p);
        }
        return _mm256_cvtph_ps(h);
    } else if (dt == MAT_Q8_0) {   /* cols % 32 == 0: never a tail */
        const block_q8_0 *b = (const block_q8_0 *)row + (k >> 5);
        __m128i q = _mm_loadl_epi64((const __m128i *)(b->qs + (k & 31)));
        return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), _mm256_set1_ps(_cvtsh_ss(b->d)));
    } else if (dt == MAT_Q4_0) {   /* columns 0..15 of a block: low nibbles, 16..31: high */
        const block_q4_0 *b = (const block_q4_0 *)row + (k >> 5);
        __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b->qs + (k & 15))));
        if (k & 16) q = _mm256_srli_epi32(q, 4);
        q = _mm256_sub_epi32(_mm256_and_si256(q, _mm256_set1_epi32(15)), _mm256_set1_epi32(8));
        return _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(_cvtsh_ss(b->d)));
    } else {
        const block_q8 *b = (const block_q8 *)row + (k >> 5);
        __m128i q = _mm_loadl_epi64((const __m128i *)(b->q + (k & 31)));
        return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), _mm256_set1_ps(b->scale));
    }
}

AI float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---------------------------------------------------------------- matvec */

AI void mv_block(const char *w, size_t rs, int dt, int RB, const float *x, int cols, float *y) {
    __m256 acc[4];
    const char *row[4];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) { acc[i] = _mm256_setzero_ps(); row[i] = w + i * rs; }
    int kfull = cols & ~7, k = 0;
    for (; k < kfull; k += 8) {
        __m256 xv = _mm256_loadu_ps(x + k);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) acc[i] = _mm256_fmadd_ps(w_load(row[i], dt, k, 0, _mm256_setzero_si256()), xv, acc[i]);
    }
    if (k < cols) {
        int rem = cols - k;
        __m256i m = tail_mask(rem);
        __m256 xv = _mm256_maskload_ps(x + k, m);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) acc[i] = _mm256_fmadd_ps(w_load(row[i], dt, k, rem, m), xv, acc[i]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) y[i] = hsum256(acc[i]);
}

/* Q8 rows: per 32-block, four 8-lane dots with x unscaled, then one scale FMA. */
AI __m256 q8_block_dot(const block_q8 *b, const __m256 *xv, __m256 acc) {
    __m256 t = _mm256_setzero_ps();
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        __m256 w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->q + 8 * j))));
        t = _mm256_fmadd_ps(w, xv[j], t);
    }
    return _mm256_fmadd_ps(t, _mm256_set1_ps(b->scale), acc);
}

AI void mv_q8_block(const block_q8 *w, int nb, int RB, const float *x, float *y) {
    __m256 acc[4];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) acc[i] = _mm256_setzero_ps();
    for (int k = 0; k < nb; k++) {
        __m256 xv[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) xv[j] = _mm256_loadu_ps(x + k * QK8 + 8 * j);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) acc[i] = q8_block_dot(w + (size_t)i * nb + k, xv, acc[i]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) y[i] = hsum256(acc[i]);
}

AI void mv_dtype(const mat *W, int dt, const float *x, float *y, int row0, int row1) {
    size_t rs = row_stride(W);
    const char *base = (const char *)W->data;
    int r = row0;
    if (dt == MAT_Q8) {
        int nb = W->cols / QK8;
        for (; r + 4 <= row1; r += 4) mv_q8_block((const block_q8 *)(base + (size_t)r * rs), nb, 4, x, y + (r - row0));
        for (; r < row1; r++) mv_q8_block((const block_q8 *)(base + (size_t)r * rs), nb, 1, x, y + (r - row0));
        return;
    }
    for (; r + 4 <= row1; r += 4) mv_block(base + (size_t)r * rs, rs, dt, 4, x, W->cols, y + (r - row0));
    for (; r < row1; r++) mv_block(base + (size_t)r * rs, rs, dt, 1, x, W->cols, y + (r - row0));
}

void matvec_rows_avx2(const mat *W, const float *x, float *y, int row0, int row1) {
    switch (W->dtype) {
    case MAT_F32: mv_dtype(W, MAT_F32, x, y, row0, row1); break;
    case MAT_BF16: mv_dtype(W, MAT_BF16, x, y, row0, row1); break;
    case MAT_Q8: mv_dtype(W, MAT_Q8, x, y, row0, row1); break;
    case MAT_F16: mv_dtype(W, MAT_F16, x, y, row0, row1); break;
    case MAT_Q8_0: mv_dtype(W, MAT_Q8_0, x, y, row0, row1); break;
    case MAT_Q4_0: mv_dtype(W, MAT_Q4_0, x, y, row0, row1); break;
    default: mat_kernels_resolved(W->dtype, KSET_AVX2)->matvec(W, x, y, row0, row1); break;
    }
}

/* ---------------------------------------------------------------- matmul */

#define MM_RB 2
#define MM_TB 4

AI void mm_tile(const char *w, size_t rs, int dt, int RB, int TB, const float *X, int cols,
                int t0, float *Y, int ldy, int r) {
    __m256 acc[MM_RB][MM_TB];
    const char *row[MM_RB];
    const float *xt[MM_TB];
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) {
        row[i] = w + i * rs;
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) acc[i][t] = _mm256_setzero_ps();
    }
#pragma GCC unroll 8
    for (int t = 0; t < TB; t++) xt[t] = X + (size_t)(t0 + t) * cols;
    int kfull = cols & ~7, k = 0;
    for (; k < kfull; k += 8) {
        __m256 wv[MM_RB];
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) wv[i] = w_load(row[i], dt, k, 0, _mm256_setzero_si256());
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) {
            __m256 xv = _mm256_loadu_ps(xt[t] + k);
#pragma GCC unroll 4
            for (int i = 0; i < RB; i++) acc[i][t] = _mm256_fmadd_ps(wv[i], xv, acc[i][t]);
        }
    }
    if (k < cols) {
        int rem = cols - k;
        __m256i m = tail_mask(rem);
        __m256 wv[MM_RB];
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) wv[i] = w_load(row[i], dt, k, rem, m);
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) {
            __m256 xv = _mm256_maskload_ps(xt[t] + k, m);
#pragma GCC unroll 4
            for (int i = 0; i < RB; i++) acc[i][t] = _mm256_fmadd_ps(wv[i], xv, acc[i][t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) Y[(size_t)(t0 + t) * ldy + r + i] = hsum256(acc[i][t]);
}

AI void mm_rows(const char *w, size_t rs, int dt, int RB, const float *X, int n, int cols,
                float *Y, int ldy, int r) {
    int t = 0;
    for (; t + MM_TB <= n; t += MM_TB) mm_tile(w, rs, dt, RB, MM_TB, X, cols, t, Y, ldy, r);
    switch (n - t) {
    case 3: mm_tile(w, rs, dt, RB, 3, X, cols, t, Y, ldy, r); break;
    case 2: mm_tile(w, rs, dt, RB, 2, X, cols, t, Y, ldy, r); break;
    case 1: mm_tile(w, rs, dt, RB, 1, X, cols, t, Y, ldy, r); break;
    default: break;
    }
}

AI void mm_dtype(const mat *W, int dt, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    size_t rs = row_stride(W);
    const char *base = (const char *)W->data;
    int r = row0;
    for (; r + MM_RB <= row1; r += MM_RB) mm_rows(base + (size_t)r * rs, rs, dt, MM_RB, X, n, W->cols, Y, ldy, r);
    for (; r < row1; r++) mm_rows(base + (size_t)r * rs, rs, dt, 1, X, n, W->cols, Y, ldy, r);
}

void matmul_rows_avx2(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    switch (W->dtype) {
    case MAT_F32: mm_dtype(W, MAT_F32, X, n, Y, ldy, row0, row1); break;
    case MAT_BF16: mm_dtype(W, MAT_BF16, X, n, Y, ldy, row0, row1); break;
    case MAT_Q8: mm_dtype(W, MAT_Q8, X, n, Y, ldy, row0, row1); break;
    case MAT_F16: mm_dtype(W, MAT_F16, X, n, Y, ldy, row0, row1); break;
    case MAT_Q8_0: mm_dtype(W, MAT_Q8_0, X, n, Y, ldy, row0, row1); break;
    case MAT_Q4_0: mm_dtype(W, MAT_Q4_0, X, n, Y, ldy, row0, row1); break;
    default: mat_kernels_resolved(W->dtype, KSET_AVX2)->matmul(W, X, n, Y, ldy, row0, row1); break;
    }
}

/* ---------------------------------------------------------------- transposed matvec */

/* Column vectors per register block: 8 x 8 = 64 columns of y in 8 accumulators. */
#define TMV_NV 8

/* 8 weights of a row at column k as f32, Q8 without its scale (tmv_coef has it). */
AI __m256 tmv_load(const char *row, int dt, int k, int rem, __m256i m) {
    if (dt == MAT_Q8) {
        const block_q8 *b = (const block_q8 *)row + (k >> 5);
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b->q + (k & 31)))));
    }
    return w_load(row, dt, k, rem, m);
}

/* What the vector at column k of a row is multiplied by: x_r (Q8: x_r times the block's scale). */
AI __m256 tmv_coef(const char *row, int dt, int k, float xr) {
    if (dt == MAT_Q8) return _mm256_set1_ps(xr * ((const block_q8 *)row)[k >> 5].scale);
    return _mm256_set1_ps(xr);
}

/* y[c0, c0 + 8 NV) = sum over the nr rows starting at w (stride rs) of x_r row_r; with
 * rem > 0 the last vector has only its first rem lanes (read and written). */
AI void tmv_cols(const char *w, size_t rs, int dt, int NV, int rem, const float *x, int nr, int c0, float *y) {
    __m256 acc[TMV_NV];
    __m256i m = rem ? tail_mask(rem) : _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
        int k = c0 + 8 * v;
        acc[v] = _mm256_mul_ps(tmv_load(w, dt, k, v == NV - 1 ? rem : 0, m), tmv_coef(w, dt, k, x[0]));
    }
    for (int r = 1; r < nr; r++) {
        const char *row = w + (size_t)r * rs;
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) {
            int k = c0 + 8 * v;
            acc[v] = _mm256_fmadd_ps(tmv_load(row, dt, k, v == NV - 1 ? rem : 0, m), tmv_coef(row, dt, k, x[r]), acc[v]);
        }
    }
#pragma GCC unroll 8
    for (int v = 0; v < NV; v++) {
        if (rem && v == NV - 1) _mm256_maskstore_ps(y + c0 + 8 * v, m, acc[v]);
        else _mm256_storeu_ps(y + c0 + 8 * v, acc[v]);
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
    for (; c + 8 * TMV_NV <= cols; c += 8 * TMV_NV) tmv_cols(w, rs, dt, TMV_NV, 0, x, nr, c, y);
    for (; c + 8 <= cols; c += 8) tmv_cols(w, rs, dt, 1, 0, x, nr, c, y);
    if (c < cols) tmv_cols(w, rs, dt, 1, cols - c, x, nr, c, y);
}

void matvec_t_rows_avx2(const mat *W, const float *x, float *y, int row0, int row1) {
    switch (W->dtype) {
    case MAT_F32: tmv_dtype(W, MAT_F32, x, y, row0, row1); break;
    case MAT_BF16: tmv_dtype(W, MAT_BF16, x, y, row0, row1); break;
    case MAT_Q8: tmv_dtype(W, MAT_Q8, x, y, row0, row1); break;
    case MAT_F16: tmv_dtype(W, MAT_F16, x, y, row0, row1); break;
    case MAT_Q8_0: tmv_dtype(W, MAT_Q8_0, x, y, row0, row1); break;
    case MAT_Q4_0: tmv_dtype(W, MAT_Q4_0, x, y, row0, row1); break;
    default: mat_kernels_resolved(W->dtype, KSET_AVX2)->matvec_t(W, x, y, row0, row1); break;
    }
}

/* ---------------------------------------------------------------- Q8 x Q8 */

/* |w| (u8) times sign(w) * xq (s8) -> 16 int16 pair sums (at most 2 * 128 * 127,
 * no saturation) -> 8 int32 -> f32, scaled by dw * dx. Exact integer part. */
AI __m256 q8q8_block(const block_q8 *wb, __m256i xq, __m256 acc, float dx) {
    __m256i wq = _mm256_loadu_si256((const __m256i *)wb->q);
    __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(wq), _mm256_sign_epi8(xq, wq));
    __m256i d = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(wb->scale * dx), acc);
}

void matvec_rows_q8q8_avx2(const mat *W, const block_q8 *xq, float *y, int row0, int row1) {
    int nb = W->cols / QK8;
    const block_q8 *base = (const block_q8 *)W->data;
    int r = row0;
    for (; r + 4 <= row1; r += 4) {
        const block_q8 *w0 = base + (size_t)r * nb, *w1 = w0 + nb, *w2 = w1 + nb, *w3 = w2 + nb;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k < nb; k++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)xq[k].q);
            float dx = xq[k].scale;
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
