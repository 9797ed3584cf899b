/* threadpool.c - persistent pthread pool with a spin-then-sleep handshake.
 *
 * Legend
 *   gen       generation counter: a run publishes fn/arg and claim = (gen,
 *             task count, 0) in one word, then increments gen; a worker that
 *             sees gen change claims tasks (CAS on claim) until none are left.
 *   tasks     threadpool_run's thread_id is a task index: tasks are claimed by
 *             whichever pool thread gets there first, the caller included, so
 *             a descheduled worker (busy shared machine) delays nothing it has
 *             not claimed; the caller waits only for claimed, running tasks.
 *   spin      waiting sides (workers for gen, the caller for done == task count) spin
 *             with `pause` for SPIN_ITERS, yield for YIELD_ITERS, then sleep on
 *             a condition variable.
 *   sleepers / caller_waiting   published with seq_cst before re-checking the
 *             condition under the mutex, so the other side (which changes the
 *             condition first, then reads the flag) either wakes them or they
 *             see the change: no lost wake-ups (Dekker on seq_cst atomics).
 *   scratch   buffer for x (X) quantized once per matvec_parallel (matmul_parallel) in
 *             low-precision mode; grown by the caller, never by a worker.
 *   on_start  optional hook run once per thread before any work (threadpool_create_hooked,
 *             e.g. NUMA binding); `started` counts the workers that have run it.
 *   self      thread-local index of the OS thread in its pool (threadpool_self).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_impl.h"
#include "threadpool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define SPIN_ITERS 2000    /* pause is ~60 ns on Zen 5 (measured): ~120 us of spinning */
#define YIELD_ITERS 16

/* ---------------------------------------------------------------- pool */

typedef struct {
    threadpool *pool;
    int id;
} worker_arg;

struct threadpool {
    int n;                                  /* threads including the caller */
    void (*on_start)(void *, int, int);     /* hook, or NULL; see threadpool_create_hooked */
    void *on_start_ctx;
    _Atomic int started;                    /* workers that have run on_start */
    pthread_t *threads;                     /* n - 1 workers */
    worker_arg *args;
    void (*fn)(void *, int, int);
    void *arg;
    int task0, n_total;                     /* this round's tasks are task0 + [0, n in claim) of n_total */
    _Atomic unsigned gen;                   /* bumped per run (and to stop) */
    _Atomic uint64_t claim;                 /* gen << 32 | tasks this round << 16 | next unclaimed */
    _Atomic int done;                       /* tasks finished this run */
    _Atomic int stop;
    _Atomic int sleepers;
    _Atomic int caller_waiting;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    void *scratch;
    size_t scratch_bytes;
};

/* Tasks in one round: the count lives in the claim word (16 bits) beside the next task. */
#define ROUND_MAX_TASKS 0xffff

/* Claims and runs tasks of generation g until none are left. A claim is a CAS
 * on (g, count, next), one word: it fails once the run is over (claim carries a
 * newer gen), so a late thread never touches fn/arg of a finished run, and the
 * count it checks is its own round's. (It once was a separate relaxed field: a
 * worker late from a 2-task round could read the next round's count with its
 * own round's claim word, win the CAS before the caller published the new
 * claim, run a task of the new fn, and count it in the new round's `done`,
 * which then passed its target and never equalled it: a deadlock, seen once in
 * `moe bench` with --membw, whose 2-task sweeps alternate with 8-task matvecs.)
 * A successful claim keeps the run (and fn/arg) alive until the task reports done. */
