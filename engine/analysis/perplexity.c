/* perplexity.c - windowed log-likelihood of a token sequence (see perplexity.h). */
#include "perplexity.h"

#include <math.h>
#include <stdlib.h>

double perplexity_log_prob(const float *logits, int V, int target) {
    float mx = logits[0];
    for (int v = 1; v < V; v++) mx = logits[v] > mx ? logits[v] : mx;
    double z = 0;
    for (int v = 0; v < V; v++) z += exp((double)logits[v] - mx);
    return (double)logits[target] - mx - log(z);
}

int perplexity_eval(const moe_model *m, moe_ctx *c, moe_kv *kv, int slot, const int *tokens, int T, int window,
                    perplexity_result *out, moe_error *err) {
    out->nll = 0;
    out->predicted = 0;
    out->windows = 0;
    if (T < 2) return moe_error_set(err, "the input is %d token%s: nothing to predict (need at least 2)", T, T == 1 ? "" : "s");
    if (window < 2 || window > kv->S)
        return moe_error_set(err, "window %d must be in [2, %d] (the model's context)", window, kv->S);
    int V = m->cfg.vocab_size, B = c->B;
    float *logits = malloc(sizeof(float) * (size_t)B * V);
    if (!logits) return moe_error_set(err, "out of memory for %d x %d logits", B, V);
    for (int w0 = 0; w0 + 1 < T; w0 += window - 1) {
        int n = T - w0 < window ? T - w0 : window;
        out->windows++;
        for (int c0 = 0; c0 < n; c0 += B) {
            int nb = n - c0 < B ? n - c0 : B;
            if (model_forward_seq(m, c, kv, slot, tokens + w0 + c0, nb, c0, logits, 1, NULL, err)) { free(logits); return MOE_FAIL; }
            for (int t = 0; t < nb && c0 + t + 1 < n; t++) {
                out->nll -= perplexity_log_prob(logits + (size_t)t * V, V, tokens[w0 + c0 + t + 1]);
                out->predicted++;
            }
        }
    }
    free(logits);
    return MOE_OK;
}
