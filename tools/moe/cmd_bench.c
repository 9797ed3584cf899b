/* cmd_bench.c - `moe bench`: prefill and decode speed in llama-bench's terms,
 * the weight bytes a decoded token reads, and how close that comes to the
 * machine's memory bandwidth.
 *
 * Legend
 *   ppN       prefill: N random tokens in one model_forward call from position 0
 *             (one chunk: batch = N unless --batch), last token's logits only
 *   @ dD      (-d D1,D2,...) the test run after D random tokens already in the cache (llama-bench's
 *             -d): the slot is filled once per depth (untimed, positions [0, D)), then every rep's
 *             ppN runs at positions [D, D+N) and tgN's prompt and steps start at D; the fill is
 *             kept (a pass from p0 drops only what the slot held from p0 on). Depths run one
 *             after another (reps alternate thread counts within a depth); the context is sized
 *             max D + max(N_pp, tg-prompt + N_tg) + 1
 *   KV B/tok  cache bytes one decoded token reads: every main layer's latent row (R + dr floats)
 *             of every position it attends to, counted once per layer (the heads of a layer
 *             share the rows), averaged over the tg steps: (D + tg-prompt + (N+1)/2) positions
 *   tgN       decode: a short random prompt (--tg-prompt, untimed), then N
 *             single-token model_forward calls, each fed the previous argmax;
 *             only the forward calls are timed (argmax = "sampling" is timed
 *             apart and shown by --profile)
 *   prefault  before any run, one byte of every page of the tensors used straight (safetensors and GGUF)
 *             from the mapping is read: no timed run pays for page faults or disk
 *             reads (tensors converted at load are not touched: their pages were
 *             released, st_tensor_release)
 *   rep       one timed run of a test; t/s is mean +- sd over -r reps, after one
 *             warm-up run per test and thread count. Reps alternate thread counts
 *             (rep 1: 1T pp, 1T tg, 2T pp, 2T tg; rep 2: ...) so that noise from
 *             a shared machine hits every configuration alike
 *   bytes/tok weight bytes read per decoded token, from the loaded formats:
 *             attention projections + norms, router, K of E routed experts,
 *             shared expert, dense MLPs, final norm + lm_head, one embedding row
 *             (main model; the MTP head and the KV cache reads are not counted)
 *   on-CPU    tokens / (process CPU seconds / threads): on a machine shared
 *             with other work, what the run would have done had it not waited
 *             for a CPU (the load average is printed beside it)
 *   GB/s      (bytes/tok + KV B/tok) x median tg t/s; "bw%" divides by the memory read bandwidth for
 *             that thread count: measured beside every repetition (--membw with -m),
 *             given (--bw), or the defaults 32.9 GB/s (1 thread) / 51.9 GB/s (2+)
 *   seqs      (--seqs) B sequences, each prefilled with --tg-prompt random tokens, then -n passes
 *             of B tokens, one per sequence, each fed its own argmax (tools/moe/bench_seqs.c)
 *   membw     STREAM-like read: sum of a 1 GiB array (--membw-mib) of u64 (AVX2 adds when the
 *             CPU has them), the threads summing disjoint slices. Alone: median of 9
 *             sweeps on 1 and on all threads. With -m: 3 sweeps on the run's own pool
 *             right before each timed tg repetition, and bw% is the median over the
 *             repetitions of (that repetition's GB/s / the bandwidth measured next to it),
 *             so a neighbour that takes bandwidth for a while moves both alike
 */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include "bench_mtp.h"
#include "bench_seqs.h"
#include "blas.h"
#include "cli.h"
#include "cli_ep.h"
#include "commands.h"
#include "model.h"
#include "threadpool.h"
#include "sampler.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define MAX_THREAD_CONFIGS 8
#define MAX_DEPTHS 4
#define MAX_RUNS (MAX_THREAD_CONFIGS * MAX_DEPTHS)

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe bench -m DIR [options]\n"
            "       moe bench --membw [-t N]\n"
            "\n"
            "Prefill (ppN) and decode (tgN) speed in tokens/s, mean +- sd over reps, with the\n"
            "weight bytes read per decoded token and the bandwidth that achieves.\n"
            "\n"
            "options:\n"
            "  -m, --model DIR     checkpoint directory\n"
            "  -p, --n-prompt N    prefill test length (default 512; 0 = skip)\n"
            "  -n, --n-gen N       decode test length (default 128; 0 = skip)\n"
            "  -r, --repetitions N timed runs per test (default 5), after one warm-up\n"
            "  -t, --threads LIST  thread counts, e.g. 1,2 (default: one per core)\n"
            "  --dtype D           auto | f32 | bf16 | q8 | q4: compute format of the weights (default auto)\n"
            "  --numa M            NUMA placement: off (default) | interleave | partition\n"
            "  --ep, --ep-plan F   expert parallelism under mpirun; prints per rank the time in communication\n"
            "                      and the bytes sent per decoded token and per prefill chunk (docs/ep.md)\n"
            "  --batch N           tokens per forward chunk in prefill (default: the whole prompt)\n"
            "  --tg-prompt N       untimed prompt before the decode test (default 8)\n"
            "  -d, --n-depth LIST  depths, e.g. 0,4096,16384: each test run after that many tokens already in the\n"
            "                      cache (untimed fill; llama-bench -d); the KV bytes a decoded token reads are\n"
            "                      shown beside the weight bytes (default 0)\n"
            "  --membw             measure memory read bandwidth: alone, on 1 and all threads; with -m, beside every\n"
            "                      tg repetition on its thread count (bw %% = median of per-rep fractions)\n"
            "  --membw-mib N       size of the array --membw reads (default 1024)\n"
            "  --bw A[,B]          read bandwidth in GB/s for 1 thread [, 2+ threads] (default 32.9,51.9)\n"
            "  --profile           time per decoded token in each phase of the forward pass\n"
            "  --json              results as JSON on stdout (the table goes to stderr)\n"
            "  --mtp               add the MTP arm: greedy decode with and without self-speculation (-n tokens,\n"
            "                      --tg-prompt prompt tokens, -r reps), acceptance, experts read per step\n"
            "  --mtp-text FILE     take the MTP arm's prompts from FILE (tokenized with DIR's tokenizer)\n"
            "  --draft N           with --mtp: N chained drafts per speculative step (1-4, default 1)\n"
            "  --mtp-cold          the auto arm's reps each start from scratch (default: from what the previous\n"
            "                      rep learned, as a process that generates again)\n"
            "  --draft-dtype D     the MTP module's format: same (default) | bf16 | q8 | q4 (its own head: V x H more)\n"
            "  --seqs B1,B2,...    instead of pp/tg: B independent sequences decoded together, one token of\n"
            "                      each per pass (llama.cpp batched-bench -npl): aggregate and per-sequence\n"
            "                      t/s, distinct experts per layer per pass (-n passes after --tg-prompt tokens)\n"
            "  --act-lowp          bf16 / int8 activations in every product (kernels/README.md)\n"
            "  --kv-dtype T        latent cache values: f32 (default) | bf16 (half the KV bytes per token)\n"
            "  --seed S            random tokens (default 42)\n"
            "  -h, --help\n");
}

/* ------------------------------------------------------------------ statistics */

static double mean_of(const double *x, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    return n ? s / n : 0;
}

