/* matmul_lowp_avx512.c - AVX-512 small-batch matmul with low-precision activations
 * (--act-lowp): Q8 weights x int8 activations (VNNI vpdpbusd, or vpmaddubsw + vpmaddwd
 * without VNNI) and BF16 weights x bf16 activations (vdpbf16ps).
 *
 * Legend
 *   W [rows, cols] row-major; Y[t * ldy + r] for t < n tokens, r in [row0, row1).
 *   XQ       n rows of cols / 32 block_q8 (quantize_row_q8), XB n rows of cols bf16
 *            (quantize_row_bf16): the activations, quantized once per call by the caller.
 *   per token, bit for bit the matvec of that token alone (matvec_avx512.c):
 *     Q8:    matvec_rows_q8q8_avx512vnni / _avx2: for each row, an 8-lane f32 accumulator;
 *            per 32-block k, lane j gets the exact int32 sum of the 4 products of group j,
 *            then acc = fma(cvt(lanes), w_k.scale * x_k.scale, acc); at the end hsum256.
 *     BF16:  bb_block: a 16-lane accumulator, one vdpbf16ps per 32 columns (the column tail
 *            masked), then _mm512_reduce_add_ps.
 *   xpair    the Q8 tiles' form of X (packed per call on the stack): tokens in pairs, one
 *            64-byte vector per (pair, block) holding both tokens' 32 int8 (token 2p in the
 *            low 256 bits, 2p + 1 in the high; zeros for a missing last token), beside
 *            -128 x each 4-byte group's sum (neg) and the scales (dx), 8 lanes each.
 *   Q8 tile  RB rows x PB pairs (2 PB tokens); per block, each row's 32 weights are loaded
 *            once into both halves of a vector and offset to unsigned (w + 128 = w ^ 0x80);
 *            vpdpbusd(neg, w + 128, x) = sum (w + 128) x - 128 sum x = sum w x exactly, the
 *            same 8 int32 lanes as the matvec's vpdpbusd(|w|, sign(x, w)). Without VNNI
 *            (AVX-512 BW only): vpmaddubsw(|w|, x negated where w < 0) + vpmaddwd(1), as the
 *            AVX2 matvec (pair sums <= 2 x 128 x 127: no saturation).
 *   BF16 tile  RB rows x TB tokens of 16-lane accumulators (4 x 6: 24 zmm; 2 x 7-8 for n = 7, 8).
 *   tokens   split into near-equal tiles (n = 8: one 4 x 4-pair Q8 tile, 4 + 4 BF16); the
 *            first tile of a row block prefetches the next blocks' rows (T0 one block ahead,
 *            T1 two), as the f32 matmul does.
 *
 * Compiled with the AVX-512 flags (Makefile: *_avx512.c); cpu.c calls the VNNI variant
 * only when CPUID has VNNI, the BF16 one only with AVX512_BF16.
 */
#include <stddef.h>
#include <string.h>
#include <immintrin.h>

#include "hsum_avx512.h"
#include "kernels_impl.h"

#define AI static inline __attribute__((always_inline))

/* Bytes of packed X the Q8 kernel keeps on its stack per pass over the rows (fits L2). */
#define LOWP_MM_X_BYTES (256 * 1024)

/* ---------------------------------------------------------------- reductions */

/* The matvec's hsum256 on two tokens per vector: for 4 accumulators A..D (token 2p low,
 * 2p + 1 high) the 8 sums [A0 A1 B0 B1 C0 C1 D0 D1], each (s0 + s2) + (s1 + s3) with
 * s_j = v_j + v_{j+4}, the additions of hsum256 (f32 addition commutes bit for bit). */
AI __m256 hsum_pairs4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x88), _mm512_shuffle_f32x4(c, d, 0xDD));
    ab = _mm512_add_ps(ab, _mm512_permute_ps(ab, 0x4E));
    cd = _mm512_add_ps(cd, _mm512_permute_ps(cd, 0x4E));
    ab = _mm512_add_ps(ab, _mm512_permute_ps(ab, 0xB1));
    cd = _mm512_add_ps(cd, _mm512_permute_ps(cd, 0xB1));
    const __m512i idx = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 28, 24, 20, 16, 12, 8, 4, 0);
    return _mm512_castps512_ps256(_mm512_permutex2var_ps(ab, idx, cd));
}

/* ---------------------------------------------------------------- Q8 x int8 */

typedef struct {
    int8_t x[64];        /* token 2p's block in bytes 0..31, token 2p + 1's in 32..63 */
    int32_t neg[16];     /* lane j < 8: -128 x (sum of token 2p's bytes 4j..4j+3); 8 + j: token 2p + 1 */
    float dx[16];        /* lanes 0..7: token 2p's block scale, 8..15: token 2p + 1's */
} xpair;                 /* 192 bytes */

