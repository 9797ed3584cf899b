/* matvec_kq_avx512.c - AVX-512 kernels for the k-quant weights Q4_K and Q6_K (ggml's blocks)
 * against activations quantized to block_q8_K: decode (matvec) and small batches (matmul).
 *
 * Legend
 *   W [rows, cols] of nb = cols / 256 super-blocks per row; x / X[t] quantized per 256 to
 *   int8 (block_q8_K: f32 dx, qs, 16 sums of 16).
 *   u vector   64 weights of one super-block as unsigned bytes: Q4_K the nibbles (0..15) of
 *              one 64-byte load of qs (x is reordered to match: q4k_x_order), Q6_K the 6-bit
 *              q (0..63, i.e. value + 32) in column order (nibble | high bits in one
 *              vpternlogd).
 *   products   vpmaddubsw u x -> 32 int16 pair sums (at most 2 * 63 * 127, no saturation),
 *              then vpdpwssd (VNNI; else vpmaddwd + vpaddd) with the pairs' sub-block scales
 *              as int16 -> 16 int32: exact integer sums per super-block.
 *   per super-block, per (row, token): acc += cvt(isum lanes) * (d dx), and the mins
 *              (Q4_K: dmin dx sum_j m_j (sum of x over sub-block j), from bsums) subtracted
 *              into the same f32 accumulator; Q6_K's "- 32" comes off the integer sum as
 *              32 sum_j sc_j bsum_j. Same integers as matvec_rows_q8K_ref; the f32 steps
 *              differ from it only in summation order (tests: tight bound).
 *   tile       RB rows x TB tokens: per super-block, row by row, the row's u vectors and
 *              scales are built once and used for the TB tokens (x from L1, as memory
 *              operands), so nothing but the RB x TB accumulators stays live across rows.
 *              matvec = tile RB 4 x TB 1; matmul 2 x 4.
 *   prefetch   the matvec discipline (matvec_avx512.c): every line of the rows one row block
 *              ahead into L1 (T0), two blocks ahead into L2 (T1), at least KQ_PF bytes ahead.
 *
 * Compiled with the AVX-512 flags (Makefile: *_avx512.c); the VNNI instruction is used only
 * when CPUID has it (the two versions of each loop are instantiated from one template).
 */
#include <stddef.h>
#include <string.h>
#include <immintrin.h>

#include "hsum_avx512.h"
#include "kernels_impl.h"

#define AI static inline __attribute__((always_inline))

#ifndef KQ_PF
#define KQ_PF 4096
#endif
#ifndef KQ_START
#define KQ_START 1
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

/* The first 16 bytes of a Q4_K / Q5_K block (d, dmin, the 12 scale bytes) -> bytes 0-7 the
 * 8 scales, 8-15 the 8 mins: kq_scale_min's bits, four sub-blocks at a time in 32-bit lanes
 * (lane 1 = packed bytes 0-3, lane 2 = bytes 4-7, lane 3 = bytes 8-11). */
AI __m128i kq_scales16(__m128i v) {
    __m128i a = _mm_shuffle_epi32(v, _MM_SHUFFLE(3, 2, 3, 1));   /* bytes 0-3, 8-11, 4-7, 8-11 */
    __m128i b = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 2, 1, 1));   /* bytes 0-3, 0-3, 4-7, 4-7 */
    a = _mm_srlv_epi32(a, _mm_set_epi32(4, 0, 0, 0));            /* the mins' high nibbles */
    a = _mm_and_si128(a, _mm_set_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f));
    b = _mm_and_si128(_mm_srli_epi32(b, 2), _mm_set_epi32(0x30303030, 0, 0x30303030, 0));   /* top 2 bits -> bits 4-5 */
    return _mm_or_si128(a, b);
}

/* Q4_K's x order: in each 128 columns the 32-column runs 1 and 2 swapped, so that one 64-byte
 * load of qs, masked to its low nibbles, meets x[0..31, 64..95] (sub-blocks 0 and 2) and
 * shifted, x[32..63, 96..127] (1 and 3). In place; bsums and d unchanged. */
