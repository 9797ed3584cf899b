/* matvec_kq_avx2.c - AVX2 kernels for Q4_K and Q6_K weights against block_q8_K activations.
 *
 * Legend: as matvec_kq_avx512.c, with 32-byte vectors. A 32-byte u vector is 32 weights in
 * column order (Q4_K: one 32-byte run of qs gives sub-block 2g in its low nibbles and 2g + 1
 * in its high ones; Q6_K: two sub-blocks of 16), vpmaddubsw then vpmaddwd with the scales
 * as int16 (Q6_K: two scales, one per 128-bit lane) -> 8 int32 per vector. Exact integer
 * sums per super-block, then the f32 steps of the AVX-512 kernels. Tile: the u vectors of
 * one row and 32 columns are built once and used for the TB tokens.
 *
 * Compiled with the AVX2 flags (Makefile: *_avx2.c, which include F16C for the f16 scales).
 */
#include <string.h>
#include <immintrin.h>

#include "kernels_impl.h"

#define AI static inline __attribute__((always_inline))

#ifndef KQ_PF
#define KQ_PF 4096
#endif

AI float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AI int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* ---------------------------------------------------------------- x quantization */

int quantize_row_q8_K_avx2(const float *x, block_q8_K *out, int n) {
    const __m256 big = _mm256_set1_ps(3.4028234e38f), sign = _mm256_set1_ps(-0.0f);
    for (int b = 0; b < n / QK_K; b++) {
        const float *xb = x + (size_t)b * QK_K;
        __m256 mx = _mm256_setzero_ps();
        int bad = 0;
        for (int v = 0; v < 32; v++) {
            __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + 8 * v));
            bad |= _mm256_movemask_ps(_mm256_cmp_ps(a, big, _CMP_NLE_UQ));
            mx = _mm256_max_ps(mx, a);
        }
        if (bad) return 0;
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        float amax = _mm_cvtss_f32(m);
        if (amax > 0.0f && amax < 1e-30f) return 0;
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        out[b].d = amax / 127.0f;
        __m256 idv = _mm256_set1_ps(id);
        for (int v = 0; v < 8; v++) {   /* 32 values: two groups of 16 */
            __m256i q[4];
            for (int j = 0; j < 4; j++) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + 32 * v + 8 * j), idv));
            __m256i p0 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xD8);   /* 16 int16 in order */
            __m256i p1 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2], q[3]), 0xD8);
            __m256i p8 = _mm256_permute4x64_epi64(_mm256_packs_epi16(p0, p1), 0xD8);
            _mm256_storeu_si256((__m256i *)(out[b].qs + 32 * v), p8);
            const __m256i one = _mm256_set1_epi16(1);
            out[b].bsums[2 * v] = (int16_t)hsum_epi32(_mm256_madd_epi16(p0, one));
            out[b].bsums[2 * v + 1] = (int16_t)hsum_epi32(_mm256_madd_epi16(p1, one));
        }
    }
    return 1;
}

/* ---------------------------------------------------------------- shared pieces */

/* A Q4_K / Q5_K block's 8 scales (bytes 0-7) and 8 mins (bytes 8-15). */
AI __m128i kq_scales16(const uint8_t *s) {
    uint32_t u0, u1, u2;
    memcpy(&u0, s, 4);
    memcpy(&u1, s + 4, 4);
    memcpy(&u2, s + 8, 4);
    uint32_t sc_lo = u0 & 0x3f3f3f3fu, m_lo = u1 & 0x3f3f3f3fu;
    uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
    uint32_t m_hi = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
    return _mm_set_epi32((int)m_hi, (int)m_lo, (int)sc_hi, (int)sc_lo);
}

typedef struct {
    __m256i q4sc[8];     /* Q4_K: byte j into every int16 lane (0x80jj: byte j, then zero) */
    __m256i q4min;       /* Q4_K: int16 lanes 2j, 2j + 1 = m_j */
    __m256i q6sc[8];     /* Q6_K vector v: scale 2v on top of the low lane's int16, 2v + 1 the high lane's */
} kq_ctrl;

static kq_ctrl kq_ctrl_make(void) {
    kq_ctrl c;
    short a[16];
    for (int j = 0; j < 8; j++) {
        for (int i = 0; i < 16; i++) a[i] = (short)(0x8000 | j);
        c.q4sc[j] = _mm256_loadu_si256((const __m256i *)a);
        for (int i = 0; i < 16; i++) a[i] = (short)(((2 * j + i / 8) << 8) | 0x80);
        c.q6sc[j] = _mm256_loadu_si256((const __m256i *)a);
    }
    for (int i = 0; i < 16; i++) a[i] = (short)(0x8000 | (8 + i / 2));
    c.q4min = _mm256_loadu_si256((const __m256i *)a);
    return c;
}

AI void prefetch_block(const char *p, size_t ahead, int bytes) {
    for (int o = 0; o < bytes; o += 64) _mm_prefetch(p + ahead + o, _MM_HINT_T0);
}

/* ---------------------------------------------------------------- tiles */