/* Tokens a and b's block (b NULL: zeros) as one pair. */
static void xpair_pack(xpair *P, const block_q8 *a, const block_q8 *b) {
    __m256i xb = b ? _mm256_loadu_si256((const __m256i *)b->q) : _mm256_setzero_si256();
    __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a->q)), xb, 1);
    __m512i s = _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_set1_epi8(1), x), _mm512_set1_epi16(1));
    _mm512_storeu_si512(P->x, x);
    _mm512_storeu_si512(P->neg, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(s, 7)));
    _mm512_storeu_ps(P->dx, _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(a->scale)),
                                               _mm256_set1_ps(b ? b->scale : 0.0f), 1));
}

/* RB rows (block_q8 rows of nb blocks at w, i-th at w + i nb) x PB pairs (X: pair p's
 * blocks at X + p nb) -> out[(2p + h) ldo + i] for tokens 2p + h < nt. */
AI void q8_tile(int vnni, const block_q8 *w, int nb, int RB, int PB, const xpair *X, int nt, float *out, size_t ldo,
                int pf) {
    __m512 acc[4][4];
    const __m512i flip = _mm512_set1_epi8((char)0x80), ones = _mm512_set1_epi16(1);
    const size_t rs = (size_t)nb * sizeof(block_q8), ahead = (size_t)RB * rs;
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 4
        for (int p = 0; p < PB; p++) acc[i][p] = _mm512_setzero_ps();
    for (int k = 0; k < nb; k++) {
        if (pf)
#pragma GCC unroll 4
            for (int i = 0; i < RB; i++) {
                const char *b = (const char *)(w + (size_t)i * nb + k);
                _mm_prefetch(b + ahead, _MM_HINT_T0);
                _mm_prefetch(b + 2 * ahead, _MM_HINT_T1);
            }
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            const block_q8 *b = w + (size_t)i * nb + k;
            __m512i wv = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b->q));
            __m512 ws = _mm512_set1_ps(b->scale);
            __m512i wa = vnni ? _mm512_xor_si512(wv, flip) : _mm512_abs_epi8(wv);
            __mmask64 wneg = vnni ? 0 : _mm512_movepi8_mask(wv);
#pragma GCC unroll 4
            for (int p = 0; p < PB; p++) {
                const xpair *xp = X + (size_t)p * nb + k;
                __m512i xv = _mm512_loadu_si512(xp->x), d;
                if (vnni) {
                    d = _mm512_dpbusd_epi32(_mm512_loadu_si512(xp->neg), wa, xv);
                } else {
                    __m512i sx = _mm512_mask_sub_epi8(xv, wneg, _mm512_setzero_si512(), xv);
                    d = _mm512_madd_epi16(_mm512_maddubs_epi16(wa, sx), ones);
                }
                __m512 s = _mm512_mul_ps(ws, _mm512_loadu_ps(xp->dx));
                acc[i][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[i][p]);
            }
        }
    }
    /* accumulators a = p * RB + i, four at a time */
    const int na = RB * PB;
    float o[32];
    int a = 0;
#pragma GCC unroll 4
    for (; a + 4 <= na; a += 4)
        _mm256_storeu_ps(o + 2 * a, hsum_pairs4(acc[a % RB][a / RB], acc[(a + 1) % RB][(a + 1) / RB],
                                                acc[(a + 2) % RB][(a + 2) / RB], acc[(a + 3) % RB][(a + 3) / RB]));
#pragma GCC unroll 4
    for (; a < na; a++) {
        __m512 v = acc[a % RB][a / RB];
        o[2 * a] = hsum256(_mm512_castps512_ps256(v));
        o[2 * a + 1] = hsum256(_mm512_extractf32x8_ps(v, 1));
    }
#pragma GCC unroll 4
    for (int p = 0; p < PB; p++)
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++)
            if (2 * p + h < nt)
#pragma GCC unroll 4
                for (int i = 0; i < RB; i++) out[(size_t)(2 * p + h) * ldo + i] = o[2 * (p * RB + i) + h];
}

typedef void (*q8_tile_fn)(const block_q8 *, int, const xpair *, int, float *, size_t, int);
#define Q8T(vnni, RB, PB)                                                                                  \
    static void q8t_##vnni##_##RB##_##PB(const block_q8 *w, int nb, const xpair *X, int nt, float *o, size_t ldo, \
                                         int pf) { q8_tile(vnni, w, nb, RB, PB, X, nt, o, ldo, pf); }
