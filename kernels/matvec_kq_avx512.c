/* matvec_kq_avx512.c - AVX-512 kernels for the k-quant weights Q4_K and Q6_K (ggml's blocks)
 * against activations quantized to block_q8_K: decode (matvec) and small batches (matmul).
 *
 * Legend
 *   W [rows, cols] of nb = cols / 256 super-blocks per row; x / X[t] quantized per 256 to
 *   int8 (block_q8_K: f32 dx, qs, 16 sums of 16).
 *   u vector   64 weights of one super-block as unsigned bytes, in column order: Q4_K the
 *              nibbles (0..15), Q6_K the 6-bit q (0..63, i.e. value + 32).
 *   products   vpmaddubsw u x -> 32 int16 pair sums (at most 2 * 63 * 127, no saturation),
 *              then vpdpwssd (VNNI; else vpmaddwd + vpaddd) with the pairs' sub-block scales
 *              as int16 -> 16 int32: exact integer sums per super-block.
 *   per super-block, per (row, token): acc += cvt(isum lanes) * (d dx), and the mins
 *              (Q4_K: dmin dx sum_j m_j (sum of x over sub-block j), from bsums) subtracted
 *              into the same f32 accumulator; Q6_K's "- 32" comes off the integer sum as
 *              32 sum_j sc_j bsum_j. Same integers as matvec_rows_q8K_ref; the f32 steps
 *              differ from it only in summation order (tests: tight bound).
 *   tile       RB rows x TB tokens: the u vectors and scales of RB rows are built once per
 *              super-block and used for TB tokens. matvec = tile RB 4 x TB 1; matmul 2 x 4.
 *   prefetch   the matvec discipline (matvec_avx512.c): every line of the rows one row block
 *              ahead into L1 (T0), two blocks ahead into L2 (T1), at least KQ_PF bytes ahead.
 *
 * Compiled with the AVX-512 flags (Makefile: *_avx512.c); the VNNI instruction is used only
 * when CPUID has it (the two versions of each loop are instantiated from one template).
 */
#include <string.h>
#include <immintrin.h>

#include "kernels_impl.h"

#define AI static inline __attribute__((always_inline))

#ifndef KQ_PF
#define KQ_PF 4096
#endif

/* ---------------------------------------------------------------- x quantization */

int quantize_row_q8_K_avx512(const float *x, block_q8_K *out, int n) {
    const __m512 big = _mm512_set1_ps(3.4028234e38f);
    for (int b = 0; b < n / QK_K; b++) {
        const float *xb = x + (size_t)b * QK_K;
        __m512 mx = _mm512_setzero_ps();
        __mmask16 bad = 0;
        for (int v = 0; v < 16; v++) {
            __m512 a = _mm512_abs_ps(_mm512_loadu_ps(xb + 16 * v));
            bad |= _mm512_cmp_ps_mask(a, big, _CMP_NLE_UQ);   /* Inf or NaN */
            mx = _mm512_max_ps(mx, a);
        }
        if (bad) return 0;
        float amax = _mm512_reduce_max_ps(mx);
        if (amax > 0.0f && amax < 1e-30f) return 0;
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        out[b].d = amax / 127.0f;
        __m512 idv = _mm512_set1_ps(id);
        for (int v = 0; v < 16; v++) {
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 16 * v), idv));
            _mm_storeu_si128((__m128i *)(out[b].qs + 16 * v), _mm512_cvtepi32_epi8(q));
            out[b].bsums[v] = (int16_t)_mm512_reduce_add_epi32(q);
        }
    }
    return 1;
}

/* ---------------------------------------------------------------- shared pieces */

AI __m512i dpw(int vnni, __m512i acc, __m512i a, __m512i b) {
    return vnni ? _mm512_dpwssd_epi32(acc, a, b) : _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
}

/* A Q4_K / Q5_K block's 8 scales (bytes 0-7) and 8 mins (bytes 8-15), unpacked from the 12
 * packed bytes four at a time (the same bits as kq_scale_min). */
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

