/* matvec_q8p_avx512.c - AVX-512 products over Q8 rows packed in panels of 16 (MAT_Q8P).
 *
 * Legend
 *   W [rows, cols], rows % 16 == 0, in panels of P = 16 rows (block_q8p, kernels.h): per panel
 *   p and 32-column block k one 576-byte block: the 16 rows' f32 scales d[16], then for each
 *   column pair j (0..15) the 16 rows' two int8 weights (row r: q[j][r][0..1] = columns 2j,
 *   2j + 1). Panels follow each other, blocks of a panel too: W is one stream, in the order
 *   the kernel reads it.
 *   x  each token quantized per 32-block to int16 with a power-of-two step dx[k]
 *      (q8x_avx512.h: the Q8 matvec's rounding, <= max|x_block| / 65534 per value).
 *   Per panel, block k and token: for each column pair j, one vpdpwssd (VNNI; else vpmaddwd +
 *   vpaddd: the same exact int32) of the pair's 16 rows widened to int16 against x's pair
 *   broadcast, so after 16 steps lane r holds row r's exact integer dot over the 32 columns;
 *   then acc = fma(cvt(lane) * d, dx[k], acc), 16 rows at once. 16 + 3 vector µops per 16
 *   rows, 32 columns and token (plus 16 widenings shared by the tokens), where the row-major
 *   Q8 matvec pays 5 per row and block: the row layout spends its µops on per-row scales and
 *   horizontal sums, this one does not (ik_llama.cpp's Q8_0_R8 interleaves rows for the same
 *   reason).
 *   Tokens: tiles of up to Q8P_TB; each token's arithmetic is the same whatever the tile, so
 *   a token of a batch gets bit for bit what it gets alone (n = 1).
 *   A token whose x does not quantize (Inf, NaN, steps below FLT_MIN) is computed by the
 *   scalar reference (matvec_rows_ref: f32 x).
 *
 * Compiled with the AVX-512 flags (Makefile: *_avx512.c); vpdpwssd only where CPUID has VNNI.
 */
#include <stddef.h>
#include <string.h>
#include <immintrin.h>

#include "kernels_impl.h"
#include "q8x_avx512.h"

#define AI static inline __attribute__((always_inline))

#define Q8P_TB 8                    /* tokens per tile: TB int32 + TB f32 accumulators */
#define Q8P_X_BYTES (256 * 1024)    /* int16 x kept on the stack per pass over the rows */
/* One token: besides the hardware's stream, one T1 prefetch per 576-byte block Q8P_PF1 bytes
 * ahead (a line in nine: it starts the next pages' streams early). Zen 5, cold matvec, % of a
 * plain read beside (kernels_bench --quick, 2 runs each): 0 89-91 %, 8 KiB 92-97 %, 16 KiB
 * 92-97 %, 32 KiB 94-102 %; M q8 --seqs 1,8, 3 alternated rounds: B = 1 +3 %, B = 8 +1 %. */
#ifndef Q8P_PF1
#define Q8P_PF1 16384
#endif
/* Tiles of several tokens: every line of the block Q8P_PF_MM bytes ahead, 0: off (their stream
 * is slow enough that the hardware's falls behind; one token is faster without these nine:
 * kernels/README.md "Measured"). */
#ifndef Q8P_PF_MM
#define Q8P_PF_MM 2048
#endif

/* Rows [16 p, 16 p + 16) x TB tokens (t0..): y[t][r] for the panel, into out[t * 16 + r]. */
AI void q8p_panel(const block_q8p *blk, int nb, int TB, const int16_t *xq, const float *dx, int cols, int vnni,
                  int first, float *out) {
    __m512 acc[Q8P_TB];
#pragma GCC unroll 8
    for (int t = 0; t < TB; t++) acc[t] = _mm512_setzero_ps();
    for (int k = 0; k < nb; k++, blk++) {
        if (TB > 1 && Q8P_PF_MM && first) {
            const char *p = (const char *)blk + Q8P_PF_MM;
#pragma GCC unroll 9
            for (int l = 0; l < 9; l++) _mm_prefetch(p + 64 * l, _MM_HINT_T0);
        }
        if (Q8P_PF1 && TB == 1) _mm_prefetch((const char *)blk + Q8P_PF1, _MM_HINT_T1);   /* one line per block, far ahead */
        /* C independent integer chains per token (vpdpwssd's latency: one chain of 16 would
         * hold a 1-token panel to ~26 GB/s); their int32 sums are exact, so any C gives the same */
        const int C = TB >= 8 ? 1 : TB >= 4 ? 2 : 4;
        __m512i s[Q8P_TB][4];
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++)
#pragma GCC unroll 4
            for (int c = 0; c < C; c++) s[t][c] = _mm512_setzero_si512();
        const int32_t *xp[Q8P_TB];
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) xp[t] = (const int32_t *)(xq + (size_t)t * cols + (size_t)k * QK8);
#pragma GCC unroll 16
        for (int j = 0; j < QK8 / 2; j++) {
            __m512i w = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)blk->q[j]));
