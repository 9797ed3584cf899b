/* exp_avx512.h - exp512: expf for 16 lanes, for the *_avx512.c kernels (compiled with the
 * AVX-512 flags only). n = round(x log2 e), r = x - n ln 2 (two-part ln 2), Cephes degree-6
 * polynomial, scaled by 2^n with vscalefps (which flushes underflow to 0 and overflow to inf).
 * Relative error about 2 ulp. */
#ifndef MOE_EXP_AVX512_H
#define MOE_EXP_AVX512_H

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

#endif