/* RB rows x TB tokens of Q4_K (is_q6 = 0) or Q6_K (1); out[t * ldo + i]. */
AI void kq_tile(int is_q6, const char *w, size_t rs, int nb, int RB, int TB, const block_q8_K *XQ, size_t xs,
                float *out, size_t ldo, int pf, const kq_ctrl *c) {
    __m256 acc[4][4];
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    const size_t ahead = (size_t)RB * rs > KQ_PF ? (size_t)RB * rs : KQ_PF;
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 4
        for (int t = 0; t < TB; t++) acc[i][t] = _mm256_setzero_ps();
    for (int k = 0; k < nb; k++) {
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            __m256i is[4];
#pragma GCC unroll 4
            for (int t = 0; t < TB; t++) is[t] = _mm256_setzero_si256();
            if (!is_q6) {
                const block_q4_K *b = (const block_q4_K *)(w + i * rs) + k;
                if (pf) prefetch_block((const char *)b, ahead, (int)sizeof(block_q4_K));
                __m256i s = _mm256_broadcastsi128_si256(kq_scales16(b->scales));
#pragma GCC unroll 4
                for (int g = 0; g < 4; g++) {
                    __m256i a = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * g));
                    __m256i lo = _mm256_and_si256(a, m4), hi = _mm256_and_si256(_mm256_srli_epi16(a, 4), m4);
                    __m256i s0 = _mm256_shuffle_epi8(s, c->q4sc[2 * g]), s1 = _mm256_shuffle_epi8(s, c->q4sc[2 * g + 1]);
#pragma GCC unroll 4
                    for (int t = 0; t < TB; t++) {
                        const int8_t *xq = XQ[(size_t)t * xs + k].qs + 64 * g;
                        __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xq));
                        __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xq + 32)));
                        is[t] = _mm256_add_epi32(is[t], _mm256_add_epi32(_mm256_madd_epi16(p0, s0), _mm256_madd_epi16(p1, s1)));
                    }
                }
                __m256i mn = _mm256_shuffle_epi8(s, c->q4min);
                float d = _cvtsh_ss(b->d), dm = _cvtsh_ss(b->dmin);
#pragma GCC unroll 4
                for (int t = 0; t < TB; t++) {
                    const block_q8_K *xb = XQ + (size_t)t * xs + k;
                    __m256i ms = _mm256_madd_epi16(mn, _mm256_loadu_si256((const __m256i *)xb->bsums));
                    acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is[t]), _mm256_set1_ps(d * xb->d), acc[i][t]);
                    acc[i][t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_set1_ps(dm * xb->d), acc[i][t]);
                }
            } else {
                const block_q6_K *b = (const block_q6_K *)(w + i * rs) + k;
                if (pf) prefetch_block((const char *)b, ahead, (int)sizeof(block_q6_K));
                __m128i s8 = _mm_loadu_si128((const __m128i *)b->scales);
                __m256i s = _mm256_broadcastsi128_si256(s8);
#pragma GCC unroll 2
                for (int h = 0; h < 2; h++) {
                    __m256i ql0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
                    __m256i ql1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
                    __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
                    __m256i u[4];
                    u[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
                    u[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
                    u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30));
                    u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
#pragma GCC unroll 4
                    for (int j = 0; j < 4; j++) {
                        __m256i sc = _mm256_srai_epi16(_mm256_shuffle_epi8(s, c->q6sc[4 * h + j]), 8);
#pragma GCC unroll 4
                        for (int t = 0; t < TB; t++) {
                            const int8_t *xq = XQ[(size_t)t * xs + k].qs + 128 * h + 32 * j;
                            __m256i p = _mm256_maddubs_epi16(u[j], _mm256_loadu_si256((const __m256i *)xq));
                            is[t] = _mm256_add_epi32(is[t], _mm256_madd_epi16(p, sc));
                        }
                    }
                }
                __m256i s16 = _mm256_cvtepi8_epi16(s8);
                float d = _cvtsh_ss(b->d);
#pragma GCC unroll 4
                for (int t = 0; t < TB; t++) {
                    const block_q8_K *xb = XQ + (size_t)t * xs + k;
                    __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(s16, _mm256_loadu_si256((const __m256i *)xb->bsums)), 5);
                    acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(is[t], corr)), _mm256_set1_ps(d * xb->d), acc[i][t]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) out[(size_t)t * ldo + i] = hsum256(acc[i][t]);
}

/* ---------------------------------------------------------------- drivers */

#define MV_RB 4
#define MM_RB 2
#define MM_TB 4

static void kq_tile_any(int q6, const char *w, size_t rs, int nb, int RB, int TB, const block_q8_K *XQ, size_t xs,
                        float *o, size_t ldo, int pf, const kq_ctrl *c) {
#define T(Q, R, B) kq_tile(Q, w, rs, nb, R, B, XQ, xs, o, ldo, pf, c)
#define TT(Q)                                                                                  \
    if (RB == 4) T(Q, 4, 1);                                                                   \
    else if (RB == 2) { if (TB == 4) T(Q, 2, 4); else if (TB == 3) T(Q, 2, 3); else if (TB == 2) T(Q, 2, 2); else T(Q, 2, 1); } \
    else { if (TB == 4) T(Q, 1, 4); else if (TB == 3) T(Q, 1, 3); else if (TB == 2) T(Q, 1, 2); else T(Q, 1, 1); }
    if (q6) { TT(1) } else { TT(0) }
#undef TT
#undef T
}

