/* kernels_bench.c - micro-benchmark of the matvec / matmul kernels and the
 * thread pool (make bench-kernels; not part of the moe binary or the tests).
 *
 * Legend
 *   cold     decode-like: the weights rotate through enough copies (>= 256 MiB
 *            in all) that every call streams its matrix from DRAM, not L3.
 *   hot      the same copy every call (L2/L3-resident when it fits): the
 *            compute ceiling of the kernel.
 *   GB/s     weight bytes streamed / time; "of peak" divides by the machine's
 *            measured bandwidth (--bw1, --bw2: default 32.9 / 51.9 GB/s).
 *   matmul   GFLOP/s = 2 rows cols n / time.
 *   Every number is the median over --reps samples (default 9); a sample times
 *   enough calls to last >= 20 ms.
 *
 *   --cpu-clock  time 1-thread cases with the thread's CPU time instead of the
 *            wall clock (on a busy shared machine: excludes preemption).
 *
 *   --huge   the weight copies in 2 MiB-aligned memory advised MADV_HUGEPAGE (as the engine's
 *            converted weights, engine/io/weights.c); default: 4 KiB pages (malloc).
 *   plain read beside: every cold matvec sample follows a plain read of 128 MiB on the same
 *            threads; the "% of the plain read" column is the median of the per-sample ratios
 *            (the machine is shared: the bandwidth moves between samples).
 *
 *   --types  only these weight types (type-table names: f32,bf16,q8,f16,q8_0,q4_0,q4_K,q5_K,q6_K).
 *
 * Usage: kernels_bench [--quick] [--reps N] [--bw1 GBs] [--bw2 GBs] [--scalar] [--cpu-clock] [--huge] [--types LIST]
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>


#include "blas.h"
#include "kernels.h"
#include "threadpool.h"

/* ---------------------------------------------------------------- helpers */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The 1-minute load average (the machine is shared: numbers mean little when it exceeds the CPU count). */
static double loadavg(void) {
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) { if (fscanf(f, "%lf", &l) != 1) l = -1; fclose(f); }
    return l;
}

/* CPU time of the calling thread: immune to preemption (not to memory traffic of
 * other processes); meaningful for one thread, where all work runs on the caller. */
static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static int use_cpu_clock;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t rng = 88172645463325252ull;
static float frand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static const char *dt_name(mat_dtype dt) { return mat_type_of(dt)->name; }

/* --types: the dtypes to run (names from the type table, comma-separated; default all). */
static int type_on[MAT_N_TYPES];
static int parse_types(const char *list) {
    for (int i = 0; i < MAT_N_TYPES; i++) type_on[i] = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int found = 0;
        for (int i = 0; i < MAT_N_TYPES; i++)
            if (!strcmp(tok, mat_type_of((mat_dtype)i)->name)) type_on[i] = found = 1;
        if (!found) { fprintf(stderr, "--types: unknown type '%s'\n", tok); return 0; }
    }
    return 1;
}

/* n_copies matrices of one dtype with random weights (copies share values). */
typedef struct {
    mat *m;
    int n_copies;
    void *buf;
} mat_set;