/* vpshufb control giving int16 lanes 0-7, 8-15, 16-23, 24-31 the bytes i0..i3 of each
 * 128-bit lane's copy (as 0x80nn: byte nn, then zero; "hi" puts the byte on top instead). */
AI __m512i ctrl4(int i0, int i1, int i2, int i3, int hi) {
    int c[4] = {i0, i1, i2, i3};
    __m512i v = _mm512_setzero_si512();
    for (int k = 0; k < 4; k++) {
        short e = hi ? (short)((c[k] << 8) | 0x80) : (short)(0x8000 | c[k]);
        v = _mm512_mask_blend_epi16((__mmask32)(0xFFu << (8 * k)), v, _mm512_set1_epi16(e));
    }
    return v;
}

AI void prefetch_block(const char *p, size_t ahead, int bytes) {
    for (int o = 0; o < bytes; o += 64) {
        _mm_prefetch(p + ahead + o, _MM_HINT_T0);
        _mm_prefetch(p + 2 * ahead + o, _MM_HINT_T1);
    }
}

typedef struct {
    __m512i q4sc[4];     /* Q4_K: scales of u vector v (sub-blocks 2v, 2v + 1) */
    __m256i q4min;       /* Q4_K: int16 lanes 2j, 2j + 1 = m_j */
    __m512i q6sc[4];     /* Q6_K: scales 4v .. 4v + 3 on top of the int16 lanes (then >> 8) */
} kq_ctrl;

AI kq_ctrl kq_ctrl_make(void) {
    kq_ctrl c;
    for (int v = 0; v < 4; v++) {
        c.q4sc[v] = ctrl4(2 * v, 2 * v, 2 * v + 1, 2 * v + 1, 0);
        c.q6sc[v] = ctrl4(4 * v, 4 * v + 1, 4 * v + 2, 4 * v + 3, 1);
    }
    short m[16];
    for (int i = 0; i < 16; i++) m[i] = (short)(0x8000 | (8 + i / 2));
    c.q4min = _mm256_loadu_si256((const __m256i *)m);
    return c;
}

/* ---------------------------------------------------------------- Q4_K */

/* RB rows (stride rs bytes) x TB tokens (XQ rows of nb blocks, stride xs blocks); out[t * ldo + i]. */
AI void q4k_tile(const char *w, size_t rs, int nb, int RB, int TB, const block_q8_K *XQ, size_t xs,
                 float *out, size_t ldo, int pf, const kq_ctrl *c, int vnni) {
    __m512 acc[4][4];
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const size_t ahead = (size_t)RB * rs > KQ_PF ? (size_t)RB * rs : KQ_PF;
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 4
        for (int t = 0; t < TB; t++) acc[i][t] = _mm512_setzero_ps();
    for (int k = 0; k < nb; k++) {
        __m512i u[4][4], sc[4][4];
        __m256i mn[4];
        float d[4], dm[4];
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            const block_q4_K *b = (const block_q4_K *)(w + i * rs) + k;
            if (pf) prefetch_block((const char *)b, ahead, (int)sizeof(block_q4_K));
            __m512i a0 = _mm512_loadu_si512(b->qs), a1 = _mm512_loadu_si512(b->qs + 64);
            __m512i l0 = _mm512_and_si512(a0, m4), h0 = _mm512_and_si512(_mm512_srli_epi16(a0, 4), m4);
            __m512i l1 = _mm512_and_si512(a1, m4), h1 = _mm512_and_si512(_mm512_srli_epi16(a1, 4), m4);
            u[i][0] = _mm512_shuffle_i64x2(l0, h0, 0x44);   /* columns 0..63 */
            u[i][1] = _mm512_shuffle_i64x2(l0, h0, 0xEE);   /* 64..127 */
            u[i][2] = _mm512_shuffle_i64x2(l1, h1, 0x44);
            u[i][3] = _mm512_shuffle_i64x2(l1, h1, 0xEE);
            __m512i s = _mm512_broadcast_i32x4(kq_scales16(b->scales));
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) sc[i][v] = _mm512_shuffle_epi8(s, c->q4sc[v]);
            mn[i] = _mm256_shuffle_epi8(_mm512_castsi512_si256(s), c->q4min);
            d[i] = _cvtsh_ss(b->d);
            dm[i] = _cvtsh_ss(b->dmin);
        }
