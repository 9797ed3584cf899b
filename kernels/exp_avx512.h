/* exp_avx512.h - exp512: expf for 16 lanes, for the *_avx512.c kernels (compiled with the
 * AVX-512 flags only). n = round(x log2 e), r = x - n ln 2 (two-part ln 2), Cephes degree-6
 * polynomial, scaled by 2^n with vscalefps (which flushes underflow to 0 and overflow to inf).
 * Relative error about 2 ulp. max512: the masked max pass before an exp of x - max. */
#ifndef MOE_EXP_AVX512_H
#define MOE_EXP_AVX512_H

#include <math.h>
#include <immintrin.h>

static inline __attribute__((always_inline)) __m512 exp512(__m512 x) {
    x = _mm512_min_ps(x, _mm512_set1_ps(88.7228f));
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}

/* x[i] = exp(x[i] - max x), i < n, in place; *max = max x, *sum = the sum of the new x
 * (a 16-lane sum reduced once). softmax_avx512 divides by it; attn_block keeps both. */
/* max x[0..n), n >= 1 (16 lanes, the tail masked with -inf). */
static inline float max512(const float *x, int n) {
    __m512 ninf = _mm512_set1_ps(-INFINITY), mx = ninf;
    int i = 0;
    for (; i + 16 <= n; i += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(x + i));
    if (i < n) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(ninf, (__mmask16)((1u << (n - i)) - 1), x + i));
    return _mm512_reduce_max_ps(mx);
}

static inline void exp512_sub_max(float *x, int n, float *max, float *sum) {
    __m512 ninf = _mm512_set1_ps(-INFINITY);
    float mval = max512(x, n);
    __m512 m = _mm512_set1_ps(mval), s = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
        _mm512_storeu_ps(x + i, e);
        s = _mm512_add_ps(s, e);
    }
    if (i < n) {
        __mmask16 t = (__mmask16)((1u << (n - i)) - 1);
        __m512 e = _mm512_maskz_mov_ps(t, exp512(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, t, x + i), m)));
        _mm512_mask_storeu_ps(x + i, t, e);
        s = _mm512_add_ps(s, e);
    }
    *max = mval;
    *sum = _mm512_reduce_add_ps(s);
}

#endif