static int use_huge;
static mat_set make_set(mat_dtype dt, int rows, int cols, size_t min_total) {
    if (dt == MAT_Q8P) {   /* moe's Q8, then packed in 16-row panels as the loader does */
        mat_set s = make_set(MAT_Q8, rows, cols, min_total);
        for (int k = 0; k < s.n_copies; k++) q8p_pack(&s.m[k]);
        return s;
    }
    mat one = {dt, rows, cols, NULL};
    size_t bytes = mat_bytes(&one);
    int copies = (int)((min_total + bytes - 1) / bytes);
    if (copies < 1) copies = 1;
    mat_set s = {calloc((size_t)copies, sizeof(mat)), copies, NULL};
    size_t total = use_huge ? (bytes * copies + (2u << 20) - 1) / (2u << 20) * (2u << 20) : (bytes * copies + 63) / 64 * 64;
    char *buf = aligned_alloc(use_huge ? 2u << 20 : 64, total);
    if (use_huge) madvise(buf, total, MADV_HUGEPAGE);
    float *row = malloc(sizeof(float) * cols);
    const mat_type *ty = mat_type_of(dt);
    size_t rb = mat_row_bytes(dt, cols);
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) row[c] = frand();
        char *dst = buf + (size_t)r * rb;
        if (ty->from_f32) ty->from_f32(row, dst, cols);
        else if (dt == MAT_Q5_0) {   /* no quantizer: random bits, small scales */
            for (size_t i = 0; i < rb; i++) dst[i] = (char)(frand() * 127);
            for (int b = 0; b < cols / QK4_0; b++) ((block_q5_0 *)dst)[b].d = f16_from_f32(1.0f / 64);
        } else if (dt == MAT_Q6_K || dt == MAT_Q5_K) {   /* no quantizer: random bits, scales near [-1, 1] */
            for (size_t i = 0; i < rb; i++) dst[i] = (char)(frand() * 127);
            for (int b = 0; b < cols / QK_K; b++) {
                if (dt == MAT_Q6_K) ((block_q6_K *)dst)[b].d = f16_from_f32(1.0f / 4000);
                else { ((block_q5_K *)dst)[b].d = f16_from_f32(1.0f / 1000); ((block_q5_K *)dst)[b].dmin = f16_from_f32(1.0f / 2000); }
            }
        }
    }
    for (int k = 1; k < copies; k++) memcpy(buf + k * bytes, buf, bytes);
    for (int k = 0; k < copies; k++) s.m[k] = (mat){dt, rows, cols, buf + k * bytes};
    s.buf = buf;
    free(row);
    return s;
}
static void free_set(mat_set *s) { free(s->m); free(s->buf); }

/* ---------------------------------------------------------------- timing */

#define READ_BESIDE_BYTES ((size_t)128 << 20)

typedef struct {
    threadpool *pool;
    mat_set *set;
    int hot;
    int n;            /* matmul batch; 0 = matvec */
    const float *x;
    float *y;
} bench_case;

static void run_once(bench_case *b, int i) {
    const mat *W = &b->set->m[b->hot ? 0 : i % b->set->n_copies];
    if (b->n == 0) matvec_parallel(b->pool, W, b->x, b->y);
    else matmul_parallel(b->pool, W, b->x, b->n, b->y, W->rows);
}

/* The plain read measured beside each sample (read_beside_*: set up in main). */
static double read_beside_s(threadpool *p);
static double beside_ratio;    /* last time_case: median over samples of (plain-read GB/s) / (case GB/s) */
static int beside_on;          /* time_case measures a plain read before every sample */

/* Median seconds per call (thread CPU time when use_cpu_clock and one thread). With
 * beside_on, a plain read of READ_BESIDE_BYTES runs before every sample and beside_ratio
 * gets the median of (sample's time per byte) / (that read's time per byte). */
static double time_case(bench_case *b, int reps) {
    int calls = 1, i = 0;
    double (*clk)(void) = use_cpu_clock && threadpool_threads(b->pool) == 1 ? thread_cpu_s : now_s;
    for (;;) {                                 /* calibrate: a sample lasts >= 20 ms */
        double t0 = clk();
        for (int k = 0; k < calls; k++) run_once(b, i++);
        double t = clk() - t0;
        if (t >= 0.02 || calls >= (1 << 20)) break;
        calls *= 2;
    }
    double v[64], q[64];
    if (reps > 64) reps = 64;
    for (int r = 0; r < reps; r++) {
        double rd = beside_on ? read_beside_s(b->pool) : 0;
        double t0 = clk();
        for (int k = 0; k < calls; k++) run_once(b, i++);
        v[r] = (clk() - t0) / calls;
        if (beside_on) q[r] = (double)mat_bytes(&b->set->m[0]) / v[r] / ((double)READ_BESIDE_BYTES / rd);
    }
    if (beside_on) beside_ratio = median(q, reps);
    return median(v, reps);
}

/* ---------------------------------------------------------------- read-bandwidth baseline */

typedef struct {
    const float *buf;
    size_t n;           /* floats */
    float sink[64];
} read_job;

