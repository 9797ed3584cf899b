/* types.c - the one table of weight types (kernels.h: mat_type).
 *
 * A weight format is one row here: its name, how many elements a block holds and how
 * many bytes it takes, how a row converts to and from f32, and its matrix kernels per
 * kernel set (kernels/cpu.c uses the best set's, falling back to simpler sets). The loader
 * (engine/io/weights.c) converts rows through from_f32 when a checkpoint's tensor is not
 * in the compute format asked for.
 *
 * Legend
 *   d, dmin     f16 super-block scales (k-quants); sc_j, m_j the 6-bit scale and min of
 *               sub-block j (Q4_K / Q5_K: 8 sub-blocks of 32); Q6_K: 16 int8 scales of 16.
 *   ggml        the GGUF block types are llama.cpp's (ggml-common.h) bit for bit, and the
 *               *_to_f32 functions give the floats of ggml's dequantize_row_* (every product
 *               there is exact in f32, so the order of operations cannot differ: see README).
 *   quantizers  f16: round to nearest even. Q8_0, Q4_0: as ggml's quantize_row_*_ref.
 *               Q4_K: a weighted least-squares fit of (scale, min) per 32 (the algorithm of
 *               ggml's make_qkx2_quants), then 6-bit scales and mins, then re-rounded q.
 */
#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_impl.h"

static_assert(sizeof(block_q8_0) == 34, "block_q8_0 is 34 bytes");
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 is 18 bytes");
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 is 22 bytes");
static_assert(sizeof(block_q4_K) == 144, "block_q4_K is 144 bytes");
static_assert(sizeof(block_q5_K) == 176, "block_q5_K is 176 bytes");
static_assert(sizeof(block_q6_K) == 210, "block_q6_K is 210 bytes");
static_assert(sizeof(block_q8_K) == 292, "block_q8_K is 292 bytes");

/* ---------------------------------------------------------------- f32, bf16, q8 (moe's own) */

static void f32_to_f32_row(const void *src, float *dst, int n) { memcpy(dst, src, sizeof(float) * (size_t)n); }
static void f32_from_f32_row(const float *src, void *dst, int n) { memcpy(dst, src, sizeof(float) * (size_t)n); }

static void bf16_to_f32_row(const void *src, float *dst, int n) {
    const uint16_t *s = src;
    for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
}
static void bf16_from_f32_row(const float *src, void *dst, int n) { quantize_row_bf16(src, dst, n); }

static void q8_to_f32_row(const void *src, float *dst, int n) {
    const block_q8 *b = src;
    for (int k = 0; k < n / QK8; k++)
        for (int i = 0; i < QK8; i++) dst[k * QK8 + i] = b[k].scale * (float)b[k].q[i];
}
static void q8_from_f32_row(const float *src, void *dst, int n) { quantize_row_q8(src, dst, n); }

/* ---------------------------------------------------------------- f16 */

static void f16_to_f32_row(const void *src, float *dst, int n) {
    const uint16_t *s = src;
    for (int i = 0; i < n; i++) dst[i] = f16_to_f32(s[i]);
}
static void f16_from_f32_row(const float *src, void *dst, int n) {
    uint16_t *d = dst;
    for (int i = 0; i < n; i++) d[i] = f16_from_f32(src[i]);
}

/* ---------------------------------------------------------------- q8_0, q4_0 */

static void q8_0_to_f32_row(const void *src, float *dst, int n) {
    const block_q8_0 *b = src;
    for (int k = 0; k < n / QK8_0; k++) {
        float d = f16_to_f32(b[k].d);
        for (int i = 0; i < QK8_0; i++) dst[k * QK8_0 + i] = (float)b[k].qs[i] * d;
    }
}

