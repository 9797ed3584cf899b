/* matvec_q4_0_avx512.c - AVX-512 kernels for ggml's Q4_0 and Q5_0 weights against int8
 * activations: decode (matvec) and small batches (matmul).
 *
 * Legend
 *   W [rows, cols], nblk = cols / 32 blocks per row (block_q4_0: 18 bytes, block_q5_0: 22);
 *   a group is 4 consecutive blocks of a row (72 / 88 bytes, 128 weights).
 *   x8       x quantized per 32-block to int8 with an f32 step (quantize_row_q8a_ref: d =
 *            max|x| / 127, q = round-to-even(x 127 / max|x|)), laid out per group as xgroup:
 *            the low halves (elements 0..15) of the 4 blocks in one 64-byte vector, the high
 *            halves in a second, so that one vector of the weights' nibbles (16-byte lane j =
 *            the 16 qs bytes of block j, masked or shifted) meets x8 without a shuffle.
 *   products vpdpbusd (VNNI; else vpmaddubsw + vpmaddwd) of the unsigned weight codes u
 *            (Q4_0: 0..15, Q5_0: 0..31) with x8: 16 int32 lanes, lane 4j..4j+3 partial sums of
 *            block j. The code offset (value = d (u - 8), Q5_0 d (u - 16)) comes off as
 *            8 sum(x8) (16 sum(x8)): the accumulator starts from xgroup.neg8 (-8 sum in lane
 *            4j). Exact integers; then per group acc += cvt(lanes) * (d_j dx_j), lanes 4j..4j+3.
 *   weights  a group's bytes are two loads (64 at 0 and 16 / 32 at 56: nothing past the group
 *            is read); vpermt2w gathers the 4 x 16 qs bytes into one vector, the 4 f16 d (each
 *            4 times, for vcvtph2ps) and for Q5_0 the 4 qh words (vpshufb + vptestmb turn bit l
 *            of qh_j into a mask bit of byte l of lane j: + 16 by a masked or).
 *   tile     RB rows x TB tokens, row by row inside: a row's u vectors and scales are built
 *            once per group and used for the TB tokens (x8 from L1 as memory operands).
 *            matvec 4 x 1; matmul 2 x up to 8 (n split into near-equal tiles).
 *   tail     a last group of 1..3 blocks is read by the same loads masked to its bytes (the
 *            missing blocks come out zero: d = 0; their x8 and dx are 0 too).
 *   prefetch every line of the rows one row block ahead into L1 (T0) and two ahead into L2
 *            (T1), at least Q40_PF bytes ahead (the matvec discipline of matvec_avx512.c).
 *
 * Same integers as matvec_rows_q8a_ref (kernels/ref.c); the f32 steps differ from it only
 * in summation order. The f32-activation reference matvec_rows_ref is what this
 * approximates: each x moves by at most dx / 2 (bound: kernels/README.md).
 *
 * Compiled with the AVX-512 flags (Makefile: *_avx512.c); the VNNI instruction is used only
 * when CPUID has it.
 */
#include <float.h>
#include <stddef.h>
#include <string.h>
#include <immintrin.h>

#include "hsum_avx512.h"
#include "kernels_impl.h"

#define AI static inline __attribute__((always_inline))

#ifndef Q40_PF
#define Q40_PF 4096
#endif
#ifndef Q40_START
#define Q40_START 1           /* prefetch a matvec's first 2 Q40_PF bytes at once (prefetch_start) */
#endif
#ifndef Q40_PFN
#define Q40_PFN 4             /* prefetches per row and group: T0 start, T1 start, T0 end, T1 end */
#endif

typedef struct {
    int8_t lo[64];       /* 16-byte lane j: x8 of block 4g + j, elements 0..15 */
    int8_t hi[64];       /* elements 16..31 */
    int32_t neg8[16];    /* lane 4j: -8 x the sum of block 4g + j's 32 x8; lanes 4j + 1..3: 0 */
    float dx[16];        /* lanes 4j..4j + 3: block 4g + j's step */
} xgroup;                /* 256 bytes */

/* ---------------------------------------------------------------- x quantization */

/* x [32 nblk] -> ceil(nblk / 4) groups (blocks past nblk zero). 0 if x holds Inf / NaN or a
 * block whose max|x| is below 1e-30 but not 0 (as quantize_row_q8a_ref). */