/* Sums this share's part of buf (8 independent accumulators): a plain stream. */
static void read_share(void *arg, int id, int nt) {
    read_job *j = arg;
    size_t a = j->n * id / nt / 64 * 64, b = j->n * (id + 1) / nt / 64 * 64;
    float acc[64] = {0};
    for (size_t i = a; i < b; i += 64)
        for (int k = 0; k < 64; k++) acc[k] += j->buf[i + k];
    float s = 0;
    for (int k = 0; k < 64; k++) s += acc[k];
    j->sink[id] = s;
}

/* GB/s of a plain sequential read of 256 MiB, right now (the machine is shared). */
static double read_bandwidth(threadpool *p, int reps) {
    size_t n = (size_t)64 << 20;
    float *buf = aligned_alloc(64, n * sizeof(float));
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 7);
    read_job j = {buf, n, {0}};
    double v[64], (*clk)(void) = use_cpu_clock && threadpool_threads(p) == 1 ? thread_cpu_s : now_s;
    for (int r = 0; r < reps; r++) {
        double t0 = clk();
        threadpool_run(p, read_share, &j);
        v[r] = clk() - t0;
    }
    free(buf);
    return (double)n * sizeof(float) / median(v, reps) / 1e9;
}

/* One plain read of a 128 MiB buffer on p (allocated once): seconds. */
static read_job beside_job;
static double read_beside_s(threadpool *p) {
    double (*clk)(void) = use_cpu_clock && threadpool_threads(p) == 1 ? thread_cpu_s : now_s;
    if (!beside_job.buf) {
        float *buf = aligned_alloc(64, READ_BESIDE_BYTES);
        for (size_t i = 0; i < READ_BESIDE_BYTES / sizeof(float); i++) buf[i] = (float)(i & 7);
        beside_job.buf = buf;
        beside_job.n = READ_BESIDE_BYTES / sizeof(float);
    }
    double t0 = clk();
    threadpool_run(p, read_share, &beside_job);
    return clk() - t0;
}

static void noop(void *arg, int id, int n) { (void)arg; (void)id; (void)n; }

/* Each share busy-waits *(double *)arg seconds: with both threads awake the
 * run takes that long plus the hand-off cost; done serially, twice as long. */
typedef struct {
    double seconds;
    pthread_t ran_on[2];
} busy_job;

static void busy(void *arg, int id, int n) {
    (void)n;
    busy_job *j = arg;
    j->ran_on[id] = pthread_self();
    double t0 = now_s();
    while (now_s() - t0 < j->seconds) {}
}

/* ---------------------------------------------------------------- accuracy of low precision */

/* Relative RMS error ||y - y64|| / ||y64|| of matvec_rows for W (dtype dt) with
 * f32 and with low-precision activations, against a double-precision dot. */
static void accuracy(mat_dtype dt) {
    int rows = 512, cols = 2048;
    mat_set s = make_set(dt, rows, cols, 0);
    float *x = malloc(sizeof(float) * cols), *y = malloc(sizeof(float) * rows);
    for (int c = 0; c < cols; c++) x[c] = frand() * (c % 97 == 0 ? 8.0f : 1.0f);  /* a few outliers */
    double e_f32 = 0, e_low = 0, norm = 0;
    for (int mode = 0; mode < 2; mode++) {
        cpu_set_low_precision(mode);
        matvec_rows(&s.m[0], x, y, 0, rows);
        for (int r = 0; r < rows; r++) {
            double ref = 0;
            for (int c = 0; c < cols; c++) ref += (double)mat_get(&s.m[0], r, c) * x[c];
            double d = y[r] - ref;
            if (mode) e_low += d * d;
            else { e_f32 += d * d; norm += ref * ref; }
        }
    }
    cpu_set_low_precision(0);
    if (mat_is_kquant(dt))
        printf("  %-5s 512x2048: activations quantized to q8_K (what matvec_rows does) %.2e\n", dt_name(dt), sqrt(e_f32 / norm));
    else
        printf("  %-5s 512x2048: f32 activations %.2e, low-precision activations %.2e\n", dt_name(dt),
               sqrt(e_f32 / norm), sqrt(e_low / norm));
    free(x); free(y); free_set(&s);
}

/* Relative RMS error that storing W in format dt adds: of the weights themselves and of y = W x
 * (double dots, so only the format counts), W and x bell-shaped (sum of three uniforms, a
 * scale per row), 512 x 2048. Types without a quantizer are skipped. */