static double sd_of(const double *x, int n) {
    if (n < 2) return 0;
    double m = mean_of(x, n), s = 0;
    for (int i = 0; i < n; i++) s += (x[i] - m) * (x[i] - m);
    return sqrt(s / (n - 1));
}

/* ------------------------------------------------------------------ memory bandwidth */

typedef struct {
    const uint64_t *a;
    size_t n;              /* u64 elements */
    uint64_t sums[64];     /* per thread, so the reads cannot be optimized away */
} membw_job;

#if defined(__x86_64__)
__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint64_t *a, size_t n) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_add_epi64(s0, _mm256_load_si256((const __m256i *)(a + i)));
        s1 = _mm256_add_epi64(s1, _mm256_load_si256((const __m256i *)(a + i + 4)));
        s2 = _mm256_add_epi64(s2, _mm256_load_si256((const __m256i *)(a + i + 8)));
        s3 = _mm256_add_epi64(s3, _mm256_load_si256((const __m256i *)(a + i + 12)));
    }
    s0 = _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, s0);
    uint64_t s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    for (; i < n; i++) s += a[i];
    return s;
}
#endif

static uint64_t sum_scalar(const uint64_t *a, size_t n) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) { s0 += a[i]; s1 += a[i + 1]; s2 += a[i + 2]; s3 += a[i + 3]; }
    for (; i < n; i++) s0 += a[i];
    return s0 + s1 + s2 + s3;
}

static void membw_worker(void *arg, int id, int nth) {
    membw_job *j = arg;
    size_t lo = j->n * (size_t)id / (size_t)nth / 8 * 8, hi = j->n * (size_t)(id + 1) / (size_t)nth / 8 * 8;
    if (id == nth - 1) hi = j->n;
#if defined(__x86_64__)
    j->sums[id & 63] += cpu_get_features()->avx2_fma ? sum_avx2(j->a + lo, hi - lo) : sum_scalar(j->a + lo, hi - lo);
#else
    j->sums[id & 63] += sum_scalar(j->a + lo, hi - lo);
#endif
}

static void membw_touch(void *arg, int id, int nth) {
    membw_job *j = arg;
    uint64_t *a = (uint64_t *)j->a;
    size_t lo = j->n * (size_t)id / (size_t)nth, hi = j->n * (size_t)(id + 1) / (size_t)nth;
    for (size_t i = lo; i < hi; i++) a[i] = i;
}

/* The array the read test sums: allocated (2 MB aligned, huge pages asked for) and written once. */
static int membw_init(membw_job *j, size_t bytes) {
    size_t alloc = (bytes + (2u << 20) - 1) / (2u << 20) * (2u << 20);
    uint64_t *a = aligned_alloc(2u << 20, alloc);
    if (!a) return -1;
    madvise(a, alloc, MADV_HUGEPAGE);
    *j = (membw_job){ a, bytes / 8, {0} };
    membw_touch(j, 0, 1);
    return 0;
}

/* Median read bandwidth in GB/s over `reps` sweeps of the array on the pool (NULL: this
 * thread), after one untimed sweep. */
static double membw_sweeps(membw_job *j, threadpool *pool, int reps) {
    double gbs[16];
    if (reps > 16) reps = 16;
    for (int r = -1; r < reps; r++) {      /* r = -1: warm-up */
        double t0 = cli_now();
        if (pool) threadpool_run(pool, membw_worker, j);
        else membw_worker(j, 0, 1);
        double dt = cli_now() - t0;
        if (r >= 0) gbs[r] = j->n * 8.0 / dt / 1e9;
    }
    return cli_median(gbs, reps);
}

/* Median read bandwidth in GB/s over 9 sweeps of a `bytes` array on n_threads. */
static double membw_measure(int n_threads, size_t bytes) {
    membw_job j;
    if (membw_init(&j, bytes)) return 0;
    threadpool *pool = n_threads > 1 ? threadpool_create(n_threads) : NULL;
    double med = membw_sweeps(&j, pool, 9);
    threadpool_free(pool);
    free((void *)j.a);
    return med;
}

/* ------------------------------------------------------------------ model facts */

static size_t mlp_bytes(const mlp_weights *w) { return mat_bytes(&w->gate) + mat_bytes(&w->up) + mat_bytes(&w->down); }

/* Weight bytes read for one decoded token (see the legend). */
static double bytes_per_token(const moe_model *m) {
    const moe_config *c = &m->cfg;
    int H = c->hidden_size;
    double b = (double)mat_bytes(&m->w.embed) / c->vocab_size;      /* one embedding row */
    for (int i = 0; i < c->num_hidden_layers; i++) {
        const layer_weights *lw = &m->w.layers[i];
        b += 4.0 * (2 * H + c->kv_lora_rank + c->q_lora_rank);       /* norms (f32) */
        b += c->q_lora_rank > 0 ? (double)mat_bytes(&lw->q_a) + mat_bytes(&lw->q_b) : (double)mat_bytes(&lw->q);
        b += (double)mat_bytes(&lw->kv_a) + mat_bytes(&lw->o);
        b += lw->k_b.data ? (double)mat_bytes(&lw->k_b) + mat_bytes(&lw->v_b) : (double)mat_bytes(&lw->kv_b);   /* decode's W_UK, W_UV */
        if (!lw->is_moe) { b += mlp_bytes(&lw->dense); continue; }
        b += (double)mat_bytes(&lw->router) + (lw->router_bias ? 4.0 * c->n_routed_experts : 0);
        double experts = 0;
        for (int e = 0; e < c->n_routed_experts; e++) experts += mlp_bytes(&lw->experts[e]);
        b += experts / c->n_routed_experts * m->K;
        if (lw->has_shared) b += mlp_bytes(&lw->shared);
    }
    return b + 4.0 * H + mat_bytes(&m->w.lm_head);
}

/* The decode pass's weight bytes split for --seqs: the routed experts apart (one expert of
 * one MoE layer, their mean), everything else read once per pass. */
static seqs_bytes pass_bytes(const moe_model *m) {
    seqs_bytes sb = { bytes_per_token(m), 0, 0 };
    const moe_config *c = &m->cfg;
    double experts = 0;
    for (int i = 0; i < c->num_hidden_layers; i++) {
        const layer_weights *lw = &m->w.layers[i];
        if (!lw->is_moe) continue;
        sb.n_moe++;
        for (int e = 0; e < c->n_routed_experts; e++) experts += mlp_bytes(&lw->experts[e]);
    }
    if (sb.n_moe) sb.per_expert = experts / ((double)sb.n_moe * c->n_routed_experts);
    sb.fixed -= sb.per_expert * sb.n_moe * m->K;
    return sb;
}

/* Parameters in the checkpoint (FP8 scales not counted). */
static double param_count(const moe_model *m) {
    double n = 0;
    for (int i = 0; m->w.is_gguf && i < m->w.gguf.n_tensors; i++) {   /* a GGUF file: ne's product */
        double e = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) e *= (double)m->w.gguf.tensors[i].ne[d];
        n += e;
    }
    for (int i = 0; i < m->w.files.n_tensors; i++) {
        const st_tensor *t = &m->w.files.tensors[i];
        size_t l = strlen(t->name);
        if (l > 10 && !strcmp(t->name + l - 10, "_scale_inv")) continue;
        n += (double)t->numel;
    }
    return n;
}

