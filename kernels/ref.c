/* ref.c - plain scalar reference kernels: the definition every optimized
 * kernel is tested against. Clear before fast. See kernels.h. */
#include <math.h>
#include <string.h>

#include <float.h>

#include "kernels_impl.h"

/* ---------------------------------------------------------------- conversions */

uint16_t f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = { f };
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40); /* NaN stays NaN */
    uint32_t rounding = ((v.u >> 16) & 1u) + 0x7fffu;
    return (uint16_t)((v.u + rounding) >> 16);
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (exp == 0) {                       /* zero or subnormal: man * 2^-24 */
        float f = ldexpf((float)man, -24);
        return sign ? -f : f;
    } else if (exp == 31) {               /* inf or NaN */
        v.u = sign | 0x7f800000u | (man << 13);
    } else {
        v.u = sign | ((exp + 112) << 23) | (man << 13);
    }
    return v.f;
}

uint16_t f16_from_f32(float f) {
    union { float f; uint32_t u; } v = { f };
    uint16_t sign = (uint16_t)((v.u >> 16) & 0x8000u);
    uint32_t a = v.u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));   /* NaN stays NaN (quiet) */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);   /* >= 65520 (half way past 65504): inf */
    if (a < 0x38800000u)                                        /* below 2^-14: a subnormal half, m * 2^-24 */
        return (uint16_t)(sign | (uint16_t)lrintf(fabsf(f) * 16777216.0f));   /* exact product; 1024 = 2^-14 */
    uint32_t h = (a >> 13) - (112u << 10), rest = a & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) h++;    /* to nearest even; a carry bumps the exponent */
    return (uint16_t)(sign | h);
}

float fp8_e4m3_to_f32(uint8_t b) {
    int sign = b >> 7, exp = (b >> 3) & 0xf, man = b & 7;
    float f;
    if (exp == 15 && man == 7) return NAN;                  /* e4m3fn has no inf */
    if (exp == 0) f = ldexpf((float)man, -9);               /* subnormal: m/8 * 2^-6 */
    else f = ldexpf(1.0f + (float)man / 8.0f, exp - 7);
    return sign ? -f : f;
}

