/* threadpool.h - a persistent pool of worker threads for the kernels.
 *
 * Workers are created once (threadpool_create) and wait for work by spinning
 * briefly (~100 us), then sleeping on a condition variable; threadpool_run
 * wakes them, runs the shares of fn on the pool threads including the caller,
 * and returns when all are done. One caller at a time: threadpool_run is not reentrant and must
 * not be called from inside fn or from two threads at once.
 */
#ifndef MOE_THREADPOOL_H
#define MOE_THREADPOOL_H

#include "kernels.h"

typedef struct threadpool threadpool;

/* n_threads >= 1 counts the caller: n_threads - 1 workers are started.
 * Returns NULL if threads or memory could not be had. */
threadpool *threadpool_create(int n_threads);
/* The same, with a hook (e.g. pinning threads to a NUMA node's CPUs, engine/numa_place.c):
 * on_start(ctx, thread, n_threads) runs once on every pool thread before it takes any
 * work: thread 0 (the caller) inside this call, workers 1..n-1 as they start. Returns
 * after all of them have run it, so ctx need only live for this call. */
threadpool *threadpool_create_hooked(int n_threads, void (*on_start)(void *ctx, int thread, int n_threads), void *ctx);
void threadpool_free(threadpool *p);          /* joins the workers; NULL is fine */
int threadpool_threads(const threadpool *p);
/* Index of the calling OS thread in its pool: 1..n-1 on a worker, 0 on any other thread
 * (the caller). Unlike a share index, it names the thread (and so its CPUs / NUMA node). */
int threadpool_self(void);

/* Calls fn(arg, thread_id, n_threads) once for each thread_id in 0..n_threads-1
 * and returns when all have returned. thread_id is a share index: each share
 * runs exactly once, on whichever pool thread (the caller included) claims it
 * first, so a worker the OS has descheduled does not hold up the others. Use
 * thread_id to pick the share of work (and per-share scratch), not to name an
 * OS thread. */
void threadpool_run(threadpool *p, void (*fn)(void *arg, int thread_id, int n_threads), void *arg);
/* The same with n_tasks shares: fn(arg, task, n_tasks) for task in 0..n_tasks-1. */
void threadpool_run_tasks(threadpool *p, void (*fn)(void *arg, int task, int n_tasks), void *arg, int n_tasks);

/* Physical cores this process may run on (at least 1). */
int threadpool_default_threads(void);

/* [*r0, *r1) = thread id's share of rows 0..rows: contiguous chunks whose
 * boundaries are multiples of 16 rows (64-byte lines of f32 outputs). */
void threadpool_split_rows(int rows, int id, int n_threads, int *r0, int *r1);

/* y = W x with the rows split across the pool (matvec_rows on each share;
 * in low-precision mode x is quantized once, by the caller). */
void matvec_parallel(threadpool *p, const mat *W, const float *x, float *y);
/* Several matvecs in one pool round trip (e.g. the gate and up projections, or
 * all routed experts of a token): y_j = W_j x_j for every job, the rows of all
 * jobs split together across the pool. Outputs must not overlap. */
typedef struct {
    const mat *W;
    const float *x;
    float *y;
} matvec_job;
void matvec_parallel_batch(threadpool *p, const matvec_job *jobs, int n_jobs);

/* Y[t, r] = (W X[t])[r] for all rows, t < n (matmul_rows on each share). */
void matmul_parallel(threadpool *p, const mat *W, const float *X, int n, float *Y, int ldy);

#endif
