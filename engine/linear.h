/* linear.h - Y = X W^T for a batch of n token vectors: the one place where the
 * engine multiplies by a weight matrix, so threading and BLAS live here.
 * X is [n, W.cols], Y is [n, W.rows]. */
#ifndef MOE_LINEAR_H
#define MOE_LINEAR_H

#include "kernels.h"

struct threadpool;
void linear(struct threadpool *pool, const mat *W, const float *X, int n, float *Y);
/* Rows [row0, row1) only, written to Y[t * ldy + (r - row0)]. */
void linear_rows(struct threadpool *pool, const mat *W, const float *X, int n, float *Y, int ldy, int row0, int row1);

#endif
