/* attn_bench.c - micro-benchmark of attn_block, the decode attention kernel at depth
 * (make build/bench/attn_bench; not part of the moe binary or the tests).
 *
 * Legend
 *   One "token" = every layer's cache of D positions read once in blocks of B rows by one
 *   query of nh heads (what attend_deep's phase 1 does per decoded token, on one thread).
 *   The caches of the L layers are distinct buffers (L x D x W values: 75 MB for M's
 *   shape at D 16384 in bf16), so the rows stream from DRAM, as in decoding.
 *   GFLOP/s  2 nh (W + R) D L / time;  GB/s  cache bytes / time; "% of bw" divides by --bw.
 *   Every figure is the median of --reps samples of --tokens tokens each, timed by the thread's
 *   CPU time (on the shared machine: excludes preemption, not other processes' memory traffic).
 *
 * Usage: attn_bench [--nh 8] [--R 256] [--dr 32] [--depth 16384] [--layers 8] [--block 256]
 *                   [--reps 7] [--tokens 5] [--bw 32.9]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels_impl.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);   /* the shared machine: excludes preemption */
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef void (*attn_fn)(const float *, int, int, int, const void *, int, size_t, int, float, float *, float *, float *, float *);

int main(int argc, char **argv) {
    int nh = 8, R = 256, dr = 32, D = 16384, L = 8, B = 256, reps = 7, tokens = 5;
    double bw = 32.9;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) { fprintf(stderr, "attn_bench: %s needs a value (see the file's header)\n", a); return 2; }
        const char *v = argv[++i];
        if (!strcmp(a, "--nh")) nh = atoi(v);
        else if (!strcmp(a, "--R")) R = atoi(v);
        else if (!strcmp(a, "--dr")) dr = atoi(v);
        else if (!strcmp(a, "--depth")) D = atoi(v);
        else if (!strcmp(a, "--layers")) L = atoi(v);
        else if (!strcmp(a, "--block")) B = atoi(v);
        else if (!strcmp(a, "--reps")) reps = atoi(v);
        else if (!strcmp(a, "--tokens")) tokens = atoi(v);
        else if (!strcmp(a, "--bw")) bw = atof(v);
        else { fprintf(stderr, "attn_bench: unknown option %s (see the file's header)\n", a); return 2; }
    }
    if (nh < 1 || nh > 256 || R < 1 || dr < 0 || D < 1 || L < 1 || B < 1 || reps < 1 || tokens < 1) {
        fprintf(stderr, "attn_bench: sizes must be positive\n");
        return 2;
    }
    int W = R + dr;
    size_t vals = (size_t)L * D * W;
    float *c32 = malloc(vals * 4);
    uint16_t *c16 = malloc(vals * 2);
    float *q = malloc(sizeof(float) * nh * W), *scratch = malloc(sizeof(float) * attn_block_scratch(nh, W, B));
    float *m = malloc(sizeof(float) * nh), *l = malloc(sizeof(float) * nh), *o = malloc(sizeof(float) * nh * R);
    if (!c32 || !c16 || !q || !scratch || !m || !l || !o) { fprintf(stderr, "attn_bench: out of memory\n"); return 1; }
    srand(7);
    for (size_t i = 0; i < vals; i++) { c32[i] = (float)rand() / RAND_MAX - 0.5f; c16[i] = f32_to_bf16(c32[i]); }
    for (int i = 0; i < nh * W; i++) q[i] = (float)rand() / RAND_MAX - 0.5f;
    const cpu_features *f = cpu_get_features();
    struct { const char *name; attn_fn fn; int bf16, on; } v[] = {
        {"f32 rows, f32 FMA (attn_block_avx512)", attn_block_avx512, 0, f->avx512f},
        {"bf16 rows, f32 FMA (attn_block_avx512)", attn_block_avx512, 1, f->avx512f},
        {"bf16 rows, vdpbf16ps (attn_block_avx512bf16)", attn_block_avx512bf16, 1, f->avx512_bf16},
    };
    double flop = 2.0 * nh * (W + R) * (double)D * L;
    printf("attn_bench: nh %d R %d dr %d, depth %d x %d layers, blocks of %d, %d reps x %d tokens, bw %.1f GB/s\n", nh, R,
           dr, D, L, B, reps, tokens, bw);
    printf("%-46s %10s %9s %8s %8s\n", "kernel", "ms/token", "GFLOP/s", "GB/s", "% of bw");
    double *t = malloc(sizeof(double) * reps);
    for (int k = 0; k < 3; k++) {
        if (!v[k].on) { printf("%-46s (not on this CPU)\n", v[k].name); continue; }
        size_t vb = v[k].bf16 ? 2 : 4;
        for (int r = -1; r < reps; r++) {
            double t0 = now_s();
            for (int tk = 0; tk < tokens; tk++)
                for (int layer = 0; layer < L; layer++)
                    for (int j0 = 0; j0 < D; j0 += B) {
                        int n = D - j0 < B ? D - j0 : B;
                        const char *rows = (v[k].bf16 ? (const char *)c16 : (const char *)c32) + ((size_t)layer * D + j0) * W * vb;
                        v[k].fn(q, nh, W, R, rows, v[k].bf16, (size_t)W, n, 0.1f, scratch, m, l, o);
                    }
            if (r >= 0) t[r] = (now_s() - t0) / tokens;
        }
        qsort(t, reps, sizeof *t, cmp_double);
        double s = t[reps / 2], gbs = (double)vals * vb / s * 1e-9;
        printf("%-46s %10.3f %9.1f %8.1f %7.0f%%\n", v[k].name, s * 1e3, flop / s * 1e-9, gbs, 100 * gbs / bw);
    }
    free(t); free(c32); free(c16); free(q); free(scratch); free(m); free(l); free(o);
    return 0;
}