static void run_tasks(threadpool *p, unsigned g) {
    for (;;) {
        uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
        int next = (int)(c & 0xffff), count = (int)((c >> 16) & 0xffff);
        if ((unsigned)(c >> 32) != g || next >= count) return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, c + 1, memory_order_acq_rel, memory_order_acquire))
            continue;
        p->fn(p->arg, p->task0 + next, p->n_total);
        if (atomic_fetch_add_explicit(&p->done, 1, memory_order_acq_rel) + 1 == count && atomic_load(&p->caller_waiting)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static _Thread_local int tp_self;          /* 0 unless this thread is a pool worker */

int threadpool_self(void) { return tp_self; }

static void *worker_main(void *varg) {
    worker_arg *wa = varg;
    threadpool *p = wa->pool;
    unsigned seen = 0;
    tp_self = wa->id;
    if (p->on_start) p->on_start(p->on_start_ctx, wa->id, p->n);
    atomic_fetch_add(&p->started, 1);
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
            if (spins < SPIN_ITERS) {
                spins++;
                cpu_relax();
            } else if (spins < SPIN_ITERS + YIELD_ITERS) {
                spins++;
                sched_yield();
            } else {
                pthread_mutex_lock(&p->mu);
                atomic_fetch_add(&p->sleepers, 1);
                while (atomic_load(&p->gen) == seen) pthread_cond_wait(&p->cv_work, &p->mu);
                atomic_fetch_sub(&p->sleepers, 1);
                pthread_mutex_unlock(&p->mu);
                spins = 0;
            }
        }
        seen = g;
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) return NULL;
        run_tasks(p, g);
    }
}

/* Bumps gen (after the run's fields are set) and wakes sleeping workers. */
static unsigned publish(threadpool *p) {
    unsigned g = atomic_fetch_add(&p->gen, 1) + 1;
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
    }
    return g;
}

static void wait_done(threadpool *p, int n_tasks) {
    for (int spins = 0; atomic_load_explicit(&p->done, memory_order_acquire) != n_tasks; spins++) {
        if (spins < SPIN_ITERS) {
            cpu_relax();
        } else if (spins < SPIN_ITERS + YIELD_ITERS) {
            sched_yield();
        } else {
            pthread_mutex_lock(&p->mu);
            atomic_store(&p->caller_waiting, 1);
            while (atomic_load(&p->done) != n_tasks) pthread_cond_wait(&p->cv_done, &p->mu);
            atomic_store(&p->caller_waiting, 0);
            pthread_mutex_unlock(&p->mu);
            break;
        }
    }
}

threadpool *threadpool_create(int n_threads) { return threadpool_create_hooked(n_threads, NULL, NULL); }

threadpool *threadpool_create_hooked(int n_threads, void (*on_start)(void *, int, int), void *ctx) {
    if (n_threads < 1) n_threads = 1;
    threadpool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n_threads;
    p->on_start = on_start;
    p->on_start_ctx = ctx;
    if (on_start) on_start(ctx, 0, n_threads);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads - 1, sizeof *p->threads);
        p->args = calloc((size_t)n_threads - 1, sizeof *p->args);
        if (!p->threads || !p->args) { p->n = 1; threadpool_free(p); return NULL; }
        for (int i = 1; i < n_threads; i++) {
            p->args[i - 1] = (worker_arg){p, i};
            if (pthread_create(&p->threads[i - 1], NULL, worker_main, &p->args[i - 1]) != 0) {
                p->n = i;             /* join the ones that started */
                threadpool_free(p);
                return NULL;
            }
        }
        while (on_start && atomic_load(&p->started) < n_threads - 1) sched_yield();
    }
    return p;
}

void threadpool_free(threadpool *p) {
    if (!p) return;
    if (p->n > 1) {
        atomic_store(&p->stop, 1);
        (void)publish(p);
        for (int i = 0; i < p->n - 1; i++) pthread_join(p->threads[i], NULL);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_work);
    pthread_cond_destroy(&p->cv_done);
    free(p->threads);
    free(p->args);
    free(p->scratch);
    free(p);
}

int threadpool_threads(const threadpool *p) { return p ? p->n : 1; }

void threadpool_run_tasks(threadpool *p, void (*fn)(void *, int, int), void *arg, int n_tasks) {
    if (n_tasks <= 0) return;
    if (!p || p->n == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++) fn(arg, t, n_tasks);
        return;
    }
    for (int task0 = 0; task0 < n_tasks; task0 += ROUND_MAX_TASKS) {   /* one round, unless > 65535 tasks */
        int count = n_tasks - task0 < ROUND_MAX_TASKS ? n_tasks - task0 : ROUND_MAX_TASKS;
        unsigned g = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
        p->fn = fn;
        p->arg = arg;
        p->task0 = task0;
        p->n_total = n_tasks;
        atomic_store_explicit(&p->done, 0, memory_order_relaxed);
        atomic_store_explicit(&p->claim, (uint64_t)g << 32 | (uint64_t)count << 16, memory_order_release);
        publish(p);
        run_tasks(p, g);
        wait_done(p, count);
    }
}