static void q4k_x_order(block_q8_K *xq, size_t nb) {
    for (size_t b = 0; b < nb; b++)
        for (int h = 0; h < 2; h++) {
            int8_t *q = xq[b].qs + 128 * h;
            __m256i r1 = _mm256_loadu_si256((const __m256i *)(q + 32)), r2 = _mm256_loadu_si256((const __m256i *)(q + 64));
            _mm256_storeu_si256((__m256i *)(q + 32), r2);
            _mm256_storeu_si256((__m256i *)(q + 64), r1);
        }
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

#ifndef KQ_T0
#define KQ_T0 1
#endif
#ifndef KQ_T1X
#define KQ_T1X 2
#endif
/* 128-bit lane i of v in every lane / as a vector: immediates even where i is only constant
 * after unrolling (-O1 builds do not fold it). */
AI __m512i lane_bcast(__m512i v, int i) {
    switch (i) {
    case 0: return _mm512_shuffle_i32x4(v, v, 0x00);
    case 1: return _mm512_shuffle_i32x4(v, v, 0x55);
    case 2: return _mm512_shuffle_i32x4(v, v, 0xAA);
    default: return _mm512_shuffle_i32x4(v, v, 0xFF);
    }
}
AI __m128 lane_ps(__m512 v, int i) {
    switch (i) {
    case 0: return _mm512_extractf32x4_ps(v, 0);
    case 1: return _mm512_extractf32x4_ps(v, 1);
    case 2: return _mm512_extractf32x4_ps(v, 2);
    default: return _mm512_extractf32x4_ps(v, 3);
    }
}

AI void prefetch_block(const char *p, size_t ahead, int bytes) {
    for (int o = 0; o < bytes; o += 64) {
        if (KQ_T0) _mm_prefetch(p + ahead + o, _MM_HINT_T0);
        if (KQ_T1X) _mm_prefetch(p + KQ_T1X * ahead + o, _MM_HINT_T1);
    }
}

/* The first lines of a matvec's rows, all at once: the running prefetch covers bytes from
 * `ahead` on, so without this every small matrix (an expert's 150 KB) begins with a few KB of
 * demand misses one after another. T0 up to `ahead`, T1 the next `ahead`. */
AI void prefetch_start(const char *p, size_t total, size_t ahead) {
    for (size_t o = 0; o < total && o < ahead; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
    for (size_t o = ahead; o < total && o < 2 * ahead; o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
}

typedef struct {
    __m512i q4sc[4];     /* Q4_K: scales of u vector v (sub-blocks 0|2, 1|3, 4|6, 5|7) */
    __m256i q4min;       /* Q4_K: int16 lanes 2j, 2j + 1 = m_j */
    __m512i q6sc[2];     /* Q6_K: vpshufb picking int16 word L (4 + L) in 128-bit lane L */
} kq_ctrl;

AI kq_ctrl kq_ctrl_make(void) {
    kq_ctrl c;
    for (int v = 0; v < 4; v++) {
        int lo = (v & 2) * 2 + (v & 1);   /* u vector v holds sub-blocks lo and lo + 2 */
        c.q4sc[v] = ctrl4(lo, lo, lo + 2, lo + 2, 0);
    }
    for (int half = 0; half < 2; half++) {   /* int16 word 4 half + L of each lane, in lane L */
        char b[64];
        for (int i = 0; i < 64; i++) b[i] = (char)(2 * (4 * half + i / 16) + (i & 1));
        c.q6sc[half] = _mm512_loadu_si512(b);
    }
    short m[16];
    for (int i = 0; i < 16; i++) m[i] = (short)(0x8000 | (8 + i / 2));
    c.q4min = _mm256_loadu_si256((const __m256i *)m);
    return c;
}

/* ---------------------------------------------------------------- Q4_K, Q5_K */

/* The four u vectors of a Q4_K (q5 = 0) or Q5_K (q5 = 1) block at blk: the nibbles of qs as
 * two 64-byte loads (columns 0..31 | 64..95, 32..63 | 96..127, ... in q4k_x_order); Q5_K
 * adds bit j of qh[l] (sub-block j, column l) as 16, from one 32-byte load of qh in both
 * halves shifted per 16-bit lane: sub-blocks 0|2 by 4|2 left, 1|3 by 3|1, 4|6 by 0|2 right,
 * 5|7 by 1|3 right. */
AI void q45_u(const uint8_t *blk, int q5, __m512i u[4]) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const uint8_t *qs = blk + (q5 ? offsetof(block_q5_K, qs) : offsetof(block_q4_K, qs));
    __m512i a0 = _mm512_loadu_si512(qs), a1 = _mm512_loadu_si512(qs + 64);
    u[0] = _mm512_and_si512(a0, m4);                          /* columns 0..31 | 64..95 */
    u[1] = _mm512_and_si512(_mm512_srli_epi16(a0, 4), m4);    /* 32..63 | 96..127 */
    u[2] = _mm512_and_si512(a1, m4);
    u[3] = _mm512_and_si512(_mm512_srli_epi16(a1, 4), m4);
    if (q5) {
        const __m512i m10 = _mm512_set1_epi8(0x10);
        __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + offsetof(block_q5_K, qh))));
        const __m512i c0 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        const __m512i c1 = _mm512_inserti64x4(_mm512_set1_epi16(3), _mm256_set1_epi16(1), 1);
        const __m512i c2 = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
        const __m512i c3 = _mm512_inserti64x4(_mm512_set1_epi16(1), _mm256_set1_epi16(3), 1);
        u[0] = _mm512_or_si512(u[0], _mm512_and_si512(_mm512_sllv_epi16(qh, c0), m10));
        u[1] = _mm512_or_si512(u[1], _mm512_and_si512(_mm512_sllv_epi16(qh, c1), m10));
        u[2] = _mm512_or_si512(u[2], _mm512_and_si512(_mm512_srlv_epi16(qh, c2), m10));
        u[3] = _mm512_or_si512(u[3], _mm512_and_si512(_mm512_srlv_epi16(qh, c3), m10));
    }
}