#define Q8T_PB(vnni, RB) Q8T(vnni, RB, 1) Q8T(vnni, RB, 2) Q8T(vnni, RB, 3) Q8T(vnni, RB, 4)
#define Q8T_ALL(vnni) Q8T_PB(vnni, 1) Q8T_PB(vnni, 2) Q8T_PB(vnni, 3) Q8T_PB(vnni, 4)
Q8T_ALL(0)
Q8T_ALL(1)
#define Q8ROW(vnni, RB) {q8t_##vnni##_##RB##_1, q8t_##vnni##_##RB##_2, q8t_##vnni##_##RB##_3, q8t_##vnni##_##RB##_4}
/* [vnni][RB - 1][PB - 1] */
static const q8_tile_fn q8_tiles[2][4][4] = {
    {Q8ROW(0, 1), Q8ROW(0, 2), Q8ROW(0, 3), Q8ROW(0, 4)},
    {Q8ROW(1, 1), Q8ROW(1, 2), Q8ROW(1, 3), Q8ROW(1, 4)},
};
#undef Q8T
#undef Q8T_PB
#undef Q8T_ALL
#undef Q8ROW

#define Q8_RB 4
#define Q8_PB 4

static void q8q8_matmul(int vnni, const mat *W, const block_q8 *XQ, int n, float *Y, int ldy, int row0, int row1) {
    int nb = W->cols / QK8;
    if (n <= 0 || row0 >= row1 || nb <= 0) return;
    const block_q8 *base = (const block_q8 *)W->data;
    int chunk = (int)(LOWP_MM_X_BYTES / ((size_t)nb * sizeof(xpair))) * 2;   /* tokens per pass */
    if (chunk < 2) chunk = 2;
    if (chunk > n + (n & 1)) chunk = n + (n & 1);
    xpair xp[(size_t)(chunk / 2) * nb] __attribute__((aligned(64)));
    for (int t0 = 0; t0 < n; t0 += chunk) {
        int nt = n - t0 < chunk ? n - t0 : chunk, np = (nt + 1) / 2;
        for (int p = 0; p < np; p++)
            for (int k = 0; k < nb; k++)
                xpair_pack(xp + (size_t)p * nb + k, XQ + (size_t)(t0 + 2 * p) * nb + k,
                           2 * p + 1 < nt ? XQ + (size_t)(t0 + 2 * p + 1) * nb + k : NULL);
        int ntile = (np + Q8_PB - 1) / Q8_PB;
        float *Yc = Y + (size_t)t0 * ldy;
        for (int r = row0; r < row1;) {
            int rb = row1 - r >= Q8_RB ? Q8_RB : row1 - r;
            for (int k = 0, p = 0; k < ntile; k++) {
                int p1 = (int)((long long)np * (k + 1) / ntile), pb = p1 - p;
                int tt = nt - 2 * p < 2 * pb ? nt - 2 * p : 2 * pb;
                q8_tiles[vnni][rb - 1][pb - 1](base + (size_t)r * nb, nb, xp + (size_t)p * nb, tt,
                                               Yc + (size_t)(2 * p) * ldy + r, (size_t)ldy, k == 0);
                p = p1;
            }
            r += rb;
        }
    }
}

void matmul_rows_q8q8_avx512vnni(const mat *W, const block_q8 *XQ, int n, float *Y, int ldy, int row0, int row1) {
    q8q8_matmul(1, W, XQ, n, Y, ldy, row0, row1);
}

void matmul_rows_q8q8_avx512(const mat *W, const block_q8 *XQ, int n, float *Y, int ldy, int row0, int row1) {
    q8q8_matmul(0, W, XQ, n, Y, ldy, row0, row1);
}

/* ---------------------------------------------------------------- BF16 x bf16 */

/* RB rows (stride rs elements) x TB tokens (token t at X + t cols) -> out[t ldo + i]. */
AI void bb_tile(const uint16_t *w, size_t rs, int RB, int TB, const uint16_t *X, int cols, float *out, size_t ldo,
                int pf) {
    __m512 acc[4][8];
    const size_t ahead = (size_t)RB * rs * 2;
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) acc[i][t] = _mm512_setzero_ps();
    int kfull = cols & ~31, k = 0;
    for (; k < kfull; k += 32) {
        if (pf)
#pragma GCC unroll 4
            for (int i = 0; i < RB; i++) {
                const char *p = (const char *)(w + i * rs + k);
                _mm_prefetch(p + ahead, _MM_HINT_T0);
                _mm_prefetch(p + 2 * ahead, _MM_HINT_T1);
            }
        __m512bh xv[8];
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) xv[t] = (__m512bh)_mm512_loadu_si512(X + (size_t)t * cols + k);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            __m512bh wv = (__m512bh)_mm512_loadu_si512(w + i * rs + k);
#pragma GCC unroll 8
            for (int t = 0; t < TB; t++) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], wv, xv[t]);
        }
    }
    if (k < cols) {
        __mmask32 m = (__mmask32)((1ull << (cols - k)) - 1);
        __m512bh xv[8];
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) xv[t] = (__m512bh)_mm512_maskz_loadu_epi16(m, X + (size_t)t * cols + k);
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w + i * rs + k);
#pragma GCC unroll 8
            for (int t = 0; t < TB; t++) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], wv, xv[t]);
        }
    }
    /* outputs j = t * RB + i, four at a time */
    float o[32];
    int j = 0;