/* Reads one byte of every page of the tensors used from the mapping, so that no timed
 * run pays for page faults or disk reads. Returns bytes touched. */
static double prefault(const moe_model *m) {
    volatile unsigned char sink = 0;
    double bytes = 0;
    const st_set *files = &m->w.files;
    for (int i = 0; i < files->n_tensors; i++) {
        const st_tensor *t = &files->tensors[i];
        if (t->released || !files->files[t->file].map) continue;    /* converted at load: never read */
        const unsigned char *p = t->data;
        for (size_t k = 0; k < t->nbytes; k += 4096) sink += p[k];
        if (t->nbytes) sink += p[t->nbytes - 1];
        bytes += (double)t->nbytes;
    }
    for (int i = 0; m->w.is_gguf && m->w.gguf.map && i < m->w.gguf.n_tensors; i++) {   /* GGUF: read as mapped */
        const gguf_tensor *t = &m->w.gguf.tensors[i];
        const unsigned char *p = t->data;
        for (size_t k = 0; k < t->n_bytes; k += 4096) sink += p[k];
        if (t->n_bytes) sink += p[t->n_bytes - 1];
        bytes += (double)t->n_bytes;
    }
    (void)sink;
    return bytes;
}

/* The 1, 5 and 15 minute load averages, "?" if unknown. */
static void loadavg(char *buf, size_t n) {
    snprintf(buf, n, "?");
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f) return;
    double a, b, c;
    if (fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3) snprintf(buf, n, "%.2f %.2f %.2f", a, b, c);
    fclose(f);
}

static double peak_rss_bytes(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss * 1024.0;
}

static const char *mat_fmt_name(const moe_model *m) {
    /* the format of the bulk of the weights: that of an expert (or dense) projection */
    const layer_weights *lw = &m->w.layers[m->cfg.num_hidden_layers - 1];
    const mat *w = lw->is_moe ? &lw->experts[0].gate : &lw->dense.gate;
    /* Q8 in 16-row panels is q8's values in another order: the format is still q8 */
    return mat_type_of(w->dtype == MAT_Q8P ? MAT_Q8 : w->dtype)->name;
}