#pragma GCC unroll 4
        for (int t = 0; t < TB; t++) {
            const block_q8_K *xb = XQ + (size_t)t * xs + k;
            __m512i x[4];
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) x[v] = _mm512_loadu_si512(xb->qs + 64 * v);
            __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
            float dx = xb->d;
#pragma GCC unroll 4
            for (int i = 0; i < RB; i++) {
                __m512i is = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int v = 0; v < 4; v++) is = dpw(vnni, is, _mm512_maddubs_epi16(u[i][v], x[v]), sc[i][v]);
                __m256i ms = _mm256_madd_epi16(mn[i], bs);
                acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_set1_ps(d[i] * dx), acc[i][t]);
                acc[i][t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(ms)), _mm512_set1_ps(dm[i] * dx), acc[i][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) out[(size_t)t * ldo + i] = _mm512_reduce_add_ps(acc[i][t]);
}

/* ---------------------------------------------------------------- Q6_K */

AI void q6k_tile(const char *w, size_t rs, int nb, int RB, int TB, const block_q8_K *XQ, size_t xs,
                 float *out, size_t ldo, int pf, const kq_ctrl *c, int vnni) {
    __m512 acc[4][4];
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    const __m512i sl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);   /* qh shifts, lo nibbles */
    const __m512i sr = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);   /* hi nibbles */
    const size_t ahead = (size_t)RB * rs > KQ_PF ? (size_t)RB * rs : KQ_PF;
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 4
        for (int t = 0; t < TB; t++) acc[i][t] = _mm512_setzero_ps();
    for (int k = 0; k < nb; k++) {
        __m512i u[4][4], sc[4][4];
        __m256i s16[4];
        float d[4];
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            const block_q6_K *b = (const block_q6_K *)(w + i * rs) + k;
            if (pf) prefetch_block((const char *)b, ahead, (int)sizeof(block_q6_K));
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                __m512i ql = _mm512_loadu_si512(b->ql + 64 * h);
                __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qh + 32 * h)));
                u[i][2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_sllv_epi16(qh, sl), m30));
                u[i][2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                                  _mm512_and_si512(_mm512_srlv_epi16(qh, sr), m30));
            }
            __m128i s8 = _mm_loadu_si128((const __m128i *)b->scales);
            __m512i s = _mm512_broadcast_i32x4(s8);
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) sc[i][v] = _mm512_srai_epi16(_mm512_shuffle_epi8(s, c->q6sc[v]), 8);
            s16[i] = _mm256_cvtepi8_epi16(s8);
            d[i] = _cvtsh_ss(b->d);
        }
#pragma GCC unroll 4
        for (int t = 0; t < TB; t++) {
            const block_q8_K *xb = XQ + (size_t)t * xs + k;
            __m512i x[4];
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) x[v] = _mm512_loadu_si512(xb->qs + 64 * v);
            __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
            float dx = xb->d;
#pragma GCC unroll 4
            for (int i = 0; i < RB; i++) {
                __m512i is = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int v = 0; v < 4; v++) is = dpw(vnni, is, _mm512_maddubs_epi16(u[i][v], x[v]), sc[i][v]);
                __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(s16[i], bs), 5);   /* 32 sum_j sc_j bsum_j */
                is = _mm512_sub_epi32(is, _mm512_zextsi256_si512(corr));
                acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_set1_ps(d[i] * dx), acc[i][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) out[(size_t)t * ldo + i] = _mm512_reduce_add_ps(acc[i][t]);
}

/* ---------------------------------------------------------------- drivers */

#define MV_RB 4
#define MM_RB 2
#define MM_TB 4