#pragma GCC unroll 8
            for (int t = 0; t < TB; t++) {
                __m512i xv = _mm512_set1_epi32(xp[t][j]);
                s[t][j % C] = vnni ? _mm512_dpwssd_epi32(s[t][j % C], w, xv) : _mm512_add_epi32(s[t][j % C], _mm512_madd_epi16(w, xv));
            }
        }
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++) {
            if (C == 4) s[t][0] = _mm512_add_epi32(_mm512_add_epi32(s[t][0], s[t][1]), _mm512_add_epi32(s[t][2], s[t][3]));
            else if (C == 2) s[t][0] = _mm512_add_epi32(s[t][0], s[t][1]);
        }
        __m512 d = _mm512_loadu_ps(blk->d);
#pragma GCC unroll 8
        for (int t = 0; t < TB; t++)
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s[t][0]), d), _mm512_set1_ps(dx[(size_t)t * nb + k]), acc[t]);
    }
#pragma GCC unroll 8
    for (int t = 0; t < TB; t++) _mm512_storeu_ps(out + t * Q8P_ROWS, acc[t]);
}

/* Tokens map[0..nq) of a chunk (their int16 x at xq + slot * cols, steps at dx + slot * nb):
 * for every panel over rows [row0, row1), tiles of up to Q8P_TB tokens, so a panel (16 rows,
 * 18 KiB at 1024 columns) is read from memory once and from L1 for the other tiles; row r of
 * token t to Y[t * ldy + r - yoff]. */
AI void q8p_chunk(const mat *W, int nq, const int *map, const int16_t *xq, const float *dx, float *Y, int ldy, int yoff,
                  int row0, int row1, int vnni) {
    int cols = W->cols, nb = cols / QK8;
    const block_q8p *base = (const block_q8p *)W->data;
    float out[Q8P_TB * Q8P_ROWS];
    for (int p = row0 / Q8P_ROWS; p * Q8P_ROWS < row1; p++) {
        int r0 = p * Q8P_ROWS > row0 ? p * Q8P_ROWS : row0, r1 = p * Q8P_ROWS + Q8P_ROWS < row1 ? p * Q8P_ROWS + Q8P_ROWS : row1;
        int tiles = (nq + Q8P_TB - 1) / Q8P_TB;
        for (int s0 = 0, left = nq; left > 0; tiles--) {
            int tb = (left + tiles - 1) / tiles;   /* near-equal tiles: 9 tokens = 5 + 4, not 8 + 1 */
            const int16_t *xt = xq + (size_t)s0 * cols;
            const float *dt = dx + (size_t)s0 * nb;
            const block_q8p *bp = base + (size_t)p * nb;
            int first = s0 == 0;
            switch (tb) {   /* one instantiation per tile width: the loops unroll fully */
#define CASE(n) case n: q8p_panel(bp, nb, n, xt, dt, cols, vnni, first, out); break;
            CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
            default: break;
            }
            for (int t = 0; t < tb; t++)
                memcpy(Y + (size_t)map[s0 + t] * ldy + (r0 - yoff), out + t * Q8P_ROWS + (r0 - p * Q8P_ROWS),
                       sizeof(float) * (size_t)(r1 - r0));
            s0 += tb;
            left -= tb;
        }
    }
}

static int vnni_override = -1;
void q8p_set_vnni(int on) { vnni_override = on; }
static int q8p_has_vnni(void) {
    int has = cpu_get_features()->avx512_vnni;
    return vnni_override >= 0 ? vnni_override && has : has;
}

/* Rows [row0, row1) of W X for n tokens: row r of token t to Y[t * ldy + r - yoff]. Tokens go
 * in chunks whose int16 x fits Q8P_X_BYTES; one whose x does not quantize goes to the
 * reference on its own. */
static void q8p_matmul(const mat *W, const float *X, int n, float *Y, int ldy, int yoff, int row0, int row1) {
    int cols = W->cols, nb = cols / QK8, vnni = q8p_has_vnni();
    int chunk = (int)(Q8P_X_BYTES / ((size_t)cols * 2));
    if (chunk < 1) chunk = 1;
    if (chunk > n) chunk = n;
    int16_t xq[(size_t)chunk * cols] __attribute__((aligned(64)));
    float dx[(size_t)chunk * nb];
    int map[chunk];
    for (int t0 = 0; t0 < n; t0 += chunk) {
        int nt = n - t0 < chunk ? n - t0 : chunk, nq = 0;
        for (int t = t0; t < t0 + nt; t++) {
            if (q8x_quantize(X + (size_t)t * cols, cols, xq + (size_t)nq * cols, dx + (size_t)nq * nb)) map[nq++] = t;
            else matvec_rows_ref(W, X + (size_t)t * cols, Y + (size_t)t * ldy + (row0 - yoff), row0, row1);
        }
        if (nq) {
            if (vnni) q8p_chunk(W, nq, map, xq, dx, Y, ldy, yoff, row0, row1, 1);
            else q8p_chunk(W, nq, map, xq, dx, Y, ldy, yoff, row0, row1, 0);
        }
    }
}

void matmul_rows_q8p_avx512(const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1) {
    q8p_matmul(W, X, n, Y, ldy, 0, row0, row1);
}

void matvec_rows_q8p_avx512(const mat *W, const float *x, float *y, int row0, int row1) {
    q8p_matmul(W, x, 1, y, 0, row0, row0, row1);   /* y [row1 - row0] */
}