static int q8a_groups(const float *x, int nblk, xgroup *g) {
    const __m512 big = _mm512_set1_ps(FLT_MAX);
    int ng = (nblk + 3) / 4;
    for (int k = 0; k < 4 * ng; k++) {
        xgroup *G = g + k / 4;
        int j = k & 3;
        if (k >= nblk) {
            memset(G->lo + 16 * j, 0, 16);
            memset(G->hi + 16 * j, 0, 16);
            for (int i = 0; i < 4; i++) { G->neg8[4 * j + i] = 0; G->dx[4 * j + i] = 0.0f; }
            continue;
        }
        __m512 a0 = _mm512_loadu_ps(x + 32 * (size_t)k), a1 = _mm512_loadu_ps(x + 32 * (size_t)k + 16);
        __m512 b0 = _mm512_abs_ps(a0), b1 = _mm512_abs_ps(a1);
        if (_mm512_cmp_ps_mask(b0, big, _CMP_NLE_UQ) | _mm512_cmp_ps_mask(b1, big, _CMP_NLE_UQ)) return 0;
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(b0, b1));
        if (amax > 0.0f && amax < 1e-30f) return 0;
        float id = amax > 0.0f ? 127.0f / amax : 0.0f, d = amax / 127.0f;
        __m512 idv = _mm512_set1_ps(id);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(a0, idv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(a1, idv));
        _mm_storeu_si128((__m128i *)(G->lo + 16 * j), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(G->hi + 16 * j), _mm512_cvtepi32_epi8(q1));
        G->neg8[4 * j] = -8 * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        G->neg8[4 * j + 1] = G->neg8[4 * j + 2] = G->neg8[4 * j + 3] = 0;
        for (int i = 0; i < 4; i++) G->dx[4 * j + i] = d;
    }
    return 1;
}

/* ---------------------------------------------------------------- pieces */

AI __m512i dpb(int vnni, __m512i acc, __m512i u, __m512i x) {
    return vnni ? _mm512_dpbusd_epi32(acc, u, x)
                : _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, x), _mm512_set1_epi16(1)));
}

typedef struct {
    __m512i iq;          /* vpermt2w: qs words of blocks 0..3 -> lanes 0..3 */
    __m512i id;          /* vpermt2w: d_j -> words 4j..4j + 3 (low 256 bits) */
    __m512i ih;          /* Q5_0: qh_j (2 words) -> words 0, 1 of lane j */
    __m512i hsel_lo, hsel_hi; /* Q5_0: vpshufb picking byte l / 8 (hi: 2 + l / 8) of qh in lane l's byte */
    __m512i hbit;        /* Q5_0: 1 << (l % 8) in byte l of each lane */
} q40_ctrl;

/* Word s of a group (18 or 22 bytes per block) as a vpermt2w index into (the 64 bytes at 0,
 * the bytes from 56): words 0..31 from the first, 28.. from the second. */
static short widx(int s) { return (short)(s < 32 ? s : 32 + (s - 28)); }

static q40_ctrl q40_ctrl_make(int q5) {
    const int bw = q5 ? 11 : 9, qs0 = q5 ? 3 : 1;   /* words per block, first qs word */
    short iq[32], id[32], ih[32];
    char hl[64], hh[64], hb[64];
    for (int w = 0; w < 32; w++) {
        int j = w / 8, l = w % 8;
        iq[w] = widx(bw * j + qs0 + l);
        id[w] = widx(w < 16 ? bw * (w / 4) : 0);
        ih[w] = widx(q5 ? bw * j + 1 + (l & 1) : 0);
    }
    for (int i = 0; i < 64; i++) {
        int l = i % 16;
        hl[i] = (char)(l / 8);
        hh[i] = (char)(2 + l / 8);
        hb[i] = (char)(1 << (l % 8));
    }
    q40_ctrl c;
    c.iq = _mm512_loadu_si512(iq);
    c.id = _mm512_loadu_si512(id);
    c.ih = _mm512_loadu_si512(ih);
    c.hsel_lo = _mm512_loadu_si512(hl);
    c.hsel_hi = _mm512_loadu_si512(hh);
    c.hbit = _mm512_loadu_si512(hb);
    return c;
}