static void format_error(mat_dtype dt) {
    const mat_type *ty = mat_type_of(dt);
    if (!ty->from_f32) return;
    int rows = 512, cols = 2048;
    float *w = malloc(sizeof(float) * cols), *wq = malloc(sizeof(float) * cols), *x = malloc(sizeof(float) * cols);
    void *blk = malloc(mat_row_bytes(dt, cols));
    for (int c = 0; c < cols; c++) x[c] = frand() + frand() + frand();
    double ew = 0, nw = 0, ey = 0, ny = 0;
    for (int r = 0; r < rows; r++) {
        float sc = 0.5f + (float)(r % 5);
        for (int c = 0; c < cols; c++) w[c] = (frand() + frand() + frand()) * sc;
        ty->from_f32(w, blk, cols);
        ty->to_f32(blk, wq, cols);
        double y = 0, yq = 0;
        for (int c = 0; c < cols; c++) {
            ew += ((double)wq[c] - w[c]) * ((double)wq[c] - w[c]);
            nw += (double)w[c] * w[c];
            y += (double)w[c] * x[c];
            yq += (double)wq[c] * x[c];
        }
        ey += (yq - y) * (yq - y);
        ny += y * y;
    }
    printf("  %-5s %5.2f bits/weight: weights %.2e, y = W x %.2e\n", ty->name, 8.0 * ty->block_bytes / ty->block_elems,
           sqrt(ew / nw), sqrt(ey / ny));
    free(w); free(wq); free(x); free(blk);
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv) {
    int reps = 9, quick = 0;
    for (int i = 0; i < MAT_N_TYPES; i++) type_on[i] = 1;
    double bw[3] = {0, 32.9, 51.9};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--scalar")) cpu_force_scalar(1);
        else if (!strcmp(argv[i], "--cpu-clock")) use_cpu_clock = 1;
        else if (!strcmp(argv[i], "--huge")) use_huge = 1;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--bw1") && i + 1 < argc) bw[1] = atof(argv[++i]);
        else if (!strcmp(argv[i], "--bw2") && i + 1 < argc) bw[2] = atof(argv[++i]);
        else if (!strcmp(argv[i], "--types") && i + 1 < argc) { if (!parse_types(argv[++i])) return 2; }
        else { fprintf(stderr, "usage: %s [--quick] [--reps N] [--bw1 GBs] [--bw2 GBs] [--scalar] [--cpu-clock] [--huge] [--types f32,q4_K,...]\n", argv[0]); return 2; }
    }
    if (quick) reps = 5;
    blas_init();
    threadpool *pools[3] = {NULL, threadpool_create(1), threadpool_create(2)};
    if (!pools[1] || !pools[2]) { fprintf(stderr, "threadpool_create failed\n"); return 1; }
    printf("kernels: %s, default threads %d, medians of %d samples, load average %.2f, 1-thread clock: %s, weights in %s pages\n\n",
           cpu_kernel_name(), threadpool_default_threads(), reps, loadavg(), use_cpu_clock ? "thread CPU time" : "wall",
           use_huge ? "2 MiB (MADV_HUGEPAGE)" : "4 KiB");

    /* thread pool round trip */
    for (int nt = 1; nt <= 2; nt++) {
        double v[64];
        for (int r = 0; r < reps; r++) {
            int iters = 20000;
            double t0 = now_s();
            for (int k = 0; k < iters; k++) threadpool_run(pools[nt], noop, NULL);
            v[r] = (now_s() - t0) / iters;
        }
        printf("threadpool_run, empty shares, %d thread%s: %.3f us per run\n", nt, nt > 1 ? "s" : "", median(v, reps) * 1e6);
    }
    {   /* hand-off: 2 shares of 5 us each on 2 threads; overhead = run time - 5 us
         * over the runs where the worker took a share (median: robust to the odd
         * preemption). On a busy machine the caller often runs both shares. */
        int runs = 5000, par = 0;
        double *v = malloc(sizeof(double) * runs);
        busy_job j = {5e-6, {0, 0}};
        pthread_t me = pthread_self();
        for (int k = 0; k < runs; k++) {
            double t0 = now_s();
            threadpool_run(pools[2], busy, &j);
            double t = now_s() - t0 - j.seconds;
            if (!pthread_equal(j.ran_on[0], me) || !pthread_equal(j.ran_on[1], me)) v[par++] = t;
        }
        if (par) {
            double med = median(v, par);
            printf("threadpool_run round trip (2 threads, 2 x 5 us shares): median %.2f us, p90 %.2f us over 5 us "
                   "(worker took a share in %.0f%% of runs)\n", med * 1e6, v[par * 9 / 10] * 1e6, 100.0 * par / runs);
        } else {
            printf("threadpool_run round trip: the worker never took a share (machine busy)\n");
        }
        free(v);
    }

    static const int shapes[][2] = {{1024, 1024}, {2816, 1024}, {32000, 1024}, {256, 1024}, {1024, 256}};
    int n_shapes = quick ? 2 : 5;
    size_t cold_total = (size_t)256 << 20;
    int maxc = 32000 * 1024;
    float *x = malloc(sizeof(float) * 64 * 2816), *y = malloc(sizeof(float) * (size_t)64 * 32000);
    for (int i = 0; i < 64 * 2816; i++) x[i] = frand();
    (void)maxc;

    double rb1 = read_bandwidth(pools[1], reps), rb2 = read_bandwidth(pools[2], reps);
    printf("\nplain sequential read of 256 MiB right now: %.1f GB/s (1 thread), %.1f GB/s (2 threads)\n", rb1, rb2);
    printf("\nmatvec (decode): GB/s of weights streamed (%% of the nominal %.1f / %.1f GB/s, %% of a plain read measured\n"
           "beside it: 128 MiB read before every sample, the median over samples of the ratio)\n", bw[1], bw[2]);
    printf("  %-12s %-10s %24s %24s %10s %10s\n", "shape", "dtype", "cold 1 thread", "cold 2 threads", "hot 1 thr", "hot 2 thr");
    for (int si = 0; si < n_shapes; si++)
        for (int variant = 0; variant < MAT_N_TYPES + 2; variant++) {
            /* variants: every type, then bf16 and q8 with low-precision activations */
            mat_dtype dt = variant < MAT_N_TYPES ? (mat_dtype)variant : variant == MAT_N_TYPES ? MAT_BF16 : MAT_Q8;
            int low = variant >= MAT_N_TYPES;
            int rows = shapes[si][0], cols = shapes[si][1];
            if (!type_on[dt] || (low && quick)) continue;
            mat_set s = make_set(dt, rows, cols, cold_total);
            cpu_set_low_precision(low);
            double gb = (double)mat_bytes(&s.m[0]) / 1e9, g[3][2], beside[3];
            for (int hot = 0; hot < 2; hot++)
                for (int nt = 1; nt <= 2; nt++) {
                    bench_case b = {pools[nt], &s, hot, 0, x, y};
                    beside_on = !hot;
                    g[nt][hot] = gb / time_case(&b, reps);
                    beside_on = 0;
                    if (!hot) beside[nt] = beside_ratio;
                }
            cpu_set_low_precision(0);
            char shape[32], dname[16];
            snprintf(shape, sizeof shape, "%dx%d", rows, cols);
            snprintf(dname, sizeof dname, "%s%s", dt_name(dt), low ? (dt == MAT_Q8 ? "xq8" : "xbf16") : "");
            printf("  %-12s %-10s %8.1f (%3.0f%%, %3.0f%%) %10.1f (%3.0f%%, %3.0f%%) %10.1f %10.1f\n", shape, dname,
                   g[1][0], 100 * g[1][0] / bw[1], 100 * beside[1], g[2][0], 100 * g[2][0] / bw[2],
                   100 * beside[2], g[1][1], g[2][1]);
            free_set(&s);
        }

    /* OpenBLAS (blas.c) sgemv, one thread, for comparison (f32, cold) */
    for (int si = 0; si < n_shapes; si++) {
        int rows = shapes[si][0], cols = shapes[si][1];
        mat_set s = make_set(MAT_F32, rows, cols, cold_total);
        double v[64], (*clk)(void) = use_cpu_clock ? thread_cpu_s : now_s;
        int calls = s.n_copies * 4, i = 0;
        for (int r = 0; r < reps; r++) {
            double t0 = clk();
            for (int k = 0; k < calls; k++, i++)
                blas_sgemm(1, 1, rows, cols, 1.0f, x, cols, s.m[i % s.n_copies].data, cols, 0.0f, y, rows);   /* sgemv as a 1-row sgemm */
            v[r] = (clk() - t0) / calls;
        }
        printf("  %s sgemv (1-row sgemm) %dx%d f32 cold 1 thread: %.1f GB/s\n", blas_name(), rows, cols, (double)mat_bytes(&s.m[0]) / 1e9 / median(v, reps));
        free_set(&s);
    }

    printf("\nmatmul (batch of n tokens): GFLOP/s, weights cold\n");
    static const int ns[] = {2, 8, 16, 64};
    int mm_rows = getenv("KB_MM_ROWS") ? atoi(getenv("KB_MM_ROWS")) : 2048, mm_cols = 1024;   /* KB_MM_ROWS: e.g. 32000, an lm_head */
    printf("  %-8s %-4s %12s %12s\n", "dtype", "n", "1 thread", "2 threads");
    for (int variant = 0; variant < MAT_N_TYPES + 2; variant++) {
        /* every type, then bf16 and q8 with low-precision activations (matmul_lowp_avx512.c) */
        int dt = variant < MAT_N_TYPES ? variant : variant == MAT_N_TYPES ? MAT_BF16 : MAT_Q8, low = variant >= MAT_N_TYPES;
        if (!type_on[dt] || (low && quick)) continue;
        mat_set s = make_set((mat_dtype)dt, mm_rows, mm_cols, cold_total);
        cpu_set_low_precision(low);
        for (int ni = 0; ni < 4; ni++) {
            double f[3];
            for (int nt = 1; nt <= 2; nt++) {
                bench_case b = {pools[nt], &s, 0, ns[ni], x, y};
                f[nt] = 2.0 * mm_rows * mm_cols * ns[ni] / time_case(&b, reps) / 1e9;
            }
            char dname[16];
            snprintf(dname, sizeof dname, "%s%s", dt_name((mat_dtype)dt), low ? (dt == MAT_Q8 ? "xq8" : "xbf16") : "");
            printf("  %-8s %-4d %12.1f %12.1f\n", dname, ns[ni], f[1], f[2]);
        }
        cpu_set_low_precision(0);
        free_set(&s);
    }
    {   /* OpenBLAS sgemm for comparison: Y^T = W X^T, f32, one thread */
        mat_set s = make_set(MAT_F32, mm_rows, mm_cols, cold_total);
        for (int ni = 0; ni < 4; ni++) {
            int n = ns[ni], i = 0, calls = s.n_copies * 2;
            double v[64], (*clk)(void) = use_cpu_clock ? thread_cpu_s : now_s;
            for (int r = 0; r < reps; r++) {
                double t0 = clk();
                for (int k = 0; k < calls; k++, i++)
                    blas_sgemm(1, n, mm_rows, mm_cols, 1.0f, x, mm_cols, s.m[i % s.n_copies].data, mm_cols, 0.0f, y, mm_rows);
                v[r] = (clk() - t0) / calls;
            }
            printf("  %s sgemm f32 n=%-3d 1 thread: %.1f GFLOP/s\n", blas_name(), n, 2.0 * mm_rows * mm_cols * n / median(v, reps) / 1e9);
        }
        free_set(&s);
    }

    printf("\nlow-precision activation accuracy (relative RMS error vs double):\n");
    accuracy(MAT_BF16);
    accuracy(MAT_Q8);
    accuracy(MAT_Q4_K);
    accuracy(MAT_Q6_K);
    printf("\nerror of the weight formats (relative RMS vs the f32 weights, double-precision dots):\n");
    for (int dt = 0; dt < MAT_N_TYPES; dt++) format_error((mat_dtype)dt);

    printf("\nload average at the end: %.2f\n", loadavg());
    free(x); free(y);
    threadpool_free(pools[1]);
    threadpool_free(pools[2]);
    return 0;
}
