/* router_avx2.c - the router's top-k (engine/router.c step 4), AVX2: router_avx512.c with
 * 8 lanes (see its legend); same result as router_topk_ref for inputs without NaN.
 */
#include <immintrin.h>

#include "kernels_impl.h"

/* ---------------------------------------------------------------- shared insertion */


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
