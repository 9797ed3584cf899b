/* hsum_avx512.h - horizontal sums of AVX-512 accumulators, for the kernels compiled with the
 * AVX-512 flags (matvec_avx512.c, matmul_lowp_avx512.c, matvec_kq_avx512.c,
 * matvec_q4_0_avx512.c). One definition each, so that a matmul tile that must reproduce a
 * matvec's bits sums in exactly the matvec's order.
 *
 *   hsum4_ps(a, b, c, d)  {sum a, sum b, sum c, sum d}: 4 rows' accumulators in one tree
 *                         (7 shuffles + 5 adds for the four, where four _mm512_reduce_add_ps
 *                         take 4 x 8: what a 1024 x 256 down projection, 16 vector steps per
 *                         row, spent a quarter of its time on)
 *   hsum_quads_ps(v)      {sum v[0..3], sum v[4..7], sum v[8..11], sum v[12..15]}
 *   hsum256(v)            the sum of 8 floats (halves, then pairs)
 */
#ifndef MOE_HSUM_AVX512_H
#define MOE_HSUM_AVX512_H

#include <immintrin.h>

static inline __attribute__((always_inline)) __m128 hsum_quads_ps(__m512 q) {
    q = _mm512_add_ps(q, _mm512_permute_ps(q, 0x4E));
    q = _mm512_add_ps(q, _mm512_permute_ps(q, 0xB1));
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), q));
}

static inline __attribute__((always_inline)) __m128 hsum4_ps(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xEE));
    __m512 q = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xDD));
    return hsum_quads_ps(q);   /* 128-bit lane j holds vector j's 4 partials */
}

static inline __attribute__((always_inline)) float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#endif