static void fmt_size(char *buf, size_t n, double bytes) {
    if (bytes >= 1024.0 * 1024 * 1024) snprintf(buf, n, "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
    else snprintf(buf, n, "%.2f MiB", bytes / (1024.0 * 1024));
}

static void fmt_count(char *buf, size_t n, double v) {
    if (v >= 1e9) snprintf(buf, n, "%.2f B", v / 1e9);
    else if (v >= 1e6) snprintf(buf, n, "%.2f M", v / 1e6);
    else snprintf(buf, n, "%.0f", v);
}

/* ------------------------------------------------------------------ runs */

typedef struct {
    int threads;
    int depth;                  /* tokens in the cache before the test (-d) */
    double kv_bytes_tok;        /* KV bytes read per decoded token at this depth (legend) */
    int owns_pool;              /* pool made for this run (freed with it) */
    threadpool *pool;           /* NULL for 1 thread */
    double *pp, *tg;            /* t/s per rep */
    double *pp_cpu, *tg_cpu;    /* on-CPU estimate per rep: tokens / (process CPU seconds / threads) */
    model_profile prof_pp, prof_tg;
    double argmax_ns;           /* accumulated over timed tg tokens */
    long pp_tokens, tg_tokens;  /* profiled tokens */
    double *bw;                 /* --membw with -m: read bandwidth (GB/s) measured before each rep's tg; else NULL */
} config_run;

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void random_tokens(int *t, int n, int V, uint64_t *seed) {
    for (int i = 0; i < n; i++) t[i] = (int)(rng_next(seed) % (uint64_t)V);
}

/* One prefill run: returns t/s, or -1 on error. */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* --ep: the exchange's totals over the timed decode steps and prefill runs (cli_ep_stats) */
static struct { double s; uint64_t bytes, n; } ep_tg, ep_pp;
static void ep_add(int sign, double *s, uint64_t *bytes, uint64_t *n) {
    double cs;
    uint64_t b, k;
    cli_ep_stats(&cs, &b, &k);
    *s += sign * cs;
    *bytes += (uint64_t)((int64_t)sign * (int64_t)b);
    *n += (uint64_t)((int64_t)sign * (int64_t)k);
}

static double run_pp(moe_session *e, int depth, int n_prompt, float *logits, uint64_t *seed, model_profile *prof, double *cpu_s,
                     moe_error *err) {
    const moe_model *m = &e->m;
    int *toks = malloc(sizeof(int) * (size_t)n_prompt);
    if (!toks) { moe_error_set(err, "out of memory"); return -1; }
    random_tokens(toks, n_prompt, m->cfg.vocab_size, seed);
    e->c.prof = prof;
    ep_add(-1, &ep_pp.s, &ep_pp.bytes, &ep_pp.n);
    double t0 = cli_now(), c0 = cpu_now();
    int rc = model_forward_seq(m, &e->c, &e->kv, 0, toks, n_prompt, depth, logits, 0, NULL, err);
    double dt = cli_now() - t0;
    ep_add(1, &ep_pp.s, &ep_pp.bytes, &ep_pp.n);
    *cpu_s = cpu_now() - c0;
    e->c.prof = NULL;
    free(toks);
    return rc ? -1 : n_prompt / dt;
}

/* One decode run: untimed prompt, then n_gen timed single-token steps. */
static double run_tg(moe_session *e, int depth, int n_prompt, int n_gen, float *logits, uint64_t *seed, model_profile *prof,
                     double *argmax_ns, double *cpu_s, moe_error *err) {
    const moe_model *m = &e->m;
    int toks[256];
    if (n_prompt > 256) n_prompt = 256;
    random_tokens(toks, n_prompt, m->cfg.vocab_size, seed);
    if (model_forward_seq(m, &e->c, &e->kv, 0, toks, n_prompt, depth, logits, 0, NULL, err)) return -1;
    int next = sampler_argmax(logits, m->cfg.vocab_size);
    double busy = 0;
    *cpu_s = 0;
    ep_add(-1, &ep_tg.s, &ep_tg.bytes, &ep_tg.n);
    for (int i = 0; i < n_gen; i++) {
        e->c.prof = prof;
        double t0 = cli_now(), c0 = cpu_now();
        int rc = model_forward_seq(m, &e->c, &e->kv, 0, &next, 1, depth + n_prompt + i, logits, 0, NULL, err);
        double t1 = cli_now();
        *cpu_s += cpu_now() - c0;
        e->c.prof = NULL;
        if (rc) return -1;
        busy += t1 - t0;
        /* the argmax alone: its clock starting at t1 also counted the CPU-time read above
         * (CLOCK_PROCESS_CPUTIME_ID is a system call: 4 us on this Zen 5 guest, far more on
         * some hypervisors), which is how it once showed 360 us per token on the toy model */
        double t2 = cli_now();
        next = sampler_argmax(logits, m->cfg.vocab_size);
        if (argmax_ns) *argmax_ns += (cli_now() - t2) * 1e9;
    }
    ep_add(1, &ep_tg.s, &ep_tg.bytes, &ep_tg.n);
    return n_gen / busy;
}

/* ------------------------------------------------------------------ output */

typedef struct {
    const char *dir;
    char model[160], size[32], params[32], backend[64];
    double bytes_tok, bw[2];
    const char *bw_source;
} report;

static double bw_for(const report *r, int threads) { return threads > 1 ? r->bw[1] : r->bw[0]; }

/* Decode bandwidth of a run: GB/s at the median t/s, and that as a fraction of the memory
 * bandwidth (the median of the per-rep fractions when bandwidth was measured beside each
 * rep; else against the report's figure for the thread count). */
static void tg_bandwidth(const report *rp, const config_run *c, int reps, double *gbs, double *frac) {
    double bytes = rp->bytes_tok + c->kv_bytes_tok;
    *gbs = cli_median(c->tg, reps) * bytes / 1e9;
    if (!c->bw) { *frac = *gbs / bw_for(rp, c->threads); return; }
    double f[reps];
    for (int r = 0; r < reps; r++) f[r] = c->tg[r] * bytes / 1e9 / c->bw[r];
    *frac = cli_median(f, reps);
}

/* A markdown table with columns padded to their widest cell; numeric columns right-aligned. */
#define TAB_COLS 12
#define TAB_ROWS 2 * MAX_RUNS + 1
typedef struct { char cell[TAB_ROWS][TAB_COLS][64]; int rows; } table;

static void table_print(FILE *f, const table *t, const int *right) {
    int w[TAB_COLS] = {0};
    for (int r = 0; r < t->rows; r++)
        for (int c = 0; c < TAB_COLS; c++) {
            int l = (int)strlen(t->cell[r][c]);
            if (strstr(t->cell[r][c], "±")) l -= 1;      /* two bytes, one column */
            if (l > w[c]) w[c] = l;
        }
    for (int r = 0; r < t->rows; r++) {
        for (int c = 0; c < TAB_COLS; c++) {
            int pad = w[c] - (int)strlen(t->cell[r][c]) + (strstr(t->cell[r][c], "±") ? 1 : 0);
            fprintf(f, "| %s%*s%s ", right[c] ? "" : t->cell[r][c], pad, "", right[c] ? t->cell[r][c] : "");
        }
        fprintf(f, "|\n");
        if (r == 0) {
            for (int c = 0; c < TAB_COLS; c++) {
                fprintf(f, "| ");
                for (int k = 0; k < w[c] - (right[c] ? 1 : 0); k++) fputc('-', f);
                fprintf(f, "%s ", right[c] ? ":" : "");
            }
            fprintf(f, "|\n");
        }
    }
}

static void print_table(FILE *f, const report *rp, config_run *runs, int n_runs, int n_prompt, int n_gen, int reps) {
    static const char *head[TAB_COLS] = {"model", "size", "params", "backend", "threads", "test", "t/s", "median",
                                         "on-CPU t/s", "KV MB/tok", "GB/s", "bw %"};
    static const int right[TAB_COLS] = {0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    static table t;
    memset(&t, 0, sizeof t);
    for (int c = 0; c < TAB_COLS; c++) snprintf(t.cell[0][c], 64, "%s", head[c]);
    t.rows = 1;
    for (int k = 0; k < n_runs; k++) {
        config_run *c = &runs[k];
        for (int which = 0; which < 2; which++) {
            int n_tok = which == 0 ? n_prompt : n_gen;
            if (n_tok <= 0) continue;
            double *v = which == 0 ? c->pp : c->tg, mean = mean_of(v, reps);
            double *vc = which == 0 ? c->pp_cpu : c->tg_cpu;
            char (*row)[64] = t.cell[t.rows++];
            snprintf(row[0], 64, "%.63s", rp->model);
            snprintf(row[1], 64, "%s", rp->size);
            snprintf(row[2], 64, "%s", rp->params);
            snprintf(row[3], 64, "%s", rp->backend);
            snprintf(row[4], 64, "%d", c->threads);
            if (c->depth > 0) snprintf(row[5], 64, "%s%d @ d%d", which == 0 ? "pp" : "tg", n_tok, c->depth);
            else snprintf(row[5], 64, "%s%d", which == 0 ? "pp" : "tg", n_tok);
            snprintf(row[6], 64, "%.2f ± %.2f", mean, sd_of(v, reps));
            snprintf(row[7], 64, "%.2f", cli_median(v, reps));
            snprintf(row[8], 64, "%.2f", cli_median(vc, reps));
            if (which == 1) {
                double gbs, frac;
                tg_bandwidth(rp, c, reps, &gbs, &frac);
                snprintf(row[9], 64, "%.3f", c->kv_bytes_tok / 1e6);
                snprintf(row[10], 64, "%.2f", gbs);
                snprintf(row[11], 64, "%.1f", 100 * frac);
            }
        }
    }
    table_print(f, &t, right);
}

static void print_profile(FILE *f, config_run *runs, int n_runs, int n_gen, int n_prompt) {
    for (int which = 0; which < 2; which++) {
        if ((which == 0 && n_gen <= 0) || (which == 1 && n_prompt <= 0)) continue;
        fprintf(f, "\nprofile, %s: wall time per %s token by phase (us, %% of the forward pass)\n",
                which == 0 ? "decode (tg)" : "prefill (pp)", which == 0 ? "decoded" : "prompt");
        fprintf(f, "  %-18s", "phase");
        for (int k = 0; k < n_runs; k++) fprintf(f, "   %3d thread%s   ", runs[k].threads, runs[k].threads > 1 ? "s" : " ");
        fprintf(f, "\n");
        for (int p = 0; p <= N_PHASES; p++) {
            fprintf(f, "  %-18s", p < N_PHASES ? model_phase_name((model_phase)p) : which == 0 ? "sampling (argmax)" : "");
            if (p == N_PHASES && which == 1) { fprintf(f, "\n"); break; }
            for (int k = 0; k < n_runs; k++) {
                config_run *c = &runs[k];
                const model_profile *pr = which == 0 ? &c->prof_tg : &c->prof_pp;
                long ntok = which == 0 ? c->tg_tokens : c->pp_tokens;
                double total = 0;
                for (int q = 0; q < N_PHASES; q++) total += (double)pr->ns[q];
                double v = p < N_PHASES ? (double)pr->ns[p] : c->argmax_ns;
                fprintf(f, "  %9.1f %5.1f%%  ", ntok ? v / ntok / 1e3 : 0, total > 0 ? 100 * v / total : 0);
            }
            fprintf(f, "\n");
        }
        fprintf(f, "  %-18s", "total (forward)");
        for (int k = 0; k < n_runs; k++) {
            config_run *c = &runs[k];
            const model_profile *pr = which == 0 ? &c->prof_tg : &c->prof_pp;
            long ntok = which == 0 ? c->tg_tokens : c->pp_tokens;
            double total = 0;
            for (int q = 0; q < N_PHASES; q++) total += (double)pr->ns[q];
            fprintf(f, "  %9.1f         ", ntok ? total / ntok / 1e3 : 0);
        }
        fprintf(f, "\n");
    }
}

static json_t *profile_json(const model_profile *p, long ntok, double argmax_ns) {
    json_t *o = json_object();
    for (int q = 0; q < N_PHASES; q++)
        json_object_set_new(o, model_phase_name((model_phase)q), json_real(ntok ? p->ns[q] / 1e3 / ntok : 0));
    if (argmax_ns >= 0) json_object_set_new(o, "sampling (argmax)", json_real(ntok ? argmax_ns / 1e3 / ntok : 0));
    return o;
}

/* ------------------------------------------------------------------ command */

int cmd_bench(int argc, char **argv) {
    const char *dir = NULL, *threads_arg = NULL;
    long n_prompt = 512, n_gen = 128, reps = 5, batch = 0, tg_prompt = 8, seed = 42, membw_mib = 1024;
    int json = 0, profile = 0, membw = 0, bw_given = 0, mtp = 0, mtp_cold = 0;
    long draft_len = 1;
    const char *mtp_text = NULL, *seqs_arg = NULL, *depth_arg = NULL;
    mtp_arm mtp_result = {0};
    seqs_arm seqs_result[MAX_THREAD_CONFIGS];
    int seqs_b[SEQS_MAX_CONFIGS], n_seqs = 0, n_seqs_runs = 0;
    memset(seqs_result, 0, sizeof seqs_result);
    double bw[2] = {32.9, 51.9};
    model_options opt = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(dir = cli_value(argc, argv, &i, "bench"))) return 2; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { if (!(threads_arg = cli_value(argc, argv, &i, "bench"))) return 2; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--n-prompt")) {
            if (!(v = cli_value(argc, argv, &i, "bench")) || !cli_int(v, 0, 65536, "bench", a, &n_prompt)) return 2;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-gen")) {
            if (!(v = cli_value(argc, argv, &i, "bench")) || !cli_int(v, 0, 65536, "bench", a, &n_gen)) return 2;
        } else if (!strcmp(a, "-r") || !strcmp(a, "--repetitions")) {
            if (!(v = cli_value(argc, argv, &i, "bench")) || !cli_int(v, 1, 1000, "bench", a, &reps)) return 2;
        } else if (!strcmp(a, "--batch")) {
            if (!(v = cli_value(argc, argv, &i, "bench")) || !cli_int(v, 1, 65536, "bench", a, &batch)) return 2;
        } else if (!strcmp(a, "--tg-prompt")) {
            if (!(v = cli_value(argc, argv, &i, "bench")) || !cli_int(v, 1, 256, "bench", a, &tg_prompt)) return 2;
        } else if (!strcmp(a, "--membw-mib")) {
            if (!(v = cli_value(argc, argv, &i, "bench")) || !cli_int(v, 1, 1 << 20, "bench", a, &membw_mib)) return 2;
            membw = 1;
        } else if (!strcmp(a, "--seed")) {
            if (!(v = cli_value(argc, argv, &i, "bench")) || !cli_int(v, 0, 0x7fffffff, "bench", a, &seed)) return 2;
        } else if (!strcmp(a, "--dtype")) {
            if (!(v = cli_value(argc, argv, &i, "bench"))) return 2;
            int d = weights_dtype_parse(v);
            if (d < 0) { fprintf(stderr, "moe bench: --dtype must be auto, f32, bf16, q8 or q4\n"); return 2; }
            opt.dtype = (weights_dtype)d;
        } else if (!strcmp(a, "--draft-dtype")) {
            if (!(v = cli_value(argc, argv, &i, "bench")) || cli_draft_dtype(v, "bench", &opt.draft_dtype)) return 2;
        } else if (cli_ep_option(argc, argv, &i, "bench")) {
            if (!cli_ep_on()) return 2;   /* --ep-plan without its file: said */
        } else if (!strcmp(a, "--numa")) {
            if (!(v = cli_value(argc, argv, &i, "bench"))) return 2;
            int mode = numa_mode_parse(v);
            if (mode < 0) { fprintf(stderr, "moe bench: --numa must be off, interleave or partition\n"); return 2; }
            opt.numa = (numa_mode)mode;
        } else if (!strcmp(a, "--bw")) {
            if (!(v = cli_value(argc, argv, &i, "bench"))) return 2;
            int k = sscanf(v, "%lf,%lf", &bw[0], &bw[1]);
            if (k < 1 || bw[0] <= 0 || (k == 2 && bw[1] <= 0)) {
                fprintf(stderr, "moe bench: --bw wants GB/s for 1 thread [,2+ threads], e.g. 32.9,51.9\n");
                return 2;
            }
            if (k == 1) bw[1] = bw[0];
            bw_given = 1;
        } else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--profile")) profile = 1;
        else if (!strcmp(a, "--mtp")) mtp = 1;
        else if (!strcmp(a, "--mtp-cold")) mtp = mtp_cold = 1;
        else if (!strcmp(a, "--draft")) {
            if (!(v = cli_value(argc, argv, &i, "bench")) || !cli_int(v, 1, MTP_DRAFT_MAX, "bench", a, &draft_len)) return 2;
            mtp = 1;
        }
        else if (!strcmp(a, "--mtp-text")) { if (!(mtp_text = cli_value(argc, argv, &i, "bench"))) return 2; mtp = 1; }
        else if (!strcmp(a, "--membw")) membw = 1;
        else if (!strcmp(a, "--act-lowp")) cli_act_lowp("bench");
        else if (!strcmp(a, "--mmap")) opt.mmap_in_place = 1;
        else if (!strcmp(a, "--kv-dtype")) {
            if (!(v = cli_value(argc, argv, &i, "bench"))) return 2;
            int d = kv_dtype_parse(v);
            if (d < 0) { fprintf(stderr, "moe bench: --kv-dtype must be f32 or bf16, not '%s'\n", v); return 2; }
            opt.kv_dtype = (kv_dtype)d;
        }
        else if (!strcmp(a, "-d") || !strcmp(a, "--n-depth")) { if (!(depth_arg = cli_value(argc, argv, &i, "bench"))) return 2; }
        else if (!strcmp(a, "--seqs")) { if (!(seqs_arg = cli_value(argc, argv, &i, "bench"))) return 2; }
        else {
            fprintf(stderr, "moe bench: unknown option '%s' (see moe bench --help)\n", a);
            return 2;
        }
    }
    if (!dir && !membw) { fprintf(stderr, "moe bench: -m DIR is required (or --membw alone)\n"); return 2; }
    /* thread counts */
    int threads[MAX_THREAD_CONFIGS], n_cfg = 0;
    if (threads_arg) {
        int *ids = NULL;
        moe_error e = {{0}};
        int n = cli_parse_ids(threads_arg, &ids, &e);
        if (n < 1 || n > MAX_THREAD_CONFIGS) {
            fprintf(stderr, "moe bench: -t wants 1 to %d thread counts like 1,2 (%s)\n", MAX_THREAD_CONFIGS,
                    n < 0 ? e.msg : "got none or too many");
            free(ids);
            return 2;
        }
        for (int k = 0; k < n; k++) {
            if (ids[k] < 1 || ids[k] > 1024) { fprintf(stderr, "moe bench: thread counts must be in [1, 1024]\n"); free(ids); return 2; }
            threads[n_cfg++] = ids[k];
        }
        free(ids);
    } else {
        threads[n_cfg++] = threadpool_default_threads();
    }
    /* depths (-d) */
    int depths[MAX_DEPTHS] = {0}, n_depth = 1, max_depth = 0;
    if (depth_arg) {
        n_depth = 0;
        int *ids = NULL;
        moe_error e = {{0}};
        int n = cli_parse_ids(depth_arg, &ids, &e);
        if (n < 1 || n > MAX_DEPTHS) {
            fprintf(stderr, "moe bench: -d wants 1 to %d depths like 0,4096,16384 (%s)\n", MAX_DEPTHS,
                    n < 0 ? e.msg : "got none or too many");
            free(ids);
            return 2;
        }
        for (int k = 0; k < n; k++) {
            if (ids[k] < 0 || ids[k] > (1 << 20)) { fprintf(stderr, "moe bench: -d: depths must be in [0, 1048576]\n"); free(ids); return 2; }
            depths[n_depth++] = ids[k];
            if (ids[k] > max_depth) max_depth = ids[k];
        }
        free(ids);
        if (seqs_arg || mtp) { fprintf(stderr, "moe bench: -d applies to the pp/tg tests, not to --seqs or --mtp\n"); return 2; }
    }
    if (seqs_arg) {
        int *ids = NULL;
        moe_error e = {{0}};
        int n = cli_parse_ids(seqs_arg, &ids, &e);
        if (n < 1 || n > SEQS_MAX_CONFIGS) {
            fprintf(stderr, "moe bench: --seqs wants 1 to %d sequence counts like 1,2,4,8,16 (%s)\n", SEQS_MAX_CONFIGS,
                    n < 0 ? e.msg : "got none or too many");
            free(ids);
            return 2;
        }
        for (int k = 0; k < n; k++) {
            if (ids[k] < 1 || ids[k] > EXPERTS_SEQS_MAX) {
                fprintf(stderr, "moe bench: --seqs: sequence counts must be in [1, %d]\n", EXPERTS_SEQS_MAX);
                free(ids);
                return 2;
            }
            seqs_b[n_seqs++] = ids[k];
        }
        free(ids);
        if (mtp) { fprintf(stderr, "moe bench: --seqs and --mtp are separate runs: give one of them\n"); return 2; }
    }
    FILE *tab = json ? stderr : stdout;
    report rp = { dir, "", "", "", "", 0, {bw[0], bw[1]}, bw_given ? "--bw" : "default (this machine kind; --membw measures)" };
    /* memory bandwidth: measured when asked; alone, here; with -m, beside every tg repetition */
    membw_job membw_arr = { NULL, 0, {0} };
    if (membw) {
        int all = threadpool_default_threads();
        size_t bytes = (size_t)membw_mib << 20;
        if (dir && n_gen > 0 && membw_init(&membw_arr, bytes)) {
            fprintf(stderr, "moe bench: out of memory for the --membw array (%ld MiB; see --membw-mib)\n", membw_mib);
            return 1;
        }
        if (!dir) {
            if (!json) fprintf(stderr, "membw: reading a %ld MiB array, median of 9 sweeps...\n", membw_mib);
            rp.bw[0] = membw_measure(1, bytes);
            rp.bw[1] = all > 1 ? membw_measure(all, bytes) : rp.bw[0];
            fprintf(tab, "memory read bandwidth: %.1f GB/s on 1 thread, %.1f GB/s on %d threads\n", rp.bw[0], rp.bw[1], all);
            if (json) {
                json_t *o = json_pack("{s:f, s:f, s:i}", "membw_1t_gbps", rp.bw[0], "membw_all_gbps", rp.bw[1], "threads_all", all);
                char *s = json_dumps(o, JSON_INDENT(2));
                printf("%s\n", s);
                free(s);
                json_decref(o);
            }
            return 0;
        }
    }
    /* load once with the largest pool; other thread counts get their own pools */
    int max_t = 1;
    for (int k = 0; k < n_cfg; k++) if (threads[k] > max_t) max_t = threads[k];
    opt.n_threads = max_t;
    opt.max_seq = (int)(max_depth + (n_prompt > tg_prompt + n_gen ? n_prompt : tg_prompt + n_gen) + 1 + (mtp ? 2 : 0));
    opt.batch_max = (int)(batch > 0 ? batch : n_prompt > 0 ? n_prompt : 64);
    for (int k = 0; k < n_seqs; k++)
        if (seqs_b[k] > opt.batch_max) opt.batch_max = seqs_b[k];   /* one pass holds a token of every sequence */
    moe_session e;
    if (mtp) {   /* before the long load */
        moe_config cfg;
        moe_error cerr = {{0}};
        if (model_config_load(&cfg, dir, &cerr)) { fprintf(stderr, "moe bench: %s\n", cerr.msg); return 1; }
        if (cfg.num_nextn_predict_layers < 1) {
            fprintf(stderr, "moe bench: --mtp: %s has no MTP module (num_nextn_predict_layers = 0)\n", dir);
            return 1;
        }
    }
    if (cli_load_engine(&e, dir, &opt, 1, "bench", 0)) return 1;      /* stderr: fine with --json */
    threadpool *own_pool = e.c.pool;
    config_run runs[MAX_RUNS];   /* [n_depth][n_cfg]: depth-major */
    memset(runs, 0, sizeof runs);
    int n_thr = n_cfg;           /* thread configurations; n_cfg counts runs from here on */
    n_cfg = n_thr * n_depth;
    int rc = 1;
    float *logits = malloc(sizeof(float) * (size_t)e.m.cfg.vocab_size);
    if (!logits) { fprintf(stderr, "moe bench: out of memory\n"); goto done; }
    size_t kv_row_bytes = (size_t)e.m.cfg.num_hidden_layers * (size_t)e.kv.width * e.kv.value_bytes;   /* main layers, one position */
    for (int k = 0; k < n_cfg; k++) {
        runs[k].threads = threads[k % n_thr];
        runs[k].depth = depths[k / n_thr];
        runs[k].kv_bytes_tok = (double)kv_row_bytes * (runs[k].depth + tg_prompt + (n_gen + 1) / 2.0);
        runs[k].pp = calloc((size_t)reps, sizeof(double));
        runs[k].tg = calloc((size_t)reps, sizeof(double));
        runs[k].pp_cpu = calloc((size_t)reps, sizeof(double));
        runs[k].tg_cpu = calloc((size_t)reps, sizeof(double));
        if (membw_arr.a) runs[k].bw = calloc((size_t)reps, sizeof(double));
        if (!runs[k].pp || !runs[k].tg || !runs[k].pp_cpu || !runs[k].tg_cpu || (membw_arr.a && !runs[k].bw)) {
            fprintf(stderr, "moe bench: out of memory\n");
            goto done;
        }
        if (runs[k].threads == max_t) runs[k].pool = own_pool;
        else if (k >= n_thr) runs[k].pool = runs[k % n_thr].pool;   /* same threads, shallower depth's pool */
        else if (runs[k].threads > 1) {
            if (!(runs[k].pool = model_pool_create(&e.m, runs[k].threads))) {
                fprintf(stderr, "moe bench: cannot start %d threads\n", runs[k].threads);
                goto done;
            }
            runs[k].owns_pool = 1;
        }
    }
    /* facts */
    {
        const char *slash = strrchr(dir, '/');
        const char *base = slash && slash[1] ? slash + 1 : dir;
        snprintf(rp.model, sizeof rp.model, "%s %s %s", e.m.cfg.model_type, base, mat_fmt_name(&e.m));
        fmt_size(rp.size, sizeof rp.size, (double)(e.m.w.bytes_mapped + e.m.w.bytes_converted));
        fmt_count(rp.params, sizeof rp.params, param_count(&e.m));
        snprintf(rp.backend, sizeof rp.backend, "CPU %s", cpu_kernel_name());
        rp.bytes_tok = bytes_per_token(&e.m);
    }
    char load_start[64], load_end[64];
    loadavg(load_start, sizeof load_start);
    /* every page of the checkpoint in memory before anything is timed */
    {
        double t0 = cli_now(), b = cli_ep_on() ? 0 : prefault(&e.m);   /* --ep: not the other ranks' experts */
        fprintf(stderr, "prefault: touched %.2f GB of mapped tensors in %.2f s\n", b / 1e9, cli_now() - t0);
    }
    /* warm-up, then reps alternating thread counts */
    uint64_t rs = (uint64_t)seed;
    moe_error err = {{0}};
    for (int di = 0; di < n_depth && !n_seqs; di++) {
      if (depths[di] > 0) {   /* the untimed fill: positions [0, D) of slot 0, kept by every rep */
        int *fill = malloc(sizeof(int) * (size_t)depths[di]);
        if (!fill) { fprintf(stderr, "moe bench: out of memory\n"); goto done; }
        random_tokens(fill, depths[di], e.m.cfg.vocab_size, &rs);
        e.c.pool = own_pool;
        double t0 = cli_now();
        int frc = model_forward_seq(&e.m, &e.c, &e.kv, 0, fill, depths[di], 0, logits, 0, NULL, &err);
        free(fill);
        if (frc) { fprintf(stderr, "moe bench: %s\n", err.msg); goto done; }
        fprintf(stderr, "\r%70s\rdepth %d: filled the cache in %.1f s (untimed)\n", "", depths[di], cli_now() - t0);
      }
      for (int r = -1; r < reps; r++) {   /* --seqs: its own runs instead (below) */
        for (int k = di * n_thr; k < (di + 1) * n_thr; k++) {
            config_run *c = &runs[k];
            e.c.pool = c->pool;
            int timed = r >= 0;
            if (n_prompt > 0) {
                double cpu_s = 0;
                double v = run_pp(&e, c->depth, (int)n_prompt, logits, &rs, timed && profile ? &c->prof_pp : NULL, &cpu_s, &err);
                if (v < 0) { fprintf(stderr, "moe bench: %s\n", err.msg); goto done; }
                if (timed) {
                    c->pp[r] = v;
                    c->pp_cpu[r] = n_prompt / (cpu_s / c->threads);
                    if (profile) c->pp_tokens += n_prompt;
                }
            }
            if (n_gen > 0) {
                double cpu_s = 0;
                if (timed && c->bw) c->bw[r] = membw_sweeps(&membw_arr, c->pool, 3);
                int steps = (int)(timed ? n_gen : (n_gen < 16 ? n_gen : 16));
                double v = run_tg(&e, c->depth, (int)tg_prompt, steps, logits, &rs,
                                  timed && profile ? &c->prof_tg : NULL, timed && profile ? &c->argmax_ns : NULL, &cpu_s, &err);
                if (v < 0) { fprintf(stderr, "moe bench: %s\n", err.msg); goto done; }
                if (timed) {
                    c->tg[r] = v;
                    c->tg_cpu[r] = steps / (cpu_s / c->threads);
                    if (profile) c->tg_tokens += n_gen;
                }
            }
            if (timed)
                fprintf(stderr, "\rrep %d/%ld, %d thread%s: pp %.1f t/s, tg %.1f t/s      ", r + 1, reps, c->threads,
                        c->threads > 1 ? "s" : "", n_prompt > 0 ? c->pp[r] : 0, n_gen > 0 ? c->tg[r] : 0);
        }
      }
    }
    fprintf(stderr, "\r%70s\r", "");
    if (cli_ep_on()) {   /* warm-up included: the same steps as the timed ones */
        int chunks = n_prompt > 0 ? (int)((n_prompt + e.c.B - 1) / e.c.B) : 0;
        char what[64];
        snprintf(what, sizeof what, "prefill chunk of %ld tokens", n_prompt < e.c.B ? n_prompt : (long)e.c.B);
        cli_ep_report(what, "chunk", ep_pp.s, ep_pp.bytes, ep_pp.n, (double)chunks * (reps + 1) * n_cfg);
        cli_ep_report("decode", "token", ep_tg.s, ep_tg.bytes, ep_tg.n,
                      (double)n_cfg * (n_gen * reps + (n_gen < 16 ? n_gen : 16)));
    }
    e.c.pool = own_pool;
    if (n_seqs) {   /* B sequences per pass, every thread count */
        seqs_bytes sb = pass_bytes(&e.m);
        for (int k = 0; k < n_thr; k++) {
            e.c.pool = runs[k].pool;
            for (int r = 0; membw_arr.a && r < reps; r++) runs[k].bw[r] = membw_sweeps(&membw_arr, runs[k].pool, 3);
            if (seqs_arm_run(&e.m, &e.c, seqs_b, n_seqs, (int)tg_prompt, (int)n_gen, (int)reps, (uint64_t)seed, &sb, profile,
                             &seqs_result[n_seqs_runs++], &err)) {
                fprintf(stderr, "moe bench: %s\n", err.msg);
                goto done;
            }
        }
        e.c.pool = own_pool;
    }
    if (membw_arr.a) {   /* the report's figures: medians of what was measured beside the reps */
        for (int k = 0; k < n_cfg; k++) rp.bw[runs[k].threads > 1] = cli_median(runs[k].bw, (int)reps);
        rp.bw_source = n_seqs ? "measured before each thread count's --seqs runs (--membw), median"
                              : "measured beside each repetition (--membw), median; bw % is the median of the per-rep fractions";
    }
    loadavg(load_end, sizeof load_end);
    /* report */
    if (!n_seqs) print_table(tab, &rp, runs, n_cfg, (int)n_prompt, (int)n_gen, (int)reps);
    else {
        fprintf(tab, "| model | size | params | backend |\n| --- | ---: | ---: | --- |\n| %s | %s | %s | %s |\n", rp.model,
                rp.size, rp.params, rp.backend);
        seqs_arm_print(tab, seqs_result, n_seqs_runs);
    }
    size_t kv_tok = kv_bytes_per_token(&e.kv);
    int kv_floats = e.m.cfg.kv_lora_rank + e.m.cfg.qk_rope_head_dim;
    fprintf(tab, "\nweights read per decoded token: %.2f MB (attention + router + %d of %d experts + shared + dense + head)\n",
            rp.bytes_tok / 1e6, e.m.K, e.m.cfg.n_routed_experts);
    fprintf(tab, "KV cache read per decoded token: %.3f MB per 1000 positions in the cache (%d main layers x %d values x %zu B "
                 "(%s, --kv-dtype) per position; KV MB/tok: at each test's depth, legend of cmd_bench.c)\n",
            (double)kv_row_bytes * 1000 / 1e6, e.m.cfg.num_hidden_layers, e.kv.width, e.kv.value_bytes,
            kv_dtype_name(e.kv.dtype));
    fprintf(tab, "on-CPU t/s = tokens / (process CPU seconds / threads): the speed if the runs had not waited for the "
                 "CPU (load average %s at start, %s at end)\n", load_start, load_end);
    fprintf(tab, "memory bandwidth used for bw %%: %.1f GB/s (1 thread), %.1f GB/s (2+ threads): %s\n", rp.bw[0], rp.bw[1],
            rp.bw_source);
    fprintf(tab, "weights: %.1f MiB mapped from the checkpoint + %.1f MiB converted at load (--dtype %s; %.1f MiB of them "
                 "copied as stored into huge pages, --mmap reads them in place); peak RSS %.1f MiB%s\n",
            e.m.w.bytes_mapped / 1048576.0, e.m.w.bytes_converted / 1048576.0, weights_dtype_name(opt.dtype),
            e.m.w.bytes_copied / 1048576.0,
            peak_rss_bytes() / 1048576.0, membw_arr.a ? " (includes the --membw array, --membw-mib)" : "");
    fprintf(tab, "KV cache: %d values (kv_lora_rank %d + rope %d) x %d layers x %zu B (%s) = %zu B per token; %d positions "
                 "allocated = %.2f MiB\n",
            kv_floats, e.m.cfg.kv_lora_rank, e.m.cfg.qk_rope_head_dim, e.m.w.n_layers, e.kv.value_bytes,
            kv_dtype_name(e.kv.dtype), kv_tok, e.kv.S, e.kv.bytes / 1048576.0);
    fprintf(tab, "prefill attention products: %s\n", blas_name());
    if (profile && !n_seqs) print_profile(tab, runs, n_cfg, (int)n_gen, (int)n_prompt);   /* --seqs prints its own */
    if (mtp) {
        if (mtp_arm_run(&e.m, &e.c, &e.kv, dir, mtp_text, (int)tg_prompt, (int)(n_gen > 1 ? n_gen : 2), (int)reps, (uint64_t)seed,
                        profile, !mtp_cold, (int)draft_len, &mtp_result, &err)) {
            fprintf(stderr, "moe bench: %s\n", err.msg);
            goto done;
        }
        mtp_arm_print(tab, &mtp_result);
    }
    if (json) {
        json_t *arr = json_array();
        for (int k = 0; k < n_cfg; k++) {
            config_run *c = &runs[k];
            for (int which = 0; which < 2; which++) {
                int n_tok = which == 0 ? (int)n_prompt : (int)n_gen;
                if (n_tok <= 0) continue;
                double *v = which == 0 ? c->pp : c->tg, *vc = which == 0 ? c->pp_cpu : c->tg_cpu;
                char test[40];
                if (c->depth > 0) snprintf(test, sizeof test, "%s%d @ d%d", which == 0 ? "pp" : "tg", n_tok, c->depth);
                else snprintf(test, sizeof test, "%s%d", which == 0 ? "pp" : "tg", n_tok);
                json_t *samples = json_array();
                for (int r = 0; r < reps; r++) json_array_append_new(samples, json_real(v[r]));
                json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:s, s:i, s:s, s:i, s:i, s:f, s:f, s:f, s:o}",
                                      "model", rp.model, "model_dir", dir, "model_type", e.m.cfg.model_type,
                                      "model_size", (json_int_t)(e.m.w.bytes_mapped + e.m.w.bytes_converted),
                                      "model_n_params", (json_int_t)param_count(&e.m), "backend", rp.backend, "dtype",
                                      weights_dtype_name(opt.dtype), "n_threads", c->threads, "test", test, "n_prompt",
                                      which == 0 ? n_tok : (int)tg_prompt, "n_gen", which == 0 ? 0 : n_tok, "avg_ts",
                                      mean_of(v, (int)reps), "stddev_ts", sd_of(v, (int)reps), "median_ts",
                                      cli_median(v, (int)reps), "samples_ts", samples);
                if (which == 1) {
                    double gbs, frac;
                    tg_bandwidth(&rp, c, (int)reps, &gbs, &frac);
                    json_object_set_new(o, "weight_bytes_per_token", json_real(rp.bytes_tok));
                    json_object_set_new(o, "kv_bytes_read_per_token", json_real(c->kv_bytes_tok));
                    json_object_set_new(o, "gbps", json_real(gbs));
                    json_object_set_new(o, "bw_gbps", json_real(c->bw ? cli_median(c->bw, (int)reps) : bw_for(&rp, c->threads)));
                    json_object_set_new(o, "bw_fraction", json_real(frac));
                    json_object_set_new(o, "bw_source", json_string(rp.bw_source));
                    if (c->bw) {
                        json_t *bs = json_array();
                        for (int r = 0; r < reps; r++) json_array_append_new(bs, json_real(c->bw[r]));
                        json_object_set_new(o, "bw_samples_gbps", bs);
                    }
                }
                if (profile)
                    json_object_set_new(o, "profile_us_per_token",
                                        which == 1 ? profile_json(&c->prof_tg, c->tg_tokens, c->argmax_ns)
                                                   : profile_json(&c->prof_pp, c->pp_tokens, -1));
                json_t *cs = json_array();
                for (int r = 0; r < reps; r++) json_array_append_new(cs, json_real(vc[r]));
                json_object_set_new(o, "oncpu_samples_ts", cs);
                json_object_set_new(o, "oncpu_median_ts", json_real(cli_median(vc, (int)reps)));
                json_object_set_new(o, "n_depth", json_integer(c->depth));
                json_object_set_new(o, "kv_dtype", json_string(kv_dtype_name(e.kv.dtype)));
                json_object_set_new(o, "loadavg_start", json_string(load_start));
                json_object_set_new(o, "loadavg_end", json_string(load_end));
                json_object_set_new(o, "peak_rss", json_integer((json_int_t)peak_rss_bytes()));
                json_object_set_new(o, "weights_mapped", json_integer((json_int_t)e.m.w.bytes_mapped));
                json_object_set_new(o, "weights_converted", json_integer((json_int_t)e.m.w.bytes_converted));
                json_object_set_new(o, "kv_bytes_per_token", json_integer((json_int_t)kv_tok));
                json_object_set_new(o, "kv_cache_bytes", json_integer((json_int_t)e.kv.bytes));
                json_array_append_new(arr, o);
            }
        }
        if (mtp) json_array_append_new(arr, mtp_arm_json(&mtp_result));
        for (int k = 0; k < n_seqs_runs; k++) {
            json_t *sj = seqs_arm_json(&seqs_result[k]);
            json_array_extend(arr, sj);
            json_decref(sj);
        }
        char *s = json_dumps(arr, JSON_INDENT(2) | JSON_REAL_PRECISION(8));
        printf("%s\n", s);
        free(s);
        json_decref(arr);
    }
    rc = 0;
done:
    e.c.pool = own_pool;
    for (int k = 0; k < n_cfg; k++) {
        if (runs[k].owns_pool) threadpool_free(runs[k].pool);
        free(runs[k].pp);
        free(runs[k].tg);
        free(runs[k].pp_cpu);
        free(runs[k].tg_cpu);
        free(runs[k].bw);
    }
    free((void *)membw_arr.a);
    free(logits);
    mtp_arm_free(&mtp_result);
    for (int k = 0; k < n_seqs_runs; k++) seqs_arm_free(&seqs_result[k]);
    session_close(&e);
    return rc;
}