void quantize_row_q8_ref(const float *x, block_q8 *out, int n) {
    for (int b = 0; b < n / QK8; b++) {
        const float *xb = x + b * QK8;
        float amax = 0.0f;
        for (int i = 0; i < QK8; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float scale = amax / 127.0f, inv = scale > 0 ? 1.0f / scale : 0.0f;
        out[b].scale = scale;
        for (int i = 0; i < QK8; i++) out[b].q[i] = (int8_t)lrintf(xb[i] * inv);
    }
}

int quantize_row_q8_K_ref(const float *x, block_q8_K *out, int n) {
    for (int b = 0; b < n / QK_K; b++) {
        const float *xb = x + (size_t)b * QK_K;
        float amax = 0.0f;
        for (int i = 0; i < QK_K; i++) {
            float a = fabsf(xb[i]);
            if (!(a <= FLT_MAX)) return 0;   /* Inf or NaN */
            amax = fmaxf(amax, a);
        }
        if (amax > 0.0f && amax < 1e-30f) return 0;
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        out[b].d = amax / 127.0f;
        for (int i = 0; i < QK_K; i++) out[b].qs[i] = (int8_t)lrintf(xb[i] * id);
        for (int g = 0; g < QK_K / 16; g++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += out[b].qs[16 * g + i];
            out[b].bsums[g] = (int16_t)s;
        }
    }
    return 1;
}

void quantize_row_bf16_ref(const float *x, uint16_t *out, int n) {
    for (int i = 0; i < n; i++) out[i] = f32_to_bf16(x[i]);
}

/* ---------------------------------------------------------------- matrices */

/* One row dot product in the row's own format, accumulated in f32 in column order. */
static float row_dot_ref(const mat *W, int r, const float *x) {
    float acc = 0.0f;
    size_t base = (size_t)r * W->cols;
    switch (W->dtype) {
    case MAT_F32: {
        const float *w = (const float *)W->data + base;
        for (int c = 0; c < W->cols; c++) acc += w[c] * x[c];
        break;
    }
    case MAT_BF16: {
        const uint16_t *w = (const uint16_t *)W->data + base;
        for (int c = 0; c < W->cols; c++) acc += bf16_to_f32(w[c]) * x[c];
        break;
    }
    case MAT_Q8: {
        const block_q8 *b = (const block_q8 *)W->data + base / QK8;
        for (int k = 0; k < W->cols / QK8; k++) {
            float s = 0.0f;
            for (int i = 0; i < QK8; i++) s += (float)b[k].q[i] * x[k * QK8 + i];
            acc += b[k].scale * s;
        }
        break;
    }
    case MAT_Q8P: {   /* the same sums as MAT_Q8 (bit for bit), read from row r's lanes of its panel */
        int nb = W->cols / QK8, j = r % Q8P_ROWS;
        const block_q8p *b = (const block_q8p *)W->data + (size_t)(r / Q8P_ROWS) * nb;
        for (int k = 0; k < nb; k++) {
            float s = 0.0f;
            for (int i = 0; i < QK8; i++) s += (float)b[k].q[i / 2][j][i % 2] * x[k * QK8 + i];
            acc += b[k].d[j] * s;
        }
        break;
    }
    default: {   /* block formats: each block through the type's to_f32, then in column order */
        const mat_type *t = mat_type_of(W->dtype);
        const unsigned char *row = (const unsigned char *)W->data + (size_t)r * mat_row_bytes(W->dtype, W->cols);
        float w[QK_K];
        for (int k = 0; k < W->cols / t->block_elems; k++) {
            t->to_f32(row + (size_t)k * t->block_bytes, w, t->block_elems);
            for (int i = 0; i < t->block_elems; i++) acc += w[i] * x[k * t->block_elems + i];
        }
        break;
    }
    }
    return acc;
}

void matvec_rows_ref(const mat *W, const float *x, float *y, int row0, int row1) {
    for (int r = row0; r < row1; r++) y[r - row0] = row_dot_ref(W, r, x);
}

void matmul_rows_ref(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    for (int t = 0; t < n; t++)
        for (int r = row0; r < row1; r++) Y[(size_t)t * ldy + r] = row_dot_ref(W, r, X + (size_t)t * W->cols);
}

/* Column by column, rows in order; the first row's product starts the sum (keeps -0).
 * Block formats go row by row (each block dequantized once), the same operations per column. */
void matvec_t_rows_ref(const mat *W, const float *x, float *y, int row0, int row1) {
    if (W->dtype != MAT_F32 && W->dtype != MAT_BF16 && W->dtype != MAT_Q8 && W->dtype != MAT_Q8P) {
        const mat_type *t = mat_type_of(W->dtype);
        int be = t->block_elems;
        size_t rb = mat_row_bytes(W->dtype, W->cols);
        float w[QK_K];
        if (row0 >= row1) memset(y, 0, sizeof(float) * (size_t)W->cols);
        for (int r = row0; r < row1; r++) {
            const unsigned char *row = (const unsigned char *)W->data + (size_t)r * rb;
            float xr = x[r - row0];
            for (int k = 0; k < W->cols / be; k++) {
                t->to_f32(row + (size_t)k * t->block_bytes, w, be);
                float *yk = y + (size_t)k * be;
                if (r == row0) for (int i = 0; i < be; i++) yk[i] = xr * w[i];
                else for (int i = 0; i < be; i++) yk[i] += xr * w[i];
            }
        }
        return;
    }
    for (int c = 0; c < W->cols; c++) {
        float acc = row0 < row1 ? x[0] * mat_get(W, row0, c) : 0.0f;
        for (int r = row0 + 1; r < row1; r++) acc += x[r - row0] * mat_get(W, r, c);
        y[c] = acc;
    }
}

/* Q8 weights x Q8 activations: exact integer dot per block, scaled and summed in f32. */
void matvec_rows_q8q8_ref(const mat *W, const block_q8 *xq, float *y, int row0, int row1) {
    int nb = W->cols / QK8;
    for (int r = row0; r < row1; r++) {
        const block_q8 *b = (const block_q8 *)W->data + (size_t)r * nb;
        float acc = 0.0f;
        for (int k = 0; k < nb; k++) {
            int32_t s = 0;
            for (int i = 0; i < QK8; i++) s += (int32_t)b[k].q[i] * xq[k].q[i];
            acc += (b[k].scale * xq[k].scale) * (float)s;
        }
        y[r - row0] = acc;
    }
}

/* n tokens (XQ: n rows of cols / 32 blocks): each token's row dots as matvec_rows_q8q8_ref. */
void matmul_rows_q8q8_ref(const mat *W, const block_q8 *XQ, int n, float *Y, int ldy, int row0, int row1) {
    int nb = W->cols / QK8;
    for (int t = 0; t < n; t++) matvec_rows_q8q8_ref(W, XQ + (size_t)t * nb, Y + (size_t)t * ldy + row0, row0, row1);
}

/* k-quant weights x block_q8_K activations (kernels.h): the integer sums of each super-block
 * exactly, then acc += (d dx) isum and accm += (dmin dx) msum in block order; y = acc - accm. */
static float kq_row_dot_ref(const mat *W, int r, const block_q8_K *xq) {
    int nb = W->cols / QK_K;
    const unsigned char *row = (const unsigned char *)W->data + (size_t)r * mat_row_bytes(W->dtype, W->cols);
    float acc = 0.0f, accm = 0.0f;
    for (int b = 0; b < nb; b++) {
        const int8_t *q8 = xq[b].qs;
        int32_t isum = 0, msum = 0;
        if (W->dtype == MAT_Q6_K) {
            const block_q6_K *w = (const block_q6_K *)row + b;
            for (int h = 0; h < 2; h++) {
                const uint8_t *ql = w->ql + 64 * h, *qh = w->qh + 32 * h;
                for (int l = 0; l < 32; l++) {
                    int q[4] = {((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32, ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32,
                                ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32, ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32};
                    for (int i = 0; i < 4; i++) {
                        int e = 128 * h + 32 * i + l;
                        isum += w->scales[e / 16] * q[i] * q8[e];
                    }
                }
            }
            acc += f16_to_f32(w->d) * xq[b].d * (float)isum;
            continue;
        }
        const uint8_t *scales, *qs, *qh = NULL;
        uint16_t d16, dmin16;
        if (W->dtype == MAT_Q4_K) {
            const block_q4_K *w = (const block_q4_K *)row + b;
            scales = w->scales; qs = w->qs; d16 = w->d; dmin16 = w->dmin;
        } else {
            const block_q5_K *w = (const block_q5_K *)row + b;
            scales = w->scales; qs = w->qs; qh = w->qh; d16 = w->d; dmin16 = w->dmin;
        }
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            kq_scale_min(j, scales, &sc, &m);
            int g = j / 2, hi = j & 1, s = 0;
            for (int l = 0; l < 32; l++) {
                int q = hi ? qs[32 * g + l] >> 4 : qs[32 * g + l] & 0x0F;
                if (qh && (qh[l] >> j) & 1) q += 16;
                s += q * q8[32 * j + l];
            }
            isum += sc * s;
            msum += m * (xq[b].bsums[2 * j] + xq[b].bsums[2 * j + 1]);
        }
        acc += f16_to_f32(d16) * xq[b].d * (float)isum;
        accm += f16_to_f32(dmin16) * xq[b].d * (float)msum;
    }
    return acc - accm;
}

void matvec_rows_q8K_ref(const mat *W, const block_q8_K *xq, float *y, int row0, int row1) {
    for (int r = row0; r < row1; r++) y[r - row0] = kq_row_dot_ref(W, r, xq);
}

void matmul_rows_q8K_ref(const mat *W, const block_q8_K *XQ, int n, float *Y, int ldy, int row0, int row1) {
    int nb = W->cols / QK_K;
    for (int t = 0; t < n; t++)
        for (int r = row0; r < row1; r++) Y[(size_t)t * ldy + r] = kq_row_dot_ref(W, r, XQ + (size_t)t * nb);
}

/* Q4_0 / Q5_0 x int8 activations (kernels.h): per 32-block the exact integer dot of the
 * weight codes minus their offset (8 / 16) with xq, times d_w dx in f32, summed in block order. */
int quantize_row_q8a_ref(const float *x, block_q8 *out, int n) {
    for (int b = 0; b < n / QK8; b++) {
        const float *xb = x + (size_t)b * QK8;
        float amax = 0.0f;
        for (int i = 0; i < QK8; i++) {
            float a = fabsf(xb[i]);
            if (!(a <= FLT_MAX)) return 0;   /* Inf or NaN */
            amax = fmaxf(amax, a);
        }
        if (amax > 0.0f && amax < 1e-30f) return 0;
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        out[b].scale = amax / 127.0f;
        for (int i = 0; i < QK8; i++) out[b].q[i] = (int8_t)lrintf(xb[i] * id);
    }
    return 1;
}

static float q8a_row_dot_ref(const mat *W, int r, const block_q8 *xq) {
    int nb = W->cols / QK4_0;
    float acc = 0.0f;
    for (int k = 0; k < nb; k++) {
        int isum = 0;
        float d;
        if (W->dtype == MAT_Q5_0) {
            const block_q5_0 *b = (const block_q5_0 *)W->data + (size_t)r * nb + k;
            uint32_t qh = (uint32_t)b->qh[0] | (uint32_t)b->qh[1] << 8 | (uint32_t)b->qh[2] << 16 | (uint32_t)b->qh[3] << 24;
            for (int i = 0; i < 16; i++) {
                int lo = (b->qs[i] & 0x0F) | (int)((qh >> i) & 1) << 4, hi = (b->qs[i] >> 4) | (int)((qh >> (i + 16)) & 1) << 4;
                isum += (lo - 16) * xq[k].q[i] + (hi - 16) * xq[k].q[i + 16];
            }
            d = f16_to_f32(b->d);
        } else {
            const block_q4_0 *b = (const block_q4_0 *)W->data + (size_t)r * nb + k;
            for (int i = 0; i < 16; i++) isum += ((b->qs[i] & 0x0F) - 8) * xq[k].q[i] + ((b->qs[i] >> 4) - 8) * xq[k].q[i + 16];
            d = f16_to_f32(b->d);
        }
        acc += d * xq[k].scale * (float)isum;
    }
    return acc;
}

void matvec_rows_q8a_ref(const mat *W, const block_q8 *xq, float *y, int row0, int row1) {
    for (int r = row0; r < row1; r++) y[r - row0] = q8a_row_dot_ref(W, r, xq);
}

void matmul_rows_q8a_ref(const mat *W, const block_q8 *XQ, int n, float *Y, int ldy, int row0, int row1) {
    int nb = W->cols / QK8;
    for (int t = 0; t < n; t++)
        for (int r = row0; r < row1; r++) Y[(size_t)t * ldy + r] = q8a_row_dot_ref(W, r, XQ + (size_t)t * nb);
}

/* BF16 weights x bf16 activations, f32 accumulation in column order. */
void matvec_rows_bf16bf16_ref(const mat *W, const uint16_t *xb, float *y, int row0, int row1) {
    for (int r = row0; r < row1; r++) {
        const uint16_t *w = (const uint16_t *)W->data + (size_t)r * W->cols;
        float acc = 0.0f;
        for (int c = 0; c < W->cols; c++) acc += bf16_to_f32(w[c]) * bf16_to_f32(xb[c]);
        y[r - row0] = acc;
    }
}

/* n tokens (XB: n rows of cols bf16): each as matvec_rows_bf16bf16_ref. */
void matmul_rows_bf16bf16_ref(const mat *W, const uint16_t *XB, int n, float *Y, int ldy, int row0, int row1) {
    for (int t = 0; t < n; t++)
        matvec_rows_bf16bf16_ref(W, XB + (size_t)t * W->cols, Y + (size_t)t * ldy + row0, row0, row1);
}

/* ---------------------------------------------------------------- small kernels */

void rmsnorm_ref(float *out, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float inv = (float)(1.0 / sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) out[i] = w[i] * (x[i] * inv);
}

void rope_apply(float *x, const float *cos_sin, int dr, int interleaved) {
    int half = dr / 2;
    for (int i = 0; i < half; i++) {
        float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
        int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
        float xa = x[a], xb = x[b];
        x[a] = xa * c - xb * s;
        x[b] = xa * s + xb * c;
    }
}

void softmax_ref(float *x, int n) {
    float m = -INFINITY;
    for (int i = 0; i < n; i++) m = fmaxf(m, x[i]);
    double sum = 0.0;
    for (int i = 0; i < n; i++) { x[i] = expf(x[i] - m); sum += x[i]; }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void silu_mul_ref(float *gate, const float *up, int n) {
    for (int i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

float vec_dot_ref(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

int vec_argmax_ref(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

void vec_axpy_ref(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

float vec_dot_bf16_ref(const float *a, const uint16_t *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * bf16_to_f32(b[i]);
    return s;
}

void vec_axpy_bf16_ref(float *y, float a, const uint16_t *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * bf16_to_f32(x[i]);
}

/* ---------------------------------------------------------------- MLA decode attention */

static float cache_value(const void *rows, int bf16, size_t i) {
    return bf16 ? bf16_to_f32(((const uint16_t *)rows)[i]) : ((const float *)rows)[i];
}

void attn_block_ref(const float *qc, int nh, int W, int R, const void *rows, int bf16, size_t ld, int n, float scale,
                    float *scratch, float *m, float *l, float *o) {
    for (int h = 0; h < nh; h++) {
        float *e = scratch + (size_t)h * n, mx = -INFINITY;
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int c = 0; c < W; c++) s += qc[(size_t)h * W + c] * cache_value(rows, bf16, (size_t)j * ld + c);
            e[j] = scale * s;
            if (e[j] > mx) mx = e[j];
        }
        float sum = 0.0f;
        for (int j = 0; j < n; j++) { e[j] = expf(e[j] - mx); sum += e[j]; }
        m[h] = mx;
        l[h] = sum;
        float *oh = o + (size_t)h * R;
        for (int c = 0; c < R; c++) oh[c] = 0.0f;
        for (int j = 0; j < n; j++)
            for (int c = 0; c < R; c++) oh[c] += e[j] * cache_value(rows, bf16, (size_t)j * ld + c);
    }
}

/* attn_block's arithmetic on bf16 rows where the CPU has AVX512_BF16 (vdpbf16ps): the query
 * and the exp weights rounded to bf16, l the sum of the rounded weights. */
void attn_block_bf16_ref(const float *qc, int nh, int W, int R, const uint16_t *rows, size_t ld, int n, float scale,
                         float *scratch, float *m, float *l, float *o) {
    for (int h = 0; h < nh; h++) {
        float *e = scratch + (size_t)h * n, mx = -INFINITY;
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int c = 0; c < W; c++) s += bf16_to_f32(f32_to_bf16(qc[(size_t)h * W + c])) * bf16_to_f32(rows[(size_t)j * ld + c]);
            e[j] = scale * s;
            if (e[j] > mx) mx = e[j];
        }
        float sum = 0.0f;
        for (int j = 0; j < n; j++) { e[j] = bf16_to_f32(f32_to_bf16(expf(e[j] - mx))); sum += e[j]; }
        m[h] = mx;
        l[h] = sum;
        float *oh = o + (size_t)h * R;
        for (int c = 0; c < R; c++) oh[c] = 0.0f;
        for (int j = 0; j < n; j++)
            for (int c = 0; c < R; c++) oh[c] += e[j] * bf16_to_f32(rows[(size_t)j * ld + c]);
    }
}

size_t attn_block_scratch(int nh, int W, int n) {
    size_t n2 = (size_t)n + (n & 1), Wp = ((size_t)W + 31) & ~(size_t)31;
    return (size_t)nh * n + (size_t)nh * n2 / 2 + (size_t)nh * Wp / 2;
}

/* ---------------------------------------------------------------- top-k */

/* Rank key: NaN below every number (including -inf); ties go to the lower index. */
static int topk_better(const float *x, int i, int j) {
    float a = x[i], b = x[j];
    int na = isnan(a), nb = isnan(b);
    if (na || nb) return na != nb ? nb : i < j;
    return a > b || (a == b && i < j);
}

/* k passes of selection: plain, O(n k). */
void topk_indices_ref(const float *x, int n, int k, int *idx) {
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            int taken = 0;
            for (int m = 0; m < j; m++) taken |= idx[m] == i;
            if (!taken && (best < 0 || topk_better(x, i, best))) best = i;
        }
        idx[j] = best;
    }
}

/* The router's rule: k passes of argmax over the untaken, `x[i] > x[best]`, first among equals. */
void router_topk_ref(const float *x, int n, int k, int *idx) {
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            if (best >= 0 && !(x[i] > x[best])) continue;
            int taken = 0;
            for (int m = 0; m < j; m++) taken |= idx[m] == i;
            if (!taken) best = i;
        }
        idx[j] = best;
    }
}

/* One pass, keeping idx[0..k) sorted; a candidate enters only if it beats the last. */
void topk_indices(const float *x, int n, int k, int *idx) {
    int have = 0;
    for (int i = 0; i < n; i++) {
        if (have == k && !topk_better(x, i, idx[k - 1])) continue;
        int p = have < k ? have++ : k - 1;
        while (p > 0 && topk_better(x, i, idx[p - 1])) { idx[p] = idx[p - 1]; p--; }
        idx[p] = i;
    }
}
