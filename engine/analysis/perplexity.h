/* perplexity.h - the log-likelihood of a token sequence under the model (moe ppl).
 *
 * Notation: T tokens t_0..t_{T-1} (BOS first, if any), N = window (context) length,
 * B = the model's forward chunk.
 *
 *   windows   window w holds tokens [w (N - 1), w (N - 1) + N), run from position 0 with an
 *             empty cache; consecutive windows share one token, so every token after the
 *             first is predicted exactly once, from at most N - 1 tokens before it
 *   nll       -sum_{i >= 1} log softmax(logits at t_{i-1})[t_i]      (natural log, double)
 *   perplexity = exp(nll / (T - 1))
 */
#ifndef MOE_PERPLEXITY_H
#define MOE_PERPLEXITY_H

#include "model.h"

typedef struct {
    double nll;          /* summed negative log-likelihood, nats */
    long predicted;      /* tokens predicted: T - 1 */
    int windows;
} perplexity_result;

/* window: N (2 <= N <= kv->S). Uses and overwrites KV slot `slot`. */
int perplexity_eval(const moe_model *m, moe_ctx *c, moe_kv *kv, int slot, const int *tokens, int T, int window,
                    perplexity_result *out, moe_error *err);

/* log softmax(logits [V])[target], in double. */
double perplexity_log_prob(const float *logits, int V, int target);

#endif