void threadpool_run(threadpool *p, void (*fn)(void *, int, int), void *arg) {
    threadpool_run_tasks(p, fn, arg, threadpool_threads(p));
}

/* ---------------------------------------------------------------- topology */

static int read_int_file(const char *path, int *out) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int ok = fscanf(f, "%d", out) == 1;
    fclose(f);
    return ok;
}

int threadpool_default_threads(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    int logical = CPU_COUNT(&set), cores = 0;
    int keys[CPU_SETSIZE > 1024 ? 1024 : CPU_SETSIZE];
    int nkeys = 0, ok = 1;
    for (int c = 0; c < CPU_SETSIZE && ok; c++) {
        if (!CPU_ISSET(c, &set)) continue;
        char path[128];
        int core, pkg;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", c);
        ok = read_int_file(path, &core);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", c);
        ok = ok && read_int_file(path, &pkg);
        if (!ok) break;
        int key = pkg * 65536 + core, seen = 0;
        for (int i = 0; i < nkeys; i++) seen |= keys[i] == key;
        if (!seen && nkeys < (int)(sizeof keys / sizeof keys[0])) keys[nkeys++] = key;
    }
    cores = ok ? nkeys : logical;
    return cores > 0 ? cores : 1;
}

/* ---------------------------------------------------------------- parallel matvec / matmul */

void threadpool_split_rows(int rows, int id, int n_threads, int *r0, int *r1) {
    int lines = (rows + 15) / 16;             /* 16-row units */
    int a = (int)((long long)lines * id / n_threads), b = (int)((long long)lines * (id + 1) / n_threads);
    *r0 = a * 16 < rows ? a * 16 : rows;
    *r1 = b * 16 < rows ? b * 16 : rows;
}

typedef struct {
    const mat *W;
    const float *x;            /* matvec / matmul activations */
    const void *xlow;          /* quantized x (low precision), or NULL */
    int lowp;                  /* MAT_Q8 / MAT_BF16 / MAT_Q4_K (any k-quant: xlow is block_q8_K) / 0 */
    int n, ldy;
    float *y;
} mv_job;

/* Tasks for rows: a few per thread (so a preempted thread holds up little),
 * at most one per 16 rows. */
static int row_tasks(const threadpool *p, int rows) {
    int t = threadpool_threads(p) * 4, lines = (rows + 15) / 16;
    if (threadpool_threads(p) == 1) return 1;
    return t < lines ? t : (lines > 0 ? lines : 1);
}

static void matvec_share(void *arg, int id, int nt) {
    const mv_job *j = arg;
    int r0, r1;
    threadpool_split_rows(j->W->rows, id, nt, &r0, &r1);
    if (r0 >= r1) return;
    if (j->lowp == MAT_Q4_K) matvec_rows_q8K(j->W, j->xlow, j->y + r0, r0, r1);
    else if (j->lowp == MAT_Q8) matvec_rows_q8q8(j->W, j->xlow, j->y + r0, r0, r1);
    else if (j->lowp == MAT_BF16) matvec_rows_bf16bf16(j->W, j->xlow, j->y + r0, r0, r1);
    else matvec_rows(j->W, j->x, j->y + r0, r0, r1);
}

static void *scratch_get(threadpool *p, size_t bytes) {
    if (p->scratch_bytes >= bytes) return p->scratch;
    void *s = realloc(p->scratch, bytes);
    if (!s) return NULL;
    p->scratch = s;
    p->scratch_bytes = bytes;
    return s;
}

