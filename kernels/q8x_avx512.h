/* q8x_avx512.h - activations as int16 per 32-block for the Q8 kernels on int16 x
 * (matvec_avx512.c's row-major Q8 / Q8_0 matvec, matvec_q8p_avx512.c's panels): one
 * definition, so both round x alike. For the files compiled with the AVX-512 flags. */
#ifndef MOE_Q8X_AVX512_H
#define MOE_Q8X_AVX512_H

#include <stdint.h>
#include <string.h>
#include <immintrin.h>

#include "kernels.h"

/* x as int16 per 32-block for the int16-x kernels (mv_q8x16_block, q8p_panel): xq = x / dx[k] rounded, dx[k] the power of
 * two above max|x in block| / 32767 (frexpf's 2^e; so integer x stays exact; the rounding
 * error is at most dx/2 <= max/32767 per value: ~3e-5 of the block's largest, far below Q8
 * weights' own ~4e-3). Returns 0 if x holds an Inf or NaN, or a block whose largest value
 * is so small that its step would be subnormal (the caller keeps f32 x). The power of two
 * comes from the exponent bits (was frexpf / ldexpf: two libm calls per block, ~1 us of a
 * 1024-column call, a tenth of a 256 x 1024 expert matrix's time). */
static inline int q8x_quantize(const float *x, int cols, int16_t *xq, float *dx) {
    for (int k = 0; k < cols / QK8; k++) {
        __m512 a = _mm512_loadu_ps(x + k * QK8), b = _mm512_loadu_ps(x + k * QK8 + 16);
        if (_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q)) return 0;   /* NaN (maxps drops it) */
        float mx = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        if (!(mx <= 3.0e38f) || (mx > 0 && mx < 1e-30f)) return 0;   /* Inf, or a step below FLT_MIN */
        float v = mx / 32767.0f, step = 0.0f, inv = 0.0f;
        if (mx > 0) {   /* v normal (>= 3e-35): v in [2^(E-127), 2^(E-126)), frexpf's e = E - 126 */
            uint32_t bits, E, sb, ib;
            memcpy(&bits, &v, 4);
            E = bits >> 23 & 0xff;
            sb = (E + 1) << 23;      /* 2^e */
            ib = (253 - E) << 23;    /* 2^-e */
            memcpy(&step, &sb, 4);
            memcpy(&inv, &ib, 4);
        }
        dx[k] = step;
        __m512 iv = _mm512_set1_ps(inv);
        __m512i ia = _mm512_cvtps_epi32(_mm512_mul_ps(a, iv)), ib = _mm512_cvtps_epi32(_mm512_mul_ps(b, iv));
        _mm256_storeu_si256((__m256i *)(xq + k * QK8), _mm512_cvtsepi32_epi16(ia));
        _mm256_storeu_si256((__m256i *)(xq + k * QK8 + 16), _mm512_cvtsepi32_epi16(ib));
    }
    return 1;
}

#endif