/* The u vectors and d_j of a group from its two loads (a: bytes 0..63, b: from byte 56). */
AI void group_unpack(int q5, __m512i a, __m512i b, const q40_ctrl *c, __m512i *ulo, __m512i *uhi, __m512 *dw) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512i q = _mm512_permutex2var_epi16(a, c->iq, b);
    *dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(a, c->id, b)));
    *ulo = _mm512_and_si512(q, m4);
    *uhi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
    if (q5) {
        const __m512i b16 = _mm512_set1_epi8(0x10);
        __m512i h = _mm512_permutex2var_epi16(a, c->ih, b);
        __mmask64 ml = _mm512_test_epi8_mask(_mm512_shuffle_epi8(h, c->hsel_lo), c->hbit);
        __mmask64 mh = _mm512_test_epi8_mask(_mm512_shuffle_epi8(h, c->hsel_hi), c->hbit);
        *ulo = _mm512_mask_add_epi8(*ulo, ml, *ulo, b16);
        *uhi = _mm512_mask_add_epi8(*uhi, mh, *uhi, b16);
    }
}

/* The u vectors (elements 0..15 | 16..31 of each block) and the d_j scales of the group at p. */
AI void group_w(int q5, const uint8_t *p, const q40_ctrl *c, __m512i *ulo, __m512i *uhi, __m512 *dw) {
    __m512i a = _mm512_loadu_si512(p);
    __m512i b = q5 ? _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p + 56)))
                   : _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(p + 56)));
    group_unpack(q5, a, b, c, ulo, uhi, dw);
}

/* A last group of `tail` (1..3) blocks: the same two loads masked to its n = tail * block
 * bytes (nothing past them is read); the missing blocks come out zero (d = 0, no codes). */
AI void group_w_tail(int q5, const uint8_t *p, int tail, const q40_ctrl *c, __m512i *ulo, __m512i *uhi, __m512 *dw) {
    int n = tail * (q5 ? (int)sizeof(block_q5_0) : (int)sizeof(block_q4_0)), n2 = n - 56;   /* n <= 66 */
    __m512i a = _mm512_maskz_loadu_epi8(n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1), p);
    __m512i b = n2 > 0 ? _mm512_castsi256_si512(_mm256_maskz_loadu_epi8(((__mmask32)1 << n2) - 1, p + 56)) : _mm512_setzero_si512();
    group_unpack(q5, a, b, c, ulo, uhi, dw);
}

/* One group of RB rows (row i at p[i]) x TB tokens into acc. */
AI void q40_group(int q5, int vnni, const uint8_t *const *p, int tail, int RB, int TB, const xgroup *X, size_t xs,
                  __m512 acc[4][8], const q40_ctrl *c) {
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++) {
        __m512i ulo, uhi;
        __m512 dw;
        if (tail) group_w_tail(q5, p[i], tail, c, &ulo, &uhi, &dw);
        else group_w(q5, p[i], c, &ulo, &uhi, &dw);
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) {
            const xgroup *xg = X + (size_t)t * xs;
            __m512i is = _mm512_loadu_si512(xg->neg8);
            if (q5) is = _mm512_add_epi32(is, is);
            is = dpb(vnni, is, ulo, _mm512_loadu_si512(xg->lo));
            is = dpb(vnni, is, uhi, _mm512_loadu_si512(xg->hi));
            acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dw, _mm512_loadu_ps(xg->dx)), acc[i][t]);
        }
    }
}

/* RB rows (stride rs bytes) x TB tokens (X rows of xs groups); out[t * ldo + i]. */
AI void q40_tile(int q5, int vnni, const char *w, size_t rs, int nblk, int RB, int TB, const xgroup *X, size_t xs,
                 float *out, size_t ldo, int pf, const q40_ctrl *cp) {
    __m512 acc[4][8];
    const q40_ctrl c = *cp;
    const int bb = q5 ? (int)sizeof(block_q5_0) : (int)sizeof(block_q4_0), gb = 4 * bb;
    const int ng = nblk / 4, tail = nblk % 4;
    const size_t ahead = (size_t)RB * rs > Q40_PF ? (size_t)RB * rs : Q40_PF;
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) acc[i][t] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        const uint8_t *p[4];
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            p[i] = (const uint8_t *)w + i * rs + (size_t)g * gb;
            if (pf) {
                _mm_prefetch((const char *)p[i] + ahead, _MM_HINT_T0);
                if (Q40_PFN > 2) _mm_prefetch((const char *)p[i] + ahead + gb - 1, _MM_HINT_T0);
                if (Q40_PFN > 1) _mm_prefetch((const char *)p[i] + 2 * ahead, _MM_HINT_T1);
                if (Q40_PFN > 3) _mm_prefetch((const char *)p[i] + 2 * ahead + gb - 1, _MM_HINT_T1);
            }
        }
        q40_group(q5, vnni, p, 0, RB, TB, X + g, xs, acc, &c);
    }
    if (tail) {   /* 1..3 blocks: masked loads */
        const uint8_t *p[4];
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) p[i] = (const uint8_t *)w + i * rs + (size_t)ng * gb;
        q40_group(q5, vnni, p, tail, RB, TB, X + ng, xs, acc, &c);
    }
    if (RB == 4 && TB == 1) { _mm_storeu_ps(out, hsum4_ps(acc[0][0], acc[1][0], acc[2][0], acc[3][0])); return; }
