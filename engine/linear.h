/* linear.h - Y = X W^T for a batch of n token vectors: the one place where the
 * engine multiplies by a weight matrix, so threading and BLAS live here.
 * X is [n, W.cols], Y is [n, W.rows]. */
#ifndef MOE_LINEAR_H
#define MOE_LINEAR_H

#include "kernels.h"

struct threadpool;
void linear(struct threadpool *pool, const mat *W, const float *X, int n, float *Y);

#endif