#pragma GCC unroll 8
    for (; j + 4 <= RB * TB; j += 4)
        _mm_storeu_ps(o + j, hsum4_ps(acc[j % RB][j / RB], acc[(j + 1) % RB][(j + 1) / RB], acc[(j + 2) % RB][(j + 2) / RB],
                                   acc[(j + 3) % RB][(j + 3) / RB]));
#pragma GCC unroll 4
    for (; j < RB * TB; j++) o[j] = _mm512_reduce_add_ps(acc[j % RB][j / RB]);
#pragma GCC unroll 8
    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) out[(size_t)t * ldo + i] = o[t * RB + i];
}

typedef void (*bb_tile_fn)(const uint16_t *, size_t, const uint16_t *, int, float *, size_t, int);
#define BBT(RB, TB)                                                                                        \
    static void bbt_##RB##_##TB(const uint16_t *w, size_t rs, const uint16_t *X, int cols, float *o, size_t ldo, int pf) { \
        bb_tile(w, rs, RB, TB, X, cols, o, ldo, pf);                                                         \
    }
#define BBT_TB(RB) BBT(RB, 1) BBT(RB, 2) BBT(RB, 3) BBT(RB, 4) BBT(RB, 5) BBT(RB, 6)
BBT_TB(1)
BBT_TB(2)
BBT_TB(3)
BBT_TB(4)
BBT(1, 7) BBT(1, 8) BBT(2, 7) BBT(2, 8)
#define BBROW(RB) {bbt_##RB##_1, bbt_##RB##_2, bbt_##RB##_3, bbt_##RB##_4, bbt_##RB##_5, bbt_##RB##_6, NULL, NULL}
/* [RB - 1][TB - 1]; TB 7 and 8 only with RB <= 2 */
static const bb_tile_fn bb_tiles[4][8] = {
    {bbt_1_1, bbt_1_2, bbt_1_3, bbt_1_4, bbt_1_5, bbt_1_6, bbt_1_7, bbt_1_8},
    {bbt_2_1, bbt_2_2, bbt_2_3, bbt_2_4, bbt_2_5, bbt_2_6, bbt_2_7, bbt_2_8},
    BBROW(3), BBROW(4)};
#undef BBT
#undef BBT_TB
#undef BBROW

/* Rows x tokens per tile: 4 x 6 (n split into near-equal tiles of up to 6), but 2 x n for
 * n = 7 or 8 (one tile, 16 accumulators: at n = 8, 1024 x 1024 hot on Zen 5, 2 x 8 ran
 * 219-225 GFLOP/s against 193-198 for 4 x 4 + 4 x 4; 3 x 8 spills registers). */
#define BB_RB 4
#define BB_TB 6
/* Tokens per pass over the rows: X of a pass stays in L2 (at least one token). */
#define BB_X_BYTES (256 * 1024)

void matmul_rows_bf16bf16_avx512bf16(const mat *W, const uint16_t *XB, int n, float *Y, int ldy, int row0, int row1) {
    int cols = W->cols;
    if (n <= 0 || row0 >= row1 || cols <= 0) return;
    const uint16_t *base = (const uint16_t *)W->data;
    int chunk = (int)(BB_X_BYTES / ((size_t)cols * 2));
    if (chunk < 1) chunk = 1;
    for (int t0 = 0; t0 < n; t0 += chunk) {
        int nt = n - t0 < chunk ? n - t0 : chunk, ntile = (nt + BB_TB - 1) / BB_TB;
        int rbmax = BB_RB;
        if (nt == 7 || nt == 8) { ntile = 1; rbmax = 2; }
        const uint16_t *Xc = XB + (size_t)t0 * cols;
        float *Yc = Y + (size_t)t0 * ldy;
        for (int r = row0; r < row1;) {
            int rb = row1 - r >= rbmax ? rbmax : row1 - r;
            for (int k = 0, t = 0; k < ntile; k++) {
                int t1 = (int)((long long)nt * (k + 1) / ntile), tb = t1 - t;
                bb_tiles[rb - 1][tb - 1](base + (size_t)r * cols, (size_t)cols, Xc + (size_t)t * cols, cols,
                                         Yc + (size_t)t * ldy + r, (size_t)ldy, k == 0);
                t = t1;
            }
            r += rb;
        }
    }
}