/* RB rows (stride rs bytes) x TB tokens (XQ rows of nb blocks, stride xs blocks); out[t * ldo + i]. */
AI void q45_tile(int q5, const char *w, size_t rs, int nb, int RB, int TB, const block_q8_K *XQ, size_t xs,
                 float *out, size_t ldo, int pf, const kq_ctrl *c, int vnni) {
    __m512 acc[4][4];
    const int bb = q5 ? (int)sizeof(block_q5_K) : (int)sizeof(block_q4_K);
    const size_t ahead = (size_t)RB * rs > KQ_PF ? (size_t)RB * rs : KQ_PF;
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 4
        for (int t = 0; t < TB; t++) acc[i][t] = _mm512_setzero_ps();
    for (int k = 0; k < nb; k++) {
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {   /* one row's u vectors and scales, then its TB tokens */
            const uint8_t *b = (const uint8_t *)w + i * rs + (size_t)k * bb;
            if (pf) prefetch_block((const char *)b, ahead, bb);
            __m512i u[4], sc[4];
            q45_u(b, q5, u);
            __m128i head = _mm_loadu_si128((const __m128i *)b);       /* d, dmin, scales */
            __m512i s = _mm512_broadcast_i32x4(kq_scales16(head));
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) sc[v] = _mm512_shuffle_epi8(s, c->q4sc[v]);
            __m256i mn = _mm256_shuffle_epi8(_mm512_castsi512_si256(s), c->q4min);
            __m128 dd = _mm_cvtph_ps(head);                           /* lanes 0, 1: d, dmin */
#pragma GCC unroll 4
            for (int t = 0; t < TB; t++) {
                const block_q8_K *xb = XQ + (size_t)t * xs + k;
                __m512i is = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int v = 0; v < 4; v++)
                    is = dpw(vnni, is, _mm512_maddubs_epi16(u[v], _mm512_loadu_si512(xb->qs + 64 * v)), sc[v]);
                __m256i ms = _mm256_madd_epi16(mn, _mm256_loadu_si256((const __m256i *)xb->bsums));
                __m128 f = _mm_mul_ps(dd, _mm_set1_ps(xb->d));           /* d dx, dmin dx */
                acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_broadcastss_ps(f), acc[i][t]);
                acc[i][t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(ms)),
                                             _mm512_broadcastss_ps(_mm_movehdup_ps(f)), acc[i][t]);
            }
        }
    }
    if (RB == 4 && TB == 1) { _mm_storeu_ps(out, hsum4_ps(acc[0][0], acc[1][0], acc[2][0], acc[3][0])); return; }