typedef void (*tile_fn)(const char *, size_t, int, int, int, const block_q8_K *, size_t, float *, size_t, int,
                        const kq_ctrl *, int);

/* The tile for a compile-time (type, RB, TB, vnni): one switch, so every loop is unrolled. */
#define TILE_CASES(tile, vnni)                                                                   \
    static void tile##_mv4_##vnni(const char *w, size_t rs, int nb, int RB, int TB, const block_q8_K *XQ, size_t xs, \
                                  float *o, size_t ldo, int pf, const kq_ctrl *c, int v) {      \
        (void)RB; (void)TB; (void)v; tile(w, rs, nb, 4, 1, XQ, xs, o, ldo, pf, c, vnni);          \
    }                                                                                            \
    static void tile##_mv1_##vnni(const char *w, size_t rs, int nb, int RB, int TB, const block_q8_K *XQ, size_t xs, \
                                  float *o, size_t ldo, int pf, const kq_ctrl *c, int v) {      \
        (void)RB; (void)TB; (void)v; tile(w, rs, nb, 1, 1, XQ, xs, o, ldo, pf, c, vnni);          \
    }                                                                                            \
    static void tile##_mm_##vnni(const char *w, size_t rs, int nb, int RB, int TB, const block_q8_K *XQ, size_t xs, \
                                 float *o, size_t ldo, int pf, const kq_ctrl *c, int v) {       \
        (void)v;                                                                                 \
        if (RB == 2) {                                                                           \
            switch (TB) {                                                                        \
            case 4: tile(w, rs, nb, 2, 4, XQ, xs, o, ldo, pf, c, vnni); break;                   \
            case 3: tile(w, rs, nb, 2, 3, XQ, xs, o, ldo, pf, c, vnni); break;                   \
            case 2: tile(w, rs, nb, 2, 2, XQ, xs, o, ldo, pf, c, vnni); break;                   \
            default: tile(w, rs, nb, 2, 1, XQ, xs, o, ldo, pf, c, vnni); break;                  \
            }                                                                                    \
        } else {                                                                                 \
            switch (TB) {                                                                        \
            case 4: tile(w, rs, nb, 1, 4, XQ, xs, o, ldo, pf, c, vnni); break;                   \
            case 3: tile(w, rs, nb, 1, 3, XQ, xs, o, ldo, pf, c, vnni); break;                   \
            case 2: tile(w, rs, nb, 1, 2, XQ, xs, o, ldo, pf, c, vnni); break;                   \
            default: tile(w, rs, nb, 1, 1, XQ, xs, o, ldo, pf, c, vnni); break;                  \
            }                                                                                    \
        }                                                                                        \
    }
TILE_CASES(q4k_tile, 0)
TILE_CASES(q4k_tile, 1)
TILE_CASES(q6k_tile, 0)
TILE_CASES(q6k_tile, 1)

typedef struct {
    tile_fn mv4, mv1, mm;
} tile_set;

static const tile_set q4k_tiles[2] = {{q4k_tile_mv4_0, q4k_tile_mv1_0, q4k_tile_mm_0}, {q4k_tile_mv4_1, q4k_tile_mv1_1, q4k_tile_mm_1}};
static const tile_set q6k_tiles[2] = {{q6k_tile_mv4_0, q6k_tile_mv1_0, q6k_tile_mm_0}, {q6k_tile_mv4_1, q6k_tile_mv1_1, q6k_tile_mm_1}};

static const tile_set *tiles_for(mat_dtype dt) {
    int vnni = cpu_get_features()->avx512_vnni;
    return dt == MAT_Q4_K ? &q4k_tiles[vnni] : &q6k_tiles[vnni];
}

static void kq_matvec(const mat *W, const block_q8_K *xq, float *y, int row0, int row1) {
    const tile_set *ts = tiles_for(W->dtype);
    kq_ctrl c = kq_ctrl_make();
    int nb = W->cols / QK_K;
    size_t rs = mat_row_bytes(W->dtype, W->cols);
    const char *base = (const char *)W->data;
    int r = row0;
    for (; r + MV_RB <= row1; r += MV_RB) ts->mv4(base + (size_t)r * rs, rs, nb, MV_RB, 1, xq, 0, y + (r - row0), 0, 1, &c, 0);
    for (; r < row1; r++) ts->mv1(base + (size_t)r * rs, rs, nb, 1, 1, xq, 0, y + (r - row0), 0, 1, &c, 0);
}