void matvec_parallel(threadpool *p, const mat *W, const float *x, float *y) {
    mv_job j = {W, x, NULL, 0, 1, 0, y};
    int kind = cpu_lowp_kind(W);
    if (p && cpu_q8K_path(W)) {   /* k-quants: x to block_q8_K once, not once per share (same bits) */
        block_q8_K *buf = scratch_get(p, (size_t)(W->cols / QK_K) * sizeof(block_q8_K));
        if (buf && quantize_row_q8_K(x, buf, W->cols)) {   /* else: per share, through the f32 fallback */
            j.xlow = buf;
            j.lowp = MAT_Q4_K;
        }
    } else if (kind && p) {
        size_t bytes = kind == MAT_Q8 ? (size_t)(W->cols / QK8) * sizeof(block_q8) : (size_t)W->cols * 2;
        void *buf = scratch_get(p, bytes);
        if (buf) {   /* else: each thread quantizes on its own (matvec_rows) */
            if (kind == MAT_Q8) quantize_row_q8(x, buf, W->cols);
            else quantize_row_bf16(x, buf, W->cols);
            j.xlow = buf;
            j.lowp = kind;
        }
    }
    threadpool_run_tasks(p, matvec_share, &j, row_tasks(p, W->rows));
}

/* ---------------------------------------------------------------- batched matvec */

/* The jobs' rows in 16-row lines, laid end to end; a task takes a contiguous
 * range of lines and runs matvec_rows on each piece that falls in one job. */
typedef struct {
    const matvec_job *jobs;
    int n_jobs;
    int lines;
} batch_job;

static int job_lines(const matvec_job *j) { return (j->W->rows + 15) / 16; }

static void batch_task(void *arg, int task, int n_tasks) {
    const batch_job *b = arg;
    int l0 = (int)((long long)b->lines * task / n_tasks), l1 = (int)((long long)b->lines * (task + 1) / n_tasks);
    int base = 0;
    for (int i = 0; i < b->n_jobs && base < l1; i++) {
        const matvec_job *j = &b->jobs[i];
        int nl = job_lines(j);
        int a = l0 > base ? l0 - base : 0, e = l1 - base < nl ? l1 - base : nl;
        if (a < e) {
            int r0 = a * 16, r1 = e * 16 < j->W->rows ? e * 16 : j->W->rows;
            matvec_rows(j->W, j->x, j->y + r0, r0, r1);
        }
        base += nl;
    }
}

void matvec_parallel_batch(threadpool *p, const matvec_job *jobs, int n_jobs) {
    batch_job b = {jobs, n_jobs, 0};
    for (int i = 0; i < n_jobs; i++) b.lines += job_lines(&jobs[i]);
    if (b.lines == 0) return;
    int t = threadpool_threads(p) == 1 ? 1 : threadpool_threads(p) * 4;
    threadpool_run_tasks(p, batch_task, &b, t < b.lines ? t : b.lines);
}

/* ---------------------------------------------------------------- matmul */

static void matmul_share(void *arg, int id, int nt) {
    const mv_job *j = arg;
    int r0, r1;
    threadpool_split_rows(j->W->rows, id, nt, &r0, &r1);
    if (r0 >= r1) return;
    if (j->lowp == MAT_Q8) matmul_rows_q8q8(j->W, j->xlow, j->n, j->y, j->ldy, r0, r1);
    else if (j->lowp == MAT_BF16) matmul_rows_bf16bf16(j->W, j->xlow, j->n, j->y, j->ldy, r0, r1);
    else matmul_rows(j->W, j->x, j->n, j->y, j->ldy, r0, r1);
}

void matmul_parallel(threadpool *p, const mat *W, const float *X, int n, float *Y, int ldy) {
    mv_job j = {W, X, NULL, 0, n, ldy, Y};
    int kind = cpu_lowp_kind(W);
    if (kind && p && n > 0) {   /* X quantized once, not once per share (same bits) */
        size_t xb = kind == MAT_Q8 ? (size_t)(W->cols / QK8) * sizeof(block_q8) : (size_t)W->cols * 2;
        unsigned char *buf = scratch_get(p, xb * (size_t)n);
        if (buf) {   /* else: each share quantizes on its own (matmul_rows) */
            for (int t = 0; t < n; t++) {
                const float *x = X + (size_t)t * W->cols;
                if (kind == MAT_Q8) quantize_row_q8(x, (block_q8 *)(buf + (size_t)t * xb), W->cols);
                else quantize_row_bf16(x, (uint16_t *)(buf + (size_t)t * xb), W->cols);
            }
            j.xlow = buf;
            j.lowp = kind;
        }
    }
    threadpool_run_tasks(p, matmul_share, &j, row_tasks(p, W->rows));
}