#pragma GCC unroll 4
    for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) out[(size_t)t * ldo + i] = _mm512_reduce_add_ps(acc[i][t]);
}

/* 4 Q4_K rows x 1 token (decode): the per-row work that does not touch the 128 quant bytes
 * -- unpacking scales and mins, converting d and dmin, the mins' dot with x's sums -- done
 * for the four rows at once, one 128-bit lane per row (their 16-byte heads in one zmm). The
 * mins go to one accumulator, lanes 4i..4i+3 for row i; y_i = sum(acc_i) - sum(those lanes).
 * bs32[k * 8 + j]: the sum of x block k over sub-block j (int16). */
AI void q45_mv4(int q5, const char *w, size_t rs, int nb, const block_q8_K *xq, const int16_t *bs32, float *out,
                const kq_ctrl *c, int vnni) {
    __m512 acc[4], accm = _mm512_setzero_ps();
    const int blkb = q5 ? (int)sizeof(block_q5_K) : (int)sizeof(block_q4_K);
    const size_t ahead = 4 * rs > KQ_PF ? 4 * rs : KQ_PF;
    /* vpermw: d_i, dmin_i (words 8i, 8i + 1 of the heads) to words 2i, 2i + 1 */
    const __m512i idx_dd = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                            0, 0, 0, 0, 0, 0, 0, 0, 25, 24, 17, 16, 9, 8, 1, 0);
    const __m512i idx_m = _mm512_set_epi32(7, 7, 7, 7, 5, 5, 5, 5, 3, 3, 3, 3, 1, 1, 1, 1);   /* dmin_i dx */
    const __m512i sh = _mm512_set4_epi32(4, 0, 0, 0);
    const __m512i ma = _mm512_set4_epi32(0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f);
    const __m512i mb = _mm512_set4_epi32(0x30303030, 0, 0x30303030, 0);
    const __m512i mctl = _mm512_set4_epi32((int)0x800f800e, (int)0x800d800c, (int)0x800b800a, (int)0x80098008);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) acc[i] = _mm512_setzero_ps();
    for (int k = 0; k < nb; k++) {
        const char *b0 = w + (size_t)k * blkb;
        __m512i hd = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)b0));
        hd = _mm512_inserti32x4(hd, _mm_loadu_si128((const __m128i *)((const char *)b0 + rs)), 1);
        hd = _mm512_inserti32x4(hd, _mm_loadu_si128((const __m128i *)((const char *)b0 + 2 * rs)), 2);
        hd = _mm512_inserti32x4(hd, _mm_loadu_si128((const __m128i *)((const char *)b0 + 3 * rs)), 3);
        /* kq_scales16 on four lanes */
        __m512i a = _mm512_srlv_epi32(_mm512_shuffle_epi32(hd, _MM_PERM_DCDB), sh);
        __m512i bb = _mm512_srli_epi32(_mm512_shuffle_epi32(hd, _MM_PERM_CCBB), 2);
        __m512i s4 = _mm512_or_si512(_mm512_and_si512(a, ma), _mm512_and_si512(bb, mb));
        __m256 dd = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutexvar_epi16(idx_dd, hd)));   /* d0 dm0 d1 dm1 .. */
        __m512 ddx = _mm512_castps256_ps512(_mm256_mul_ps(dd, _mm256_set1_ps(xq[k].d)));
        __m512i ms = _mm512_madd_epi16(_mm512_shuffle_epi8(s4, mctl),
                                       _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(bs32 + 8 * k))));
        accm = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ms), _mm512_permutexvar_ps(idx_m, ddx), accm);
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const uint8_t *b = (const uint8_t *)w + i * rs + (size_t)k * blkb;
            prefetch_block((const char *)b, ahead, blkb);
            __m512i u[4];
            q45_u(b, q5, u);
            __m512i s = lane_bcast(s4, i);   /* row i's scales in every lane */
            __m512i is = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++)
                is = dpw(vnni, is, _mm512_maddubs_epi16(u[v], _mm512_loadu_si512(xq[k].qs + 64 * v)), _mm512_shuffle_epi8(s, c->q4sc[v]));
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_permutexvar_ps(_mm512_set1_epi32(2 * i), ddx), acc[i]);
        }
    }
    _mm_storeu_ps(out, _mm_sub_ps(hsum4_ps(acc[0], acc[1], acc[2], acc[3]), hsum_quads_ps(accm)));   /* row i: lanes 4i..4i+3 of accm */
}