/* Y[t, r] for t < n: row blocks of MM_RB, token tiles of MM_TB; the first token tile of a
 * row block prefetches the next row blocks. */
static void kq_matmul(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1) {
    const tile_set *ts = tiles_for(W->dtype);
    kq_ctrl c = kq_ctrl_make();
    int nb = W->cols / QK_K;
    size_t rs = mat_row_bytes(W->dtype, W->cols);
    const char *base = (const char *)W->data;
    for (int r = row0; r < row1;) {
        int rb = row1 - r >= MM_RB ? MM_RB : 1;
        for (int t = 0; t < n; t += MM_TB) {
            int tb = n - t < MM_TB ? n - t : MM_TB;
            ts->mm(base + (size_t)r * rs, rs, nb, rb, tb, XQ + (size_t)t * nb, (size_t)nb, Y + (size_t)t * ldy + r,
                   (size_t)ldy, t == 0, &c, 0);
        }
        r += rb;
    }
}

void matvec_rows_q8K_q4k_avx512(const mat *W, const block_q8_K *xq, float *y, int row0, int row1) { kq_matvec(W, xq, y, row0, row1); }
void matvec_rows_q8K_q6k_avx512(const mat *W, const block_q8_K *xq, float *y, int row0, int row1) { kq_matvec(W, xq, y, row0, row1); }
void matmul_rows_q8K_q4k_avx512(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1) {
    kq_matmul(W, XQ, n, Y, ldy, row0, row1);
}
void matmul_rows_q8K_q6k_avx512(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1) {
    kq_matmul(W, XQ, n, Y, ldy, row0, row1);
}

/* f32 x: quantized on the stack, then the integer kernel; x that does not quantize (Inf,
 * NaN, nearly subnormal) or rows longer than KQ_MAX_COLS take the f32 reference. */
static void kq_matvec_f32(const mat *W, const float *x, float *y, int row0, int row1) {
    if (W->cols > KQ_MAX_COLS) { matvec_rows_ref(W, x, y, row0, row1); return; }
    block_q8_K xq[W->cols / QK_K];
    if (!quantize_row_q8_K_avx512(x, xq, W->cols)) { matvec_rows_ref(W, x, y, row0, row1); return; }
    kq_matvec(W, xq, y, row0, row1);
}

/* Tokens in passes of as many as KQ_MATMUL_X_BYTES of quantized X holds; a token whose x
 * does not quantize gets its rows from the f32 reference afterwards. */
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
            bad[t] = !quantize_row_q8_K_avx512(X + (size_t)(t0 + t) * W->cols, xq + (size_t)t * nb, W->cols);
            if (bad[t]) memset(xq + (size_t)t * nb, 0, row_q);
        }
        kq_matmul(W, xq, nt, Y + (size_t)t0 * ldy, ldy, row0, row1);
        for (int t = 0; t < nt; t++)
            if (bad[t]) matmul_rows_ref(W, X + (size_t)(t0 + t) * W->cols, 1, Y + (size_t)(t0 + t) * ldy, ldy, row0, row1);
    }
}

void matvec_rows_q4k_avx512(const mat *W, const float *x, float *y, int row0, int row1) { kq_matvec_f32(W, x, y, row0, row1); }
void matvec_rows_q6k_avx512(const mat *W, const float *x, float *y, int row0, int row1) { kq_matvec_f32(W, x, y, row0, row1); }
void matmul_rows_q4k_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    kq_matmul_f32(W, X, n, Y, ldy, row0, row1);
}
void matmul_rows_q6k_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    kq_matmul_f32(W, X, n, Y, ldy, row0, row1);
}