static void kq_matvec(const mat *W, const block_q8_K *xq, float *y, int row0, int row1) {
    kq_ctrl c = kq_ctrl_make();
    int nb = W->cols / QK_K, q6 = W->dtype == MAT_Q6_K;
    size_t rs = mat_row_bytes(W->dtype, W->cols);
    const char *base = (const char *)W->data;
    int r = row0;
    for (; r + MV_RB <= row1; r += MV_RB) kq_tile_any(q6, base + (size_t)r * rs, rs, nb, MV_RB, 1, xq, 0, y + (r - row0), 0, 1, &c);
    for (; r < row1; r++) kq_tile_any(q6, base + (size_t)r * rs, rs, nb, 1, 1, xq, 0, y + (r - row0), 0, 1, &c);
}

static void kq_matmul(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1) {
    kq_ctrl c = kq_ctrl_make();
    int nb = W->cols / QK_K, q6 = W->dtype == MAT_Q6_K;
    size_t rs = mat_row_bytes(W->dtype, W->cols);
    const char *base = (const char *)W->data;
    for (int r = row0; r < row1;) {
        int rb = row1 - r >= MM_RB ? MM_RB : 1;
        for (int t = 0; t < n; t += MM_TB) {
            int tb = n - t < MM_TB ? n - t : MM_TB;
            kq_tile_any(q6, base + (size_t)r * rs, rs, nb, rb, tb, XQ + (size_t)t * nb, (size_t)nb, Y + (size_t)t * ldy + r,
                        (size_t)ldy, t == 0, &c);
        }
        r += rb;
    }
}

void matvec_rows_q8K_q4k_avx2(const mat *W, const block_q8_K *xq, float *y, int row0, int row1) { kq_matvec(W, xq, y, row0, row1); }
void matvec_rows_q8K_q6k_avx2(const mat *W, const block_q8_K *xq, float *y, int row0, int row1) { kq_matvec(W, xq, y, row0, row1); }
void matmul_rows_q8K_q4k_avx2(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1) {
    kq_matmul(W, XQ, n, Y, ldy, row0, row1);
}
void matmul_rows_q8K_q6k_avx2(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1) {
    kq_matmul(W, XQ, n, Y, ldy, row0, row1);
}

/* f32 x, as in matvec_kq_avx512.c. */
static void kq_matvec_f32(const mat *W, const float *x, float *y, int row0, int row1) {
    if (W->cols > KQ_MAX_COLS) { matvec_rows_ref(W, x, y, row0, row1); return; }
    block_q8_K xq[W->cols / QK_K];
    if (!quantize_row_q8_K_avx2(x, xq, W->cols)) { matvec_rows_ref(W, x, y, row0, row1); return; }
    kq_matvec(W, xq, y, row0, row1);
}

static void kq_matmul_f32(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    int nb = W->cols / QK_K;
    size_t row_q = (size_t)nb * sizeof(block_q8_K);
    int chunk = (int)(KQ_MATMUL_X_BYTES / row_q);
    if (W->cols > KQ_MAX_COLS || chunk < 1) { matmul_rows_ref(W, X, n, Y, ldy, row0, row1); return; }
    if (chunk > n) chunk = n;
    block_q8_K xq[(size_t)chunk * nb];
    for (int t0 = 0; t0 < n; t0 += chunk) {
        int nt = n - t0 < chunk ? n - t0 : chunk;
        unsigned char bad[nt];
        for (int t = 0; t < nt; t++) {
            bad[t] = !quantize_row_q8_K_avx2(X + (size_t)(t0 + t) * W->cols, xq + (size_t)t * nb, W->cols);
            if (bad[t]) memset(xq + (size_t)t * nb, 0, row_q);
        }
        kq_matmul(W, xq, nt, Y + (size_t)t0 * ldy, ldy, row0, row1);
        for (int t = 0; t < nt; t++)
            if (bad[t]) matmul_rows_ref(W, X + (size_t)(t0 + t) * W->cols, 1, Y + (size_t)(t0 + t) * ldy, ldy, row0, row1);
    }
}

void matvec_rows_q4k_avx2(const mat *W, const float *x, float *y, int row0, int row1) { kq_matvec_f32(W, x, y, row0, row1); }
void matvec_rows_q6k_avx2(const mat *W, const float *x, float *y, int row0, int row1) { kq_matvec_f32(W, x, y, row0, row1); }
void matmul_rows_q4k_avx2(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    kq_matmul_f32(W, X, n, Y, ldy, row0, row1);
}
void matmul_rows_q6k_avx2(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    kq_matmul_f32(W, X, n, Y, ldy, row0, row1);
}