typedef void (*mv4_fn)(const char *, size_t, int, const block_q8_K *, const int16_t *, float *, const kq_ctrl *);
#define MV4(name, q5, vnni)                                                                                   \
    static void name(const char *w, size_t rs, int nb, const block_q8_K *xq, const int16_t *bs32, float *out, \
                     const kq_ctrl *c) { q45_mv4(q5, w, rs, nb, xq, bs32, out, c, vnni); }
MV4(q4k_mv4_0, 0, 0)
MV4(q4k_mv4_1, 0, 1)
MV4(q5k_mv4_0, 1, 0)
MV4(q5k_mv4_1, 1, 1)
#undef MV4

AI void q4k_tile(const char *w, size_t rs, int nb, int RB, int TB, const block_q8_K *XQ, size_t xs, float *out,
                 size_t ldo, int pf, const kq_ctrl *c, int vnni) { q45_tile(0, w, rs, nb, RB, TB, XQ, xs, out, ldo, pf, c, vnni); }
AI void q5k_tile(const char *w, size_t rs, int nb, int RB, int TB, const block_q8_K *XQ, size_t xs, float *out,
                 size_t ldo, int pf, const kq_ctrl *c, int vnni) { q45_tile(1, w, rs, nb, RB, TB, XQ, xs, out, ldo, pf, c, vnni); }

/* ---------------------------------------------------------------- Q6_K */

AI void q6k_tile(const char *w, size_t rs, int nb, int RB, int TB, const block_q8_K *XQ, size_t xs,
                 float *out, size_t ldo, int pf, const kq_ctrl *c, int vnni) {
    __m512 acc[4][4];
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    /* the two high bits of the low-nibble half (qh bits 0-1 | 2-3) and of the high half
     * (4-5 | 6-7), masked first so that the shift leaves exactly bits 4-5 */
    const __m512i mlo = _mm512_inserti64x4(_mm512_set1_epi8(0x03), _mm256_set1_epi8(0x0C), 1);
    const __m512i mhi = _mm512_inserti64x4(_mm512_set1_epi8(0x30), _mm256_set1_epi8((char)0xC0), 1);
    const __m512i sl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i sr = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
    const size_t ahead = (size_t)RB * rs > KQ_PF ? (size_t)RB * rs : KQ_PF;
#pragma GCC unroll 4
    for (int i = 0; i < RB; i++)
#pragma GCC unroll 4
        for (int t = 0; t < TB; t++) acc[i][t] = _mm512_setzero_ps();
    for (int k = 0; k < nb; k++) {
#pragma GCC unroll 4
        for (int i = 0; i < RB; i++) {
            const block_q6_K *b = (const block_q6_K *)(w + i * rs) + k;
            if (pf) prefetch_block((const char *)b, ahead, (int)sizeof(block_q6_K));
            __m512i u[4], sc[4];
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                __m512i ql = _mm512_loadu_si512(b->ql + 64 * h);
                __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qh + 32 * h)));
                /* (A & C) | B = ternary 0xEC: nibble | high bits */
                u[2 * h] = _mm512_ternarylogic_epi32(ql, _mm512_sllv_epi16(_mm512_and_si512(qh, mlo), sl), m4, 0xEC);
                u[2 * h + 1] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(ql, 4), _mm512_srlv_epi16(_mm512_and_si512(qh, mhi), sr), m4, 0xEC);
            }
            __m256i s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
            __m512i s16z = _mm512_castsi256_si512(s16);
            __m512i slo = _mm512_shuffle_i32x4(s16z, s16z, 0x00), shi = _mm512_shuffle_i32x4(s16z, s16z, 0x55);   /* scales 0-7 | 8-15 in every lane */
            sc[0] = _mm512_shuffle_epi8(slo, c->q6sc[0]);
            sc[1] = _mm512_shuffle_epi8(slo, c->q6sc[1]);
            sc[2] = _mm512_shuffle_epi8(shi, c->q6sc[0]);
            sc[3] = _mm512_shuffle_epi8(shi, c->q6sc[1]);
            float d = _cvtsh_ss(b->d);