#pragma GCC unroll 8
    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) out[(size_t)t * ldo + i] = _mm512_reduce_add_ps(acc[i][t]);
}

/* Rows of 1 or 2 blocks (MLA's attn_k_b at dn = 32 or 64 columns): a row is shorter than a
 * group, so q = 4 / nblk consecutive rows (contiguous in memory) make one 4-block group,
 * met by x's blocks repeated q times (xr); lanes 4j..4j+3 of the group's product are block
 * j's, i.e. row j / nblk's: 4-lane sums, gathered, and for 2 blocks added in pairs.
 * y[i] for rows i < nrows - nrows % q; the caller runs the rest. */
AI void q40_narrow(int q5, int vnni, const char *w, int nblk, const xgroup *x1, float *y, int nrows, const q40_ctrl *c) {
    const int bb = q5 ? (int)sizeof(block_q5_0) : (int)sizeof(block_q4_0), gb = 4 * bb, q = 4 / nblk, ng = nrows / q;
    xgroup xr __attribute__((aligned(64)));
    for (int j = 0; j < 4; j++) {
        int s = j % nblk;
        memcpy(xr.lo + 16 * j, x1->lo + 16 * s, 16);
        memcpy(xr.hi + 16 * j, x1->hi + 16 * s, 16);
        for (int i = 0; i < 4; i++) { xr.neg8[4 * j + i] = x1->neg8[4 * s + i]; xr.dx[4 * j + i] = x1->dx[4 * s + i]; }
    }
    __m512i n8 = _mm512_load_si512(xr.neg8);
    if (q5) n8 = _mm512_add_epi32(n8, n8);
    const __m512i xlo = _mm512_load_si512(xr.lo), xhi = _mm512_load_si512(xr.hi);
    const __m512 dx = _mm512_load_ps(xr.dx);
    for (int g = 0; g < ng; g++) {
        const uint8_t *p = (const uint8_t *)w + (size_t)g * gb;
        _mm_prefetch((const char *)p + Q40_PF, _MM_HINT_T0);
        _mm_prefetch((const char *)p + 2 * Q40_PF, _MM_HINT_T1);
        __m512i ulo, uhi;
        __m512 dw;
        group_w(q5, p, c, &ulo, &uhi, &dw);
        __m512i is = dpb(vnni, dpb(vnni, n8, ulo, xlo), uhi, xhi);
        __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dw, dx));
        __m128 s4 = hsum_quads_ps(v);   /* block sums 0..3 */
        if (nblk == 1) _mm_storeu_ps(y + 4 * g, s4);
        else _mm_storel_pi((__m64 *)(y + 2 * g), _mm_hadd_ps(s4, s4));
    }
}

/* The first lines of a matvec's rows, all at once: the running prefetch covers bytes from
 * `ahead` on, so without this every small matrix (an expert's 150 KB) begins with a few KB of
 * demand misses one after another. T0 up to `ahead`, T1 the next `ahead`. */
