/* generate.c - prompt processing and the sampling loop (see generate.h). */
#include "generate.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int generator_init(generator *g, moe_model *m, const tokenizer *tok, sampler *s, moe_error *err) {
    memset(g, 0, sizeof *g);
    g->model = m;
    g->tok = tok;
    g->smp = s;
    g->eos_id = m->cfg.eos_token_id;
    if (tok && tokenizer_eos_id(tok) >= 0) g->eos_id = tokenizer_eos_id(tok);
    g->history = malloc(sizeof(int) * (size_t)m->s.S);
    g->logits = malloc(sizeof(float) * (size_t)m->cfg.vocab_size);
    tokenizer_stream_init(&g->stream);
    if (!g->history || !g->logits) {
        generator_free(g);
        return moe_error_set(err, "out of memory for the generator");
    }
    return MOE_OK;
}

void generator_free(generator *g) {
    free(g->history);
    free(g->logits);
    tokenizer_stream_free(&g->stream);
    memset(g, 0, sizeof *g);
}

int generator_prompt(generator *g, const int *tokens, int n, moe_error *err) {
    int S = g->model->s.S;
    if (n < 1) return moe_error_set(err, "the prompt is empty (no tokens)");
    if (n > S)
        return moe_error_set(err, "the prompt has %d tokens but the context holds %d (raise --ctx, or --truncate)", n, S);
    /* reuse the cached prefix; the last token is always recomputed for its logits */
    int keep = 0;
    while (keep < g->n_history && keep < n - 1 && g->history[keep] == tokens[keep]) keep++;
    double t0 = now_seconds();
    if (model_forward(g->model, tokens + keep, n - keep, keep, g->logits, 0, NULL, err)) {
        g->n_history = keep;   /* positions >= keep are no longer trustworthy */
        return MOE_FAIL;
    }
    memcpy(g->history, tokens, sizeof(int) * (size_t)n);
    g->n_history = n;
    g->n_prompt_computed = n - keep;
    g->prompt_seconds = now_seconds() - t0;
    return MOE_OK;
}

int generator_run(generator *g, int max_new, generate_emit emit, void *ctx, moe_error *err) {
    g->n_generated = 0;
    g->gen_seconds = 0;
    double t0 = now_seconds();
    int rc = MOE_OK;
    for (int i = 0; i < max_new; i++) {
        int id = sampler_sample(g->smp, g->logits);
        if (id == g->eos_id) break;
        g->n_generated++;
        int stop = 0;
        if (emit && g->tok) {
            const char *text;
            size_t len;
            if (tokenizer_stream_push(g->tok, &g->stream, id, &text, &len, err)) { rc = MOE_FAIL; break; }
            stop = emit(ctx, id, text, len);
        } else if (emit) {
            stop = emit(ctx, id, "", 0);
        }
        if (stop || i + 1 == max_new) break;          /* the last token need not be fed */
        if (g->n_history >= g->model->s.S) break;     /* context full */
        if (model_forward(g->model, &id, 1, g->n_history, g->logits, 0, NULL, err)) { rc = MOE_FAIL; break; }
        g->history[g->n_history++] = id;
    }
    if (emit && g->tok) {
        const char *text;
        size_t len;
        tokenizer_stream_flush(&g->stream, &text, &len);
        if (len) emit(ctx, -1, text, len);
    }
    g->gen_seconds = now_seconds() - t0;
    return rc;
}