#pragma GCC unroll 4
            for (int t = 0; t < TB; t++) {
                const block_q8_K *xb = XQ + (size_t)t * xs + k;
                __m512i is = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int v = 0; v < 4; v++)
                    is = dpw(vnni, is, _mm512_maddubs_epi16(u[v], _mm512_loadu_si512(xb->qs + 64 * v)), sc[v]);
                __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(s16, _mm256_loadu_si256((const __m256i *)xb->bsums)), 5);   /* 32 sum_j sc_j bsum_j */
                is = _mm512_sub_epi32(is, _mm512_zextsi256_si512(corr));
                acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_set1_ps(d * xb->d), acc[i][t]);
            }
        }
    }
    if (RB == 4 && TB == 1) { _mm_storeu_ps(out, hsum4_ps(acc[0][0], acc[1][0], acc[2][0], acc[3][0])); return; }
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
TILE_CASES(q5k_tile, 0)
TILE_CASES(q5k_tile, 1)
TILE_CASES(q6k_tile, 0)
TILE_CASES(q6k_tile, 1)

typedef struct {
    tile_fn mv4, mv1, mm;
} tile_set;

static const tile_set q4k_tiles[2] = {{q4k_tile_mv4_0, q4k_tile_mv1_0, q4k_tile_mm_0}, {q4k_tile_mv4_1, q4k_tile_mv1_1, q4k_tile_mm_1}};
static const tile_set q5k_tiles[2] = {{q5k_tile_mv4_0, q5k_tile_mv1_0, q5k_tile_mm_0}, {q5k_tile_mv4_1, q5k_tile_mv1_1, q5k_tile_mm_1}};
static const tile_set q6k_tiles[2] = {{q6k_tile_mv4_0, q6k_tile_mv1_0, q6k_tile_mm_0}, {q6k_tile_mv4_1, q6k_tile_mv1_1, q6k_tile_mm_1}};

static const tile_set *tiles_for(mat_dtype dt) {
    int vnni = cpu_get_features()->avx512_vnni;
    return dt == MAT_Q4_K ? &q4k_tiles[vnni] : dt == MAT_Q5_K ? &q5k_tiles[vnni] : &q6k_tiles[vnni];
}

