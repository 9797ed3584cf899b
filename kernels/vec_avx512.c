/* vec_avx512.c - AVX-512 small kernels: rmsnorm, softmax, silu_mul, vec_dot,
 * vec_axpy.
 *
 * Legend
 *   exp512     (exp_avx512.h) expf for 16 lanes: n = round(x log2 e), r = x - n ln 2 (two-part
 *              ln 2), Cephes degree-6 polynomial, scaled by 2^n with vscalefps
 *              (which flushes underflow to 0 and overflow to inf). Relative
 *              error about 2 ulp.
 *   Tails (n % 16) use masked loads and stores: no access past the end.
 *   rmsnorm sums squares in double, like the reference.
 *   quantize_row_q8 / _bf16 give the same bits as the references (same
 *   operations; cvtps2dq rounds to nearest even like lrintf).
 */
#include <math.h>
#include <immintrin.h>

#include "exp_avx512.h"
#include "kernels_impl.h"

#define AI static inline __attribute__((always_inline))


AI __mmask16 tail16(int rem) { return (__mmask16)((1u << rem) - 1); }

/* ---------------------------------------------------------------- kernels */

void rmsnorm_avx512(float *out, const float *x, const float *w, int n, float eps) {
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        s0 = _mm512_fmadd_pd(lo, lo, s0);
        s1 = _mm512_fmadd_pd(hi, hi, s1);
    }
    if (i < n) {
        __m512 v = _mm512_maskz_loadu_ps(tail16(n - i), x + i);
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        s0 = _mm512_fmadd_pd(lo, lo, s0);
        s1 = _mm512_fmadd_pd(hi, hi, s1);
    }
    double ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    __m512 inv = _mm512_set1_ps((float)(1.0 / sqrt(ss / n + eps)));
    for (i = 0; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_loadu_ps(w + i), _mm512_mul_ps(_mm512_loadu_ps(x + i), inv)));
    if (i < n) {
        __mmask16 m = tail16(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + i), _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
        _mm512_mask_storeu_ps(out + i, m, v);
    }
}

void softmax_avx512(float *x, int n) {
    float mx, sum;
    exp512_sub_max(x, n, &mx, &sum);
    int i;
    __m512 inv = _mm512_set1_ps((float)(1.0 / (double)sum));
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    if (i < n) {
        __mmask16 t = tail16(n - i);
        _mm512_mask_storeu_ps(x + i, t, _mm512_mul_ps(_mm512_maskz_loadu_ps(t, x + i), inv));
    }
}

AI __m512 silu_mul16(__m512 g, __m512 u) {
    __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u);
}

void silu_mul_avx512(float *gate, const float *up, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(gate + i, silu_mul16(_mm512_loadu_ps(gate + i), _mm512_loadu_ps(up + i)));
    if (i < n) {
        __mmask16 t = tail16(n - i);
        _mm512_mask_storeu_ps(gate + i, t, silu_mul16(_mm512_maskz_loadu_ps(t, gate + i), _mm512_maskz_loadu_ps(t, up + i)));
    }
}

float vec_dot_avx512(const float *a, const float *b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        __mmask16 t = tail16(n - i);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(t, a + i), _mm512_maskz_loadu_ps(t, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

void vec_axpy_avx512(float *y, float a, const float *x, int n) {
    __m512 av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 t = tail16(n - i);
        _mm512_mask_storeu_ps(y + i, t, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(t, x + i), _mm512_maskz_loadu_ps(t, y + i)));
    }
}

/* bf16 -> f32: the 16 bits become the high half of the float (exact). */
static inline __m512 bf16x16_load(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline __m512 bf16x16_maskz_load(__mmask16 m, const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

float vec_dot_bf16_avx512(const float *a, const uint16_t *b, int n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), bf16x16_load(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), bf16x16_load(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), bf16x16_load(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), bf16x16_load(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), bf16x16_load(b + i), s0);
    if (i < n) {
        __mmask16 t = tail16(n - i);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(t, a + i), bf16x16_maskz_load(t, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

void vec_axpy_bf16_avx512(float *y, float a, const uint16_t *x, int n) {
    __m512 av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, bf16x16_load(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 t = tail16(n - i);
        _mm512_mask_storeu_ps(y + i, t, _mm512_fmadd_ps(av, bf16x16_maskz_load(t, x + i), _mm512_maskz_loadu_ps(t, y + i)));
    }
}

/* ---------------------------------------------------------------- quantization */

void quantize_row_q8_avx512(const float *x, block_q8 *out, int n) {
    for (int b = 0; b < n / QK8; b++) {
        __m512 a0 = _mm512_loadu_ps(x + b * QK8), a1 = _mm512_loadu_ps(x + b * QK8 + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a0), _mm512_abs_ps(a1)));
        float scale = amax / 127.0f, inv = scale > 0 ? 1.0f / scale : 0.0f;
        __m512 iv = _mm512_set1_ps(inv);
        out[b].scale = scale;
        _mm_storeu_si128((__m128i *)out[b].q, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(a0, iv))));
        _mm_storeu_si128((__m128i *)(out[b].q + 16), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(a1, iv))));
    }
}

/* f32_to_bf16 on 16 lanes: round to nearest even; NaN keeps a quiet NaN. */
AI __m256i bf16_16(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                           _mm512_set1_epi32(0x7f800000));
    __m512i rnd = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)),
                                   _mm512_set1_epi32(0x7fff));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, rnd), 16);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
    return _mm512_cvtepi32_epi16(r);
}

void quantize_row_bf16_avx512(const float *x, uint16_t *out, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i *)(out + i), bf16_16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 t = tail16(n - i);
        _mm256_mask_storeu_epi16(out + i, t, bf16_16(_mm512_maskz_loadu_ps(t, x + i)));
    }
}

/* Two passes: the largest non-NaN value m (maxps returns its second operand when the first
 * is NaN, so NaNs never enter the running max), then the first index holding m. */
int vec_argmax_avx512(const float *x, int n) {
    if (x[0] != x[0]) return 0;                       /* NaN first: nothing compares above it */
    __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        m0 = _mm512_max_ps(_mm512_loadu_ps(x + i), m0);
        m1 = _mm512_max_ps(_mm512_loadu_ps(x + i + 16), m1);
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        m0 = _mm512_mask_max_ps(m0, k, _mm512_maskz_loadu_ps(k, x + i), m0);
    }
    __m512 mv = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_max_ps(m0, m1)));
    for (i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __mmask16 eq = _mm512_mask_cmp_ps_mask(k, _mm512_maskz_loadu_ps(k, x + i), mv, _CMP_EQ_OQ);
        if (eq) return i + __builtin_ctz(eq);
    }
    return 0;                                         /* all NaN but x[0]: unreachable */
}
