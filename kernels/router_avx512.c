/* router_avx512.c - the router's top-k (engine/router.c step 4), AVX-512.
 *
 * Legend
 *   x[0..n)    selection scores (sigmoid/softmax + bias, -inf outside the kept groups)
 *   idx[0..k)  the k best, by value descending, ties to the lower index
 *   th         x[idx[k-1]], the value a candidate must strictly exceed once k are held
 *
 * (router_avx2.c is the same with 8 lanes.)
 *
 * Same result as router_topk_ref (kernels/ref.c: k passes of `if (x[i] > x[best])`) for
 * inputs without NaN: one pass keeps idx sorted by insertion, and a vector compare against th
 * skips the 16 (8) scores at a time that cannot enter, which is nearly all of them after the
 * first few dozen. The scalar insertion is the only place a score enters, so the order and the
 * tie rule are the reference's.
 */
#include <immintrin.h>

#include "kernels_impl.h"

/* ---------------------------------------------------------------- shared insertion */


/* ---------------------------------------------------------------- AVX-512 */

void router_topk_avx512(const float *x, int n, int k, int *idx) {
    int have = 0, i = 0;
    for (; i < n && have < k; i++) topk_insert(x, idx, &have, k, i);
    for (; i + 16 <= n; i += 16) {
        __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), _mm512_set1_ps(x[idx[k - 1]]), _CMP_GT_OQ);
        while (m) {
            int b = __builtin_ctz(m);
            m &= (__mmask16)(m - 1);
            topk_insert(x, idx, &have, k, i + b);
        }
    }
    for (; i < n; i++) topk_insert(x, idx, &have, k, i);
}