static void kq_matvec(const mat *W, const block_q8_K *xq, float *y, int row0, int row1) {
    const tile_set *ts = tiles_for(W->dtype);
    kq_ctrl c = kq_ctrl_make();
    int nb = W->cols / QK_K;
    size_t rs = mat_row_bytes(W->dtype, W->cols);
    const char *base = (const char *)W->data;
    int r = row0;
    if (KQ_START) prefetch_start(base + (size_t)row0 * rs, (size_t)(row1 - row0) * rs, 4 * rs > KQ_PF ? 4 * rs : KQ_PF);
#ifndef KQ_MV4
#define KQ_MV4 1
#endif
    if (KQ_MV4 && (W->dtype == MAT_Q4_K || W->dtype == MAT_Q5_K) && row1 - row0 >= MV_RB && nb <= KQ_MAX_COLS / QK_K) {
        int16_t bs32[8 * nb];
        for (int k = 0; k < nb; k++)
            for (int j = 0; j < 8; j++) bs32[8 * k + j] = (int16_t)(xq[k].bsums[2 * j] + xq[k].bsums[2 * j + 1]);
        int vnni = cpu_get_features()->avx512_vnni;
        mv4_fn mv4 = W->dtype == MAT_Q5_K ? (vnni ? q5k_mv4_1 : q5k_mv4_0) : (vnni ? q4k_mv4_1 : q4k_mv4_0);
        for (; r + MV_RB <= row1; r += MV_RB) mv4(base + (size_t)r * rs, rs, nb, xq, bs32, y + (r - row0), &c);
    }
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

/* The integer entry points take x in ggml's order; Q4_K's tiles want q4k_x_order, so x is
 * copied (Q4_K matmul: KQ_MATMUL_X_BYTES of tokens at a time) and reordered first. */
void matvec_rows_q8K_q4k_avx512(const mat *W, const block_q8_K *xq, float *y, int row0, int row1) {
    size_t nb = (size_t)W->cols / QK_K;
    if (W->cols > KQ_MAX_COLS) { matvec_rows_q8K_ref(W, xq, y, row0, row1); return; }
    block_q8_K xp[nb];
    memcpy(xp, xq, sizeof xp);
    q4k_x_order(xp, nb);
    kq_matvec(W, xp, y, row0, row1);
}
void matvec_rows_q8K_q6k_avx512(const mat *W, const block_q8_K *xq, float *y, int row0, int row1) { kq_matvec(W, xq, y, row0, row1); }
void matmul_rows_q8K_q4k_avx512(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1) {
    size_t nb = (size_t)W->cols / QK_K;
    int chunk = (int)(KQ_MATMUL_X_BYTES / (nb * sizeof(block_q8_K)));
    if (W->cols > KQ_MAX_COLS || chunk < 1) { matmul_rows_q8K_ref(W, XQ, n, Y, ldy, row0, row1); return; }
    if (chunk > n) chunk = n;
    block_q8_K xp[(size_t)chunk * nb];
    for (int t0 = 0; t0 < n; t0 += chunk) {
        int nt = n - t0 < chunk ? n - t0 : chunk;
        memcpy(xp, XQ + (size_t)t0 * nb, sizeof(block_q8_K) * nb * (size_t)nt);
        q4k_x_order(xp, nb * (size_t)nt);
        kq_matmul(W, xp, nt, Y + (size_t)t0 * ldy, ldy, row0, row1);
    }
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
    if (W->dtype != MAT_Q6_K) q4k_x_order(xq, (size_t)W->cols / QK_K);
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
        if (W->dtype != MAT_Q6_K) q4k_x_order(xq, (size_t)nb * nt);
        kq_matmul(W, xq, nt, Y + (size_t)t0 * ldy, ldy, row0, row1);
        for (int t = 0; t < nt; t++)
            if (bad[t]) matmul_rows_ref(W, X + (size_t)(t0 + t) * W->cols, 1, Y + (size_t)(t0 + t) * ldy, ldy, row0, row1);
    }
}

void matvec_rows_q4k_avx512(const mat *W, const float *x, float *y, int row0, int row1) { kq_matvec_f32(W, x, y, row0, row1); }
void matvec_rows_q5k_avx512(const mat *W, const float *x, float *y, int row0, int row1) { kq_matvec_f32(W, x, y, row0, row1); }
void matmul_rows_q5k_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    kq_matmul_f32(W, X, n, Y, ldy, row0, row1);
}
void matvec_rows_q8K_q5k_avx512(const mat *W, const block_q8_K *xq, float *y, int row0, int row1) {
    matvec_rows_q8K_q4k_avx512(W, xq, y, row0, row1);   /* same x order */
}
void matmul_rows_q8K_q5k_avx512(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1) {
    matmul_rows_q8K_q4k_avx512(W, XQ, n, Y, ldy, row0, row1);
}
void matvec_rows_q6k_avx512(const mat *W, const float *x, float *y, int row0, int row1) { kq_matvec_f32(W, x, y, row0, row1); }
void matmul_rows_q4k_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    kq_matmul_f32(W, X, n, Y, ldy, row0, row1);
}
void matmul_rows_q6k_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    kq_matmul_f32(W, X, n, Y, ldy, row0, row1);
}