AI void prefetch_start(const char *p, size_t total, size_t ahead) {
    for (size_t o = 0; o < total && o < ahead; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
    for (size_t o = ahead; o < total && o < 2 * ahead; o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
}

/* ---------------------------------------------------------------- drivers */

typedef void (*q40_tile_fn)(const char *, size_t, int, const xgroup *, size_t, float *, size_t, int, const q40_ctrl *);

#define TILE(name, q5, vnni, RB, TB)                                                                          \
    static void name(const char *w, size_t rs, int nblk, const xgroup *X, size_t xs, float *o, size_t ldo, int pf, \
                     const q40_ctrl *c) { q40_tile(q5, vnni, w, rs, nblk, RB, TB, X, xs, o, ldo, pf, c); }
#define TILES_TB(q5, vnni, RB)                                                                                 \
    TILE(t_##q5##_##vnni##_##RB##_1, q5, vnni, RB, 1) TILE(t_##q5##_##vnni##_##RB##_2, q5, vnni, RB, 2)        \
    TILE(t_##q5##_##vnni##_##RB##_3, q5, vnni, RB, 3) TILE(t_##q5##_##vnni##_##RB##_4, q5, vnni, RB, 4)        \
    TILE(t_##q5##_##vnni##_##RB##_5, q5, vnni, RB, 5) TILE(t_##q5##_##vnni##_##RB##_6, q5, vnni, RB, 6)        \
    TILE(t_##q5##_##vnni##_##RB##_7, q5, vnni, RB, 7) TILE(t_##q5##_##vnni##_##RB##_8, q5, vnni, RB, 8)
#define TILES(q5, vnni) TILE(t_##q5##_##vnni##_4_1, q5, vnni, 4, 1) TILES_TB(q5, vnni, 1) TILES_TB(q5, vnni, 2)
TILES(0, 0)
TILES(0, 1)
TILES(1, 0)
TILES(1, 1)
#undef TILE
#undef TILES_TB
#undef TILES

typedef struct {
    q40_tile_fn mv4;           /* 4 rows x 1 token */
    q40_tile_fn mm[3][9];      /* [RB 1 | 2][TB 1..8] */
} q40_tiles;

#define ROW_TB(q5, vnni, RB) {NULL, t_##q5##_##vnni##_##RB##_1, t_##q5##_##vnni##_##RB##_2, t_##q5##_##vnni##_##RB##_3, \
    t_##q5##_##vnni##_##RB##_4, t_##q5##_##vnni##_##RB##_5, t_##q5##_##vnni##_##RB##_6, t_##q5##_##vnni##_##RB##_7, \
    t_##q5##_##vnni##_##RB##_8}
#define SET(q5, vnni) {t_##q5##_##vnni##_4_1, {{NULL}, ROW_TB(q5, vnni, 1), ROW_TB(q5, vnni, 2)}}
static const q40_tiles tiles[2][2] = {{SET(0, 0), SET(0, 1)}, {SET(1, 0), SET(1, 1)}};
#undef ROW_TB
#undef SET

static const q40_tiles *tiles_of(int q5) { return &tiles[q5][cpu_get_features()->avx512_vnni ? 1 : 0]; }

#define MM_TB_MAX 8

/* y[r - row0] for r in [row0, row1) from the groups of x. */
static void q40_matvec(const mat *W, int q5, const xgroup *xg, float *y, int row0, int row1) {
    const q40_tiles *ts = tiles_of(q5);
    q40_ctrl c = q40_ctrl_make(q5);
    int nblk = W->cols / QK4_0;
    size_t rs = mat_row_bytes(W->dtype, W->cols);
    const char *base = (const char *)W->data;
    int r = row0;
    if (Q40_START) prefetch_start(base + (size_t)row0 * rs, (size_t)(row1 - row0) * rs, 4 * rs > Q40_PF ? 4 * rs : Q40_PF);
    if (nblk <= 2) {   /* 1- or 2-block rows: several per group */
        int vnni = cpu_get_features()->avx512_vnni, done = (row1 - row0) - (row1 - row0) % (4 / nblk);
        const char *w = base + (size_t)r * rs;
        if (q5) { if (vnni) q40_narrow(1, 1, w, nblk, xg, y, done, &c); else q40_narrow(1, 0, w, nblk, xg, y, done, &c); }
        else { if (vnni) q40_narrow(0, 1, w, nblk, xg, y, done, &c); else q40_narrow(0, 0, w, nblk, xg, y, done, &c); }
        r += done;
    }
    for (; r + 4 <= row1; r += 4) ts->mv4(base + (size_t)r * rs, rs, nblk, xg, 0, y + (r - row0), 0, 1, &c);
    for (; r < row1; r++) ts->mm[1][1](base + (size_t)r * rs, rs, nblk, xg, 0, y + (r - row0), 0, 1, &c);
}

/* Y[t, r] for t < n (X: n rows of xs groups): rows in pairs, tokens in ceil(n / 8) tiles of
 * near-equal width; the first token tile of a row pair prefetches the next rows. */
static void q40_matmul(const mat *W, int q5, const xgroup *X, size_t xs, int n, float *Y, int ldy, int row0, int row1) {
    const q40_tiles *ts = tiles_of(q5);
    q40_ctrl c = q40_ctrl_make(q5);
    int nblk = W->cols / QK4_0, ntile = (n + MM_TB_MAX - 1) / MM_TB_MAX;
    size_t rs = mat_row_bytes(W->dtype, W->cols);
    const char *base = (const char *)W->data;
    for (int r = row0; r < row1;) {
        int rb = row1 - r >= 2 ? 2 : 1;
        for (int k = 0, t = 0; k < ntile; k++) {
            int t1 = (int)((long long)n * (k + 1) / ntile), tb = t1 - t;
            ts->mm[rb][tb](base + (size_t)r * rs, rs, nblk, X + (size_t)t * xs, xs, Y + (size_t)t * ldy + r, (size_t)ldy,
                           k == 0, &c);
            t = t1;
        }
        r += rb;
    }
}

/* Longest row whose x8 the matvec keeps on its stack (512 groups of 256 bytes = 128 KiB). */
#define Q40_MAX_COLS 65536
/* Bytes of x8 groups the matmul keeps on its stack per pass over the rows. */
#define Q40_MATMUL_X_BYTES (256 * 1024)

static void q40_matvec_f32(const mat *W, int q5, const float *x, float *y, int row0, int row1) {
    int nblk = W->cols / QK4_0;
    if (W->cols > Q40_MAX_COLS || nblk == 0) { matvec_rows_ref(W, x, y, row0, row1); return; }
    xgroup xg[(nblk + 3) / 4] __attribute__((aligned(64)));
    if (!q8a_groups(x, nblk, xg)) { matvec_rows_ref(W, x, y, row0, row1); return; }
    q40_matvec(W, q5, xg, y, row0, row1);
}

/* Tokens in passes of as many as Q40_MATMUL_X_BYTES holds; a token whose x does not quantize
 * gets its rows from the f32 reference afterwards. */
static void q40_matmul_f32(const mat *W, int q5, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    int nblk = W->cols / QK4_0;
    size_t xs = (size_t)(nblk + 3) / 4;
    int chunk = (int)(Q40_MATMUL_X_BYTES / (xs * sizeof(xgroup) + 1));
    if (W->cols > Q40_MAX_COLS || nblk == 0 || chunk < 1) { matmul_rows_ref(W, X, n, Y, ldy, row0, row1); return; }
    if (chunk > n) chunk = n;
    xgroup xg[(size_t)chunk * xs] __attribute__((aligned(64)));
    for (int t0 = 0; t0 < n; t0 += chunk) {
        int nt = n - t0 < chunk ? n - t0 : chunk;
        unsigned char bad[nt];
        for (int t = 0; t < nt; t++) {
            bad[t] = !q8a_groups(X + (size_t)(t0 + t) * W->cols, nblk, xg + (size_t)t * xs);
            if (bad[t]) memset(xg + (size_t)t * xs, 0, xs * sizeof(xgroup));
        }
        q40_matmul(W, q5, xg, xs, nt, Y + (size_t)t0 * ldy, ldy, row0, row1);
        for (int t = 0; t < nt; t++)
            if (bad[t]) matmul_rows_ref(W, X + (size_t)(t0 + t) * W->cols, 1, Y + (size_t)(t0 + t) * ldy, ldy, row0, row1);
    }
}

void matvec_rows_q4_0_avx512(const mat *W, const float *x, float *y, int row0, int row1) { q40_matvec_f32(W, 0, x, y, row0, row1); }
void matvec_rows_q5_0_avx512(const mat *W, const float *x, float *y, int row0, int row1) { q40_matvec_f32(W, 1, x, y, row0, row1); }
void matmul_rows_q4_0_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    q40_matmul_f32(W, 0, X, n, Y, ldy, row0, row1);
}
void matmul_rows_q5_0_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    q40_matmul_f32(W, 1, X, n, Y, ldy, row0, row1);
}
