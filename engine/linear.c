/* linear.c - batched matrix products (see linear.h): one token -> matvec, a
 * batch -> matmul; rows split across the thread pool when there is one. */
#include "linear.h"

#include <stddef.h>

#include "threadpool.h"

/* multiply-adds below which one thread is faster than splitting (measured on the tiny models) */
#define LINEAR_PARALLEL_MIN (64 * 1024)

void linear(struct threadpool *pool, const mat *W, const float *X, int n, float *Y) {
    /* a small product costs less than waking the workers (~ a few microseconds) */
    size_t work = (size_t)W->rows * (size_t)W->cols * (size_t)n;
    if (pool && threadpool_threads(pool) > 1 && work >= LINEAR_PARALLEL_MIN) {
        if (n == 1) matvec_parallel(pool, W, X, Y);
        else matmul_parallel(pool, W, X, n, Y, W->rows);
        return;
    }
    if (n == 1) matvec_rows(W, X, Y, 0, W->rows);
    else matmul_rows(W, X, n, Y, W->rows, 0, W->rows);
}