/* ggml's quantize_row_q8_0_ref: d = amax / 127 (stored as f16), q = roundf(x / d). */
static void q8_0_from_f32_row(const float *src, void *dst, int n) {
    block_q8_0 *b = dst;
    for (int k = 0; k < n / QK8_0; k++) {
        const float *x = src + k * QK8_0;
        float amax = 0.0f;
        for (int i = 0; i < QK8_0; i++) amax = fmaxf(amax, fabsf(x[i]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[k].d = f16_from_f32(d);
        for (int i = 0; i < QK8_0; i++) b[k].qs[i] = (int8_t)roundf(x[i] * id);
    }
}

static void q4_0_to_f32_row(const void *src, float *dst, int n) {
    const block_q4_0 *b = src;
    for (int k = 0; k < n / QK4_0; k++) {
        float d = f16_to_f32(b[k].d);
        for (int i = 0; i < QK4_0 / 2; i++) {
            dst[k * QK4_0 + i] = (float)((b[k].qs[i] & 0x0F) - 8) * d;
            dst[k * QK4_0 + i + 16] = (float)((b[k].qs[i] >> 4) - 8) * d;
        }
    }
}

/* ggml's dequantize_row_q5_0: element i's fifth bit is bit i of qh (i < 16: low nibble of
 * qs[i]; i >= 16: high nibble of qs[i - 16]), value d * (q - 16). Read only (no quantizer). */
static void q5_0_to_f32_row(const void *src, float *dst, int n) {
    const block_q5_0 *b = src;
    for (int k = 0; k < n / QK4_0; k++) {
        float d = f16_to_f32(b[k].d);
        uint32_t qh = (uint32_t)b[k].qh[0] | (uint32_t)b[k].qh[1] << 8 | (uint32_t)b[k].qh[2] << 16 | (uint32_t)b[k].qh[3] << 24;
        for (int i = 0; i < QK4_0 / 2; i++) {
            int lo = (b[k].qs[i] & 0x0F) | (int)((qh >> i) & 1) << 4;
            int hi = (b[k].qs[i] >> 4) | (int)((qh >> (i + 16)) & 1) << 4;
            dst[k * QK4_0 + i] = (float)(lo - 16) * d;
            dst[k * QK4_0 + i + 16] = (float)(hi - 16) * d;
        }
    }
}

/* ggml's quantize_row_q4_0_ref: d = (the value of largest magnitude) / -8, so that value maps
 * to q = 0 exactly and the rest to min(15, trunc(x / d + 8.5)). */
static void q4_0_from_f32_row(const float *src, void *dst, int n) {
    block_q4_0 *b = dst;
    for (int k = 0; k < n / QK4_0; k++) {
        const float *x = src + k * QK4_0;
        float amax = 0.0f, max = 0.0f;
        for (int i = 0; i < QK4_0; i++)
            if (amax < fabsf(x[i])) { amax = fabsf(x[i]); max = x[i]; }
        float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b[k].d = f16_from_f32(d);
        for (int i = 0; i < QK4_0 / 2; i++) {
            int q0 = (int)(int8_t)(x[i] * id + 8.5f), q1 = (int)(int8_t)(x[i + 16] * id + 8.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            b[k].qs[i] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* ---------------------------------------------------------------- k-quants */

/* Scale and min of sub-block j (0..7) from the 12 packed bytes (ggml's get_scale_min_k4):
 * j < 4: the low 6 bits of bytes j (scale) and j + 4 (min); j >= 4: the low / high nibble of
 * byte j + 4, with the top two bits of bytes j - 4 (scale) and j (min) on top. */
void kq_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void q4k_to_f32_row(const void *src, float *dst, int n) {
    const block_q4_K *b = src;
    for (int k = 0; k < n / QK_K; k++) {
        const uint8_t *q = b[k].qs;
        float d = f16_to_f32(b[k].d), dmin = f16_to_f32(b[k].dmin);
        float *y = dst + k * QK_K;
        for (int g = 0; g < 4; g++) {        /* 64 elements: sub-blocks 2g (low nibbles), 2g + 1 (high) */
            uint8_t sc, m;
            kq_scale_min(2 * g, b[k].scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            kq_scale_min(2 * g + 1, b[k].scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) y[l] = d1 * (float)(q[l] & 0x0F) - m1;
            for (int l = 0; l < 32; l++) y[32 + l] = d2 * (float)(q[l] >> 4) - m2;
            y += 64;
            q += 32;
        }
    }
}

static void q5k_to_f32_row(const void *src, float *dst, int n) {
    const block_q5_K *b = src;
    for (int k = 0; k < n / QK_K; k++) {
        const uint8_t *ql = b[k].qs, *qh = b[k].qh;
        float d = f16_to_f32(b[k].d), dmin = f16_to_f32(b[k].dmin);
        float *y = dst + k * QK_K;
        for (int g = 0; g < 4; g++) {
            uint8_t sc, m, u1 = (uint8_t)(1u << (2 * g)), u2 = (uint8_t)(2u << (2 * g));
            kq_scale_min(2 * g, b[k].scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            kq_scale_min(2 * g + 1, b[k].scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) y[l] = d1 * (float)((ql[l] & 0x0F) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) y[32 + l] = d2 * (float)((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            y += 64;
            ql += 32;
        }
    }
}

/* Q6_K: per 128 elements (ql 64 bytes, qh 32 bytes, 8 scales), element 32 i + l (i < 4, l < 32)
 * takes the low nibble (i = 0, 1) or high nibble (i = 2, 3) of ql[l + 32 (i & 1)] and bits
 * 2 i, 2 i + 1 of qh[l] as its top two bits; q - 32 in [-32, 31], scale index l / 16 + 2 i. */
static void q6k_to_f32_row(const void *src, float *dst, int n) {
    const block_q6_K *b = src;
    for (int k = 0; k < n / QK_K; k++) {
        float d = f16_to_f32(b[k].d);
        const uint8_t *ql = b[k].ql, *qh = b[k].qh;
        const int8_t *sc = b[k].scales;
        float *y = dst + k * QK_K;
        for (int h = 0; h < 2; h++) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

/* Round to nearest even for |f| < 2^22 without a libm call (x86-64's baseline has no roundss):
 * adding 1.5 * 2^23 leaves the rounded integer in the low mantissa bits. Callers clamp first. */
static inline int nearest_int(float f) {
    float v = f + 12582912.0f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}
static inline float clampf(float f, float lo, float hi) { return !(f >= lo) ? lo : f > hi ? hi : f; }   /* NaN -> lo */

/* Fit x[i] ~ scale * L[i] - min (L in [0, nmax], min >= 0) minimizing sum w_i err_i^2: start
 * from the range, then try nstep + 1 other grid scales (nmax + rmin + rdelta s) / range,
 * each followed by the closed-form least-squares (scale, min) for its L; keep the best. */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min,
                           float rmin, float rdelta, int nstep) {
    float lo = x[0], hi = x[0], sw = w[0], sx = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
        sw += w[i];
        sx += w[i] * x[i];
    }
    if (lo > 0) lo = 0;
    if (hi == lo) {
        memset(L, 0, (size_t)n);
        *the_min = -lo;
        return 0.0f;
    }
    float iscale = nmax / (hi - lo), scale = 1.0f / iscale, best = 0.0f;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)nearest_int(clampf(iscale * (x[i] - lo), 0.0f, (float)nmax));
        float e = scale * L[i] + lo - x[i];
        best += w[i] * e * e;
    }
    uint8_t La[QK_K];
    for (int s = 0; s <= nstep; s++) {
        float is = (rmin + rdelta * s + nmax) / (hi - lo), sl = 0, sl2 = 0, sxl = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(clampf(is * (x[i] - lo), 0.0f, (float)nmax));
            La[i] = (uint8_t)l;
            sl += w[i] * l;
            sl2 += w[i] * l * l;
            sxl += w[i] * l * x[i];
        }
        float D = sw * sl2 - sl * sl;
        if (D <= 0) continue;
        float sc = (sw * sxl - sx * sl) / D, mn = (sl2 * sx - sl * sxl) / D;
        if (mn > 0) { mn = 0; sc = sxl / sl2; }
        float err = 0;
        for (int i = 0; i < n; i++) {
            float e = sc * La[i] + mn - x[i];
            err += w[i] * e * e;
        }
        if (err < best) {
            memcpy(L, La, (size_t)n);
            best = err;
            scale = sc;
            lo = mn;
        }
    }
    *the_min = -lo;
    return scale;
}

static void q4k_from_f32_row(const float *src, void *dst, int n) {
    block_q4_K *b = dst;
    for (int k = 0; k < n / QK_K; k++) {
        const float *x = src + k * QK_K;
        uint8_t L[QK_K];
        float scales[8], mins[8], w[32], max_scale = 0, max_min = 0;
        for (int j = 0; j < 8; j++) {
            float s2 = 0;
            for (int l = 0; l < 32; l++) s2 += x[32 * j + l] * x[32 * j + l];
            float av = sqrtf(s2 / 32);
            for (int l = 0; l < 32; l++) w[l] = av + fabsf(x[32 * j + l]);
            scales[j] = fit_scale_min(32, 15, x + 32 * j, w, L + 32 * j, &mins[j], -1.0f, 0.1f, 20);
            max_scale = fmaxf(max_scale, scales[j]);
            max_min = fmaxf(max_min, mins[j]);
        }
        float inv_s = max_scale > 0 ? 63.0f / max_scale : 0.0f, inv_m = max_min > 0 ? 63.0f / max_min : 0.0f;
        memset(b[k].scales, 0, K_SCALE_SIZE);
        for (int j = 0; j < 8; j++) {
            uint8_t s = (uint8_t)nearest_int(clampf(inv_s * scales[j], 0.0f, 63.0f));
            uint8_t m = (uint8_t)nearest_int(clampf(inv_m * mins[j], 0.0f, 63.0f));
            if (j < 4) {
                b[k].scales[j] |= s;
                b[k].scales[j + 4] |= m;
            } else {
                b[k].scales[j + 4] = (uint8_t)((s & 0x0F) | ((m & 0x0F) << 4));
                b[k].scales[j - 4] |= (uint8_t)((s >> 4) << 6);
                b[k].scales[j] |= (uint8_t)((m >> 4) << 6);
            }
        }
        b[k].d = f16_from_f32(max_scale / 63.0f);
        b[k].dmin = f16_from_f32(max_min / 63.0f);
        float d = f16_to_f32(b[k].d), dmin = f16_to_f32(b[k].dmin);
        for (int j = 0; j < 8; j++) {        /* q again for the scales as stored */
            uint8_t s, m;
            kq_scale_min(j, b[k].scales, &s, &m);
            float dj = d * s, mj = dmin * m;
            if (dj == 0.0f) continue;
            for (int l = 0; l < 32; l++) L[32 * j + l] = (uint8_t)nearest_int(clampf((x[32 * j + l] + mj) / dj, 0.0f, 15.0f));
        }
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 32; l++) b[k].qs[32 * g + l] = (uint8_t)(L[64 * g + l] | (L[64 * g + 32 + l] << 4));
    }
}

/* ---------------------------------------------------------------- the table */

#define PLAIN_KERNELS(avx2_set, avx512_set)                                                    \
    {[KSET_SCALAR] = {matvec_rows_ref, matmul_rows_ref, matvec_t_rows_ref, NULL, NULL},        \
     [KSET_AVX2] = avx2_set, [KSET_AVX512] = avx512_set}
#define BASE_AVX2 {matvec_rows_avx2, matmul_rows_avx2, matvec_t_rows_avx2, NULL, NULL}
#define BASE_AVX512 {matvec_rows_avx512, matmul_rows_avx512, matvec_t_rows_avx512, NULL, NULL}
#define NONE {NULL, NULL, NULL, NULL, NULL}
#define Q8P_AVX512 {matvec_rows_q8p_avx512, matmul_rows_q8p_avx512, NULL, NULL, NULL}
/* Q4_0, Q5_0 on AVX-512: x quantized per 32 to int8 (matvec_q4_0_avx512.c). */
#define Q8A_AVX512(t, tmv) {matvec_rows_##t##_avx512, matmul_rows_##t##_avx512, tmv, NULL, NULL}
/* k-quants: the SIMD sets quantize x to block_q8_K and run their integer kernels. */
#define KQ_KERNELS(t)                                                                          \
    {[KSET_SCALAR] = {matvec_rows_ref, matmul_rows_ref, matvec_t_rows_ref, matvec_rows_q8K_ref, matmul_rows_q8K_ref}, \
     [KSET_AVX2] = {matvec_rows_##t##_avx2, matmul_rows_##t##_avx2, NULL, matvec_rows_q8K_##t##_avx2, matmul_rows_q8K_##t##_avx2}, \
     [KSET_AVX512] = {matvec_rows_##t##_avx512, matmul_rows_##t##_avx512, NULL, matvec_rows_q8K_##t##_avx512, matmul_rows_q8K_##t##_avx512}}
/* Q5_K: the AVX-512 integer kernels only (AVX2 keeps the f32 reference). */
#define KQ_AVX512_ONLY(t)                                                                      \
    {[KSET_SCALAR] = {matvec_rows_ref, matmul_rows_ref, matvec_t_rows_ref, matvec_rows_q8K_ref, matmul_rows_q8K_ref}, \
     [KSET_AVX2] = NONE,                                                                       \
     [KSET_AVX512] = {matvec_rows_##t##_avx512, matmul_rows_##t##_avx512, NULL, matvec_rows_q8K_##t##_avx512, matmul_rows_q8K_##t##_avx512}}

static const mat_type types[MAT_N_TYPES] = {
    [MAT_F32] = {"f32", 1, 4, f32_to_f32_row, f32_from_f32_row, PLAIN_KERNELS(BASE_AVX2, BASE_AVX512)},
    [MAT_BF16] = {"bf16", 1, 2, bf16_to_f32_row, bf16_from_f32_row, PLAIN_KERNELS(BASE_AVX2, BASE_AVX512)},
    [MAT_Q8] = {"q8", QK8, sizeof(block_q8), q8_to_f32_row, q8_from_f32_row, PLAIN_KERNELS(BASE_AVX2, BASE_AVX512)},
    [MAT_F16] = {"f16", 1, 2, f16_to_f32_row, f16_from_f32_row, PLAIN_KERNELS(BASE_AVX2, BASE_AVX512)},
    [MAT_Q8_0] = {"q8_0", QK8_0, sizeof(block_q8_0), q8_0_to_f32_row, q8_0_from_f32_row, PLAIN_KERNELS(BASE_AVX2, BASE_AVX512)},
    [MAT_Q4_0] = {"q4_0", QK4_0, sizeof(block_q4_0), q4_0_to_f32_row, q4_0_from_f32_row,
                  PLAIN_KERNELS(BASE_AVX2, Q8A_AVX512(q4_0, matvec_t_rows_avx512))},
    [MAT_Q4_K] = {"q4_K", QK_K, sizeof(block_q4_K), q4k_to_f32_row, q4k_from_f32_row, KQ_KERNELS(q4k)},
    [MAT_Q5_K] = {"q5_K", QK_K, sizeof(block_q5_K), q5k_to_f32_row, NULL, KQ_AVX512_ONLY(q5k)},
    [MAT_Q6_K] = {"q6_K", QK_K, sizeof(block_q6_K), q6k_to_f32_row, NULL, KQ_KERNELS(q6k)},
    [MAT_Q5_0] = {"q5_0", QK4_0, sizeof(block_q5_0), q5_0_to_f32_row, NULL, PLAIN_KERNELS(NONE, Q8A_AVX512(q5_0, NULL))},
    /* rows in panels (no row of its own to convert: made from MAT_Q8 by q8p_pack, read by mat_get) */
    [MAT_Q8P] = {"q8p", QK8, sizeof(block_q8), NULL, NULL,
                 PLAIN_KERNELS(NONE, Q8P_AVX512)},
};

const mat_type *mat_type_of(mat_dtype dt) {
    return (unsigned)dt < MAT_N_TYPES && types[dt].name ? &types[dt] : NULL;
}

int mat_is_kquant(mat_dtype dt) { return dt == MAT_Q4_K || dt == MAT_Q5_K || dt == MAT_Q6_K; }

size_t mat_row_bytes(mat_dtype dt, int cols) {
    const mat_type *t = mat_type_of(dt);
    return t ? (size_t)cols / (size_t)t->block_elems * (size_t)t->block_bytes : 0;
}

size_t mat_bytes(const mat *W) { return (size_t)W->rows * mat_row_bytes(W->dtype, W->cols); }

size_t mat_storage_bytes(const mat *W) {
    if (W->dtype == MAT_Q8P) return q8p_bytes(W->rows, W->cols);   /* whole panels */
    return mat_bytes(W);
}

float mat_get(const mat *W, int r, int c) {
    if (W->dtype == MAT_Q8P) {
        const block_q8p *b = (const block_q8p *)W->data + (size_t)(r / Q8P_ROWS) * (W->cols / QK8) + c / QK8;
        return b->d[r % Q8P_ROWS] * (float)b->q[c % QK8 / 2][r % Q8P_ROWS][c % 2];
    }
    const mat_type *t = mat_type_of(W->dtype);
    int be = t->block_elems;
    float block[QK_K];   /* the largest block of any type */
    const unsigned char *row = (const unsigned char *)W->data + (size_t)r * mat_row_bytes(W->dtype, W->cols);
    t->to_f32(row + (size_t)(c / be) * t->block_bytes, block, be);
    return block[c % be];
}

/* ---------------------------------------------------------------- Q8 panels */

size_t q8p_bytes(int rows, int cols) {
    return (size_t)((rows + Q8P_ROWS - 1) / Q8P_ROWS * Q8P_ROWS) * (size_t)(cols / QK8) * sizeof(block_q8);
}

int q8p_pack_into(const mat *W, void *dst) {
    if (W->dtype != MAT_Q8 || W->cols % QK8 || W->rows < 1 || !W->data) return -1;
    if (dst == W->data && W->rows % Q8P_ROWS) return -1;   /* in place needs whole panels */
    int nb = W->cols / QK8, np = (W->rows + Q8P_ROWS - 1) / Q8P_ROWS;
    size_t panel = (size_t)nb * sizeof(block_q8p);   /* = Q8P_ROWS rows of block_q8 */
    block_q8 *tmp = malloc(panel);
    if (!tmp) return -1;
    const block_q8 *src = (const block_q8 *)W->data;
    block_q8p *out = dst;   /* panel p is written only over rows 16 p .. 16 p + 15's own bytes */
    for (int p = 0; p < np; p++) {
        int nr = W->rows - p * Q8P_ROWS < Q8P_ROWS ? W->rows - p * Q8P_ROWS : Q8P_ROWS;
        memset(tmp, 0, panel);   /* rows past the last: zero weights and scales */
        memcpy(tmp, src + (size_t)p * Q8P_ROWS * nb, (size_t)nr * nb * sizeof(block_q8));
        for (int k = 0; k < nb; k++) {
            block_q8p *o = out + (size_t)p * nb + k;
            for (int r = 0; r < Q8P_ROWS; r++) {
                const block_q8 *b = tmp + (size_t)r * nb + k;
                o->d[r] = b->scale;
                for (int j = 0; j < QK8 / 2; j++) {
                    o->q[j][r][0] = b->q[2 * j];
                    o->q[j][r][1] = b->q[2 * j + 1];
                }
            }
        }
    }
    free(tmp);
    return 0;
}

int q8p_pack(mat *W) {
    if (W->rows % Q8P_ROWS || q8p_pack_into(W, (void *)W->data)) return -1;
    W->dtype = MAT_Q8P;
    return 0;
}
