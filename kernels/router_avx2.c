/* router_avx2.c - the router's top-k (engine/router.c step 4), AVX2: router_avx512.c with
 * 8 lanes (see its legend); same result as router_topk_ref for inputs without NaN.
 */
#include <immintrin.h>

#include "kernels_impl.h"

/* ---------------------------------------------------------------- shared insertion */

/* Candidate j enters if fewer than k are held or it beats the last (strictly: an equal value
 * seen later has a higher index and ranks after). */
static inline void topk_insert(const float *x, int *idx, int *have, int k, int j) {
    int p;
    if (*have < k) p = (*have)++;
    else if (x[j] > x[idx[k - 1]]) p = k - 1;
    else return;
    while (p > 0 && x[j] > x[idx[p - 1]]) { idx[p] = idx[p - 1]; p--; }
    idx[p] = j;
}

/* ---------------------------------------------------------------- AVX2 */

void router_topk_avx2(const float *x, int n, int k, int *idx) {
    int have = 0, i = 0;
    for (; i < n && have < k; i++) topk_insert(x, idx, &have, k, i);
    for (; i + 8 <= n; i += 8) {
        unsigned m = (unsigned)_mm256_movemask_ps(
            _mm256_cmp_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(x[idx[k - 1]]), _CMP_GT_OQ));
        while (m) {
            int b = __builtin_ctz(m);
            m &= m - 1;
            topk_insert(x, idx, &have, k, i + b);
        }
    }
    for (; i < n; i++) topk_insert(x, idx, &have, k, i);
}
