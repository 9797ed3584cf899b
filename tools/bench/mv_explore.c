/* mv_explore.c - exploration harness (not built by make): cold or hot matvec_rows of one
 * shape and dtype against a plain read of the same pool, alternating per round, medians of the
 * per-round ratios; variants 1-6 are BF16 loop shapes tried for issue 18 (row-sequential with
 * and without prefetch, 4-row interleaved with no / per-row / linear / fixed-distance prefetch;
 * none beat the library's, variant 0). --d0 / --d1 set the library's prefetch minimums
 * (mv_pf_d, matvec_avx512.c), --huge advises the pool MADV_HUGEPAGE, --lowp the low-precision
 * matvecs, --hot the same copy every call. Build (AVX-512 machine, after make):
 *   gcc -O2 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -Ikernels -o /tmp/mvx \
 *       tools/bench/mv_explore.c build/libmoe.a -lm -lpthread -lnuma -ldl -ljansson -lpcre2-8 -lmicrohttpd
 * Usage: /tmp/mvx [-t f32|bf16|q8|f16|q8_0] [-r ROWS] [-c COLS] [--pool MiB] [--rounds N] [--hot] [--huge]
 *             [--lowp] [--d0 B] [--d1 B] [--pf0 B --pf1 B (variants)] VARIANT...
 */
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "kernels.h"
__attribute__((weak)) size_t mv_pf_d[2];

#define AI static inline __attribute__((always_inline))

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static int cmpd(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
static double med(double *v, int n) { qsort(v, n, sizeof *v, cmpd); return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]); }

static int PF0 = 1024, PF1 = 4096, MODE = 0;

/* ---- bf16 row-sequential: 1 row at a time, 64 columns per step (2 loads), 4 accumulators */
AI void bf16_seq_row(const uint16_t *w, const float *xe, const float *xo, int cols, float *y, int pf0, int pf1) {
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const char *p = (const char *)w;
    for (int k = 0; k < cols; k += 64) {
        if (pf0) _mm_prefetch(p + 2 * k + pf0, _MM_HINT_T0), _mm_prefetch(p + 2 * k + 64 + pf0, _MM_HINT_T0);
        if (pf1) _mm_prefetch(p + 2 * k + pf1, _MM_HINT_T1), _mm_prefetch(p + 2 * k + 64 + pf1, _MM_HINT_T1);
        __m512i v0 = _mm512_loadu_si512(w + k), v1 = _mm512_loadu_si512(w + k + 32);
        a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), _mm512_loadu_ps(xe + k / 2), a0);
        a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v0, hi)), _mm512_loadu_ps(xo + k / 2), a1);
        a2 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)), _mm512_loadu_ps(xe + k / 2 + 16), a2);
        a3 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v1, hi)), _mm512_loadu_ps(xo + k / 2 + 16), a3);
    }
    *y = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/* ---- bf16 4 rows interleaved, 32 columns per step; prefetch mode:
 *  0 none, 1 per-row (as lib: T0 +RB rs, T1 +2 RB rs), 2 linear over the block (T0 at +pf0, T1 at +pf1
 *  from the block's linear position 4*step lines), 3 per-row with fixed distances pf0/pf1 bytes */
AI void bf16_int_block(const uint16_t *w, size_t rs, const float *xe, const float *xo, int cols, float *y, int mode,
                       int pf0, int pf1) {
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512 ae[4], ao[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) ae[i] = ao[i] = _mm512_setzero_ps();
    const char *b = (const char *)w;
    size_t rsb = rs * 2;
    for (int k = 0, s = 0; k < cols; k += 32, s++) {
        if (mode == 1)
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                _mm_prefetch(b + i * rsb + 2 * k + 4 * rsb, _MM_HINT_T0);
                _mm_prefetch(b + i * rsb + 2 * k + 8 * rsb, _MM_HINT_T1);
            }
        else if (mode == 2)
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                if (pf0) _mm_prefetch(b + (4 * s + i) * 64 + pf0, _MM_HINT_T0);
                if (pf1) _mm_prefetch(b + (4 * s + i) * 64 + pf1, _MM_HINT_T1);
            }
        else if (mode == 3)
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                if (pf0) _mm_prefetch(b + i * rsb + 2 * k + pf0, _MM_HINT_T0);
                if (pf1) _mm_prefetch(b + i * rsb + 2 * k + pf1, _MM_HINT_T1);
            }
        __m512 xev = _mm512_loadu_ps(xe + k / 2), xov = _mm512_loadu_ps(xo + k / 2);
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            __m512i v = _mm512_loadu_si512(w + i * rs + k);
            ae[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), xev, ae[i]);
            ao[i] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, hi)), xov, ao[i]);
        }
    }
    for (int i = 0; i < 4; i++) y[i] = _mm512_reduce_add_ps(_mm512_add_ps(ae[i], ao[i]));
}

static void bf16_split(const float *x, int cols, float *xe, float *xo) {
    for (int k = 0; k < cols; k += 2) { xe[k / 2] = x[k]; xo[k / 2] = x[k + 1]; }
}
static float XE[65536], XO[65536];

static void mv_var(int var, const mat *W, const float *x, float *y) {
    if (var == 0) { matvec_rows(W, x, y, 0, W->rows); return; }
    bf16_split(x, W->cols, XE, XO);   /* cheap vs the matrix */
    const uint16_t *w = W->data;
    size_t rs = W->cols;
    if (var == 1) {
        for (int r = 0; r < W->rows; r++) bf16_seq_row(w + r * rs, XE, XO, W->cols, y + r, PF0, PF1);
    } else if (var == 2) {
        for (int r = 0; r < W->rows; r++) bf16_seq_row(w + r * rs, XE, XO, W->cols, y + r, 0, 0);
    } else {
#define IB(M) for (int r = 0; r < W->rows; r += 4) bf16_int_block(w + r * rs, rs, XE, XO, W->cols, y + r, M, PF0, PF1)
        switch (var - 3) { case 0: IB(0); break; case 1: IB(1); break; case 2: IB(2); break; default: IB(3); break; }
    }
}

/* plain read of a buffer, 8 zmm accumulators */
static float plain_read(const char *p, size_t n) {
    __m512 a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 512)
        for (int j = 0; j < 8; j++) a[j] = _mm512_add_ps(a[j], _mm512_load_ps((const float *)(p + i + 64 * j)));
    for (int i = 1; i < 8; i++) a[0] = _mm512_add_ps(a[0], a[i]);
    return _mm512_reduce_add_ps(a[0]);
}

int main(int argc, char **argv) {
    int dt = MAT_BF16, hot = 0, rows = 1024, cols = 1024, huge = 0, rounds = 7, nvar = 0, vars[16];
    size_t pool_mib = 512;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-r")) rows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-c")) cols = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--huge")) huge = 1;
        else if (!strcmp(argv[i], "--hot")) hot = 1;
        else if (!strcmp(argv[i], "--lowp")) cpu_set_low_precision(1);
        else if (!strcmp(argv[i], "--d0")) mv_pf_d[0] = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--d1")) mv_pf_d[1] = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-t")) { for (int d = 0; d < MAT_N_TYPES; d++) if (!strcmp(argv[i + 1], mat_type_of(d)->name)) dt = d; i++; }
        else if (!strcmp(argv[i], "--rounds")) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pf0")) PF0 = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pf1")) PF1 = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pool")) pool_mib = atoi(argv[++i]);
        else vars[nvar++] = atoi(argv[i]);
    }
    mat one = {dt, rows, cols, NULL};
    size_t bytes = mat_bytes(&one), pool = pool_mib << 20, n = pool / bytes;
    char *buf = aligned_alloc(2 << 20, (pool + (2 << 20)) & ~(size_t)((2 << 20) - 1));
    madvise(buf, pool, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    {
        float *row = malloc(4 * cols);
        size_t rb = mat_row_bytes(dt, cols);
        for (int r = 0; r < rows; r++) {
            for (int c = 0; c < cols; c++) row[c] = (float)(((r * 131 + c * 7919) % 97) - 48) / 48.0f;
            mat_type_of(dt)->from_f32(row, buf + r * rb, cols);
        }
        for (size_t i = 1; i < n; i++) memcpy(buf + i * bytes, buf, bytes);
        free(row);
    }
    float *x = malloc(4 * cols), *y = malloc(4 * rows), *yref = malloc(4 * rows);
    for (int c = 0; c < cols; c++) x[c] = (float)((c * 31) % 17) / 17.0f - 0.5f;
    mat m0 = {dt, rows, cols, buf};
    matvec_rows(&m0, x, yref, 0, rows);
    for (int v = 0; v < nvar; v++) {
        mv_var(vars[v], &m0, x, y);
        double e = 0;
        for (int r = 0; r < rows; r++) e = fmax(e, fabs(y[r] - yref[r]) / (fabs(yref[r]) + 1));
        if (e > 1e-3) printf("variant %d wrong: %g\n", vars[v], e);
    }
    double t[17][64], sink = 0;
    for (int rd = 0; rd < rounds; rd++) {
        double t0 = now_s();
        sink += plain_read(buf, n * bytes);
        t[16][rd] = now_s() - t0;
        for (int v = 0; v < nvar; v++) {
            t0 = now_s();
            for (size_t i = 0; i < n; i++) {
                mat m = {dt, rows, cols, buf + (hot ? 0 : i * bytes)};
                mv_var(vars[v], &m, x, y);
            }
            t[v][rd] = now_s() - t0;
        }
    }
    double gb = n * bytes / 1e9;
    printf("%dx%d %s huge=%d pf0=%d pf1=%d: plain %.1f GB/s;", rows, cols, mat_type_of(dt)->name, huge, PF0, PF1, gb / med(t[16], rounds));
    for (int v = 0; v < nvar; v++) {
        double ratio[64];
        for (int rd = 0; rd < rounds; rd++) ratio[rd] = t[16][rd] / t[v][rd];
        printf("  v%d %.1f (%.0f%%)", vars[v], gb / med(t[v], rounds), 100 * med(ratio, rounds));
    }
    printf("   [%g]\n", sink * 0);
    return 0;
}
