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

int generator_init(generator *g, const moe_model *m, moe_ctx *ctx, moe_kv *kv, int slot, const tokenizer *tok, sampler *s,
                   moe_error *err) {
    memset(g, 0, sizeof *g);
    if (slot < 0 || slot >= kv->n_slots) return moe_error_set(err, "KV slot %d does not exist (%d slots)", slot, kv->n_slots);
    g->model = m;
    g->ctx = ctx;
    g->kv = kv;
    g->slot = slot;
    kv_clear(kv, slot);
    g->tok = tok;
    g->smp = s;
    g->eos_id = m->cfg.eos_token_id;
    if (tok && tokenizer_eos_id(tok) >= 0) g->eos_id = tokenizer_eos_id(tok);
    g->history = malloc(sizeof(int) * (size_t)kv->S);
    g->logits = malloc(sizeof(float) * (size_t)m->cfg.vocab_size);
    tokenizer_stream_init(&g->stream);
    if (!g->history || !g->logits) {
        generator_free(g);
        return moe_error_set(err, "out of memory for the generator");
    }
    return MOE_OK;
}

void generator_free(generator *g) {
    free(g->hidden);
    free(g->mtp_next);
    free(g->verify_logits);
    free(g->draft_logits);
    free(g->p_target);
    free(g->q_draft);
    free(g->history);
    free(g->logits);
    tokenizer_stream_free(&g->stream);
    memset(g, 0, sizeof *g);
}

/* ------------------------------------------------------------------ MTP */

int generator_enable_mtp(generator *g, size_t *extra_bytes, moe_error *err) {
    const moe_config *c = &g->model->cfg;
    if (c->num_nextn_predict_layers < 1) return moe_error_set(err, "this checkpoint has no MTP module (num_nextn_predict_layers = 0)");
    size_t S = (size_t)g->kv->S, H = (size_t)c->hidden_size, V = (size_t)c->vocab_size;
    g->hidden = malloc(sizeof(float) * S * H);
    g->mtp_next = malloc(sizeof(int) * S);
    g->verify_logits = malloc(sizeof(float) * 2 * V);
    g->draft_logits = malloc(sizeof(float) * V);
    g->p_target = malloc(sizeof(float) * V);
    g->q_draft = malloc(sizeof(float) * V);
    if (!g->hidden || !g->mtp_next || !g->verify_logits || !g->draft_logits || !g->p_target || !g->q_draft)
        return moe_error_set(err, "out of memory for MTP decoding (%zu MiB of hidden states)", (S * H * 4) >> 20);
    if (extra_bytes) *extra_bytes = sizeof(float) * (S * H + 5 * V) + sizeof(int) * S;
    g->use_mtp = 1;
    g->mtp_valid = 0;
    g->n_history = 0;    /* the main hidden states of cached positions are unknown: recompute */
    return MOE_OK;
}

/* Runs the MTP module over positions [mtp_valid, n_history): position p gets
 * (hidden[p], token p+1), where token n_history is `pending` (-1: stop one short,
 * the next token is not known yet). The last position's logits land in draft_logits. */
static int mtp_catch_up(generator *g, int pending, moe_error *err) {
    int n = g->n_history, last = pending >= 0 ? n : n - 1;
    int H = g->model->cfg.hidden_size;
    if (g->mtp_valid >= last) return MOE_OK;
    int p0 = g->mtp_valid, cnt = last - p0;
    int *next = g->mtp_next;
    for (int i = 0; i < cnt; i++) next[i] = p0 + i + 1 < n ? g->history[p0 + i + 1] : pending;
    int rc = model_forward_mtp_seq(g->model, g->ctx, g->kv, 0, g->slot, g->hidden + (size_t)p0 * H, next, cnt, p0,
                                   g->draft_logits, 0, NULL, err);
    if (rc == MOE_OK) g->mtp_valid = last;
    return rc;
}

/* ------------------------------------------------------------------ prompt */

int generator_prompt(generator *g, const int *tokens, int n, moe_error *err) {
    int S = g->kv->S;
    if (n < 1) return moe_error_set(err, "the prompt is empty (no tokens)");
    if (n > S)
        return moe_error_set(err, "the prompt has %d tokens but the context holds %d (raise --ctx, or --truncate)", n, S);
    /* reuse the cached prefix; the last token is always recomputed for its logits */
    int keep = 0;
    while (keep < g->n_history && keep < n - 1 && g->history[keep] == tokens[keep]) keep++;
    double t0 = now_seconds();
    int H = g->model->cfg.hidden_size;
    float *hidden = g->use_mtp ? g->hidden + (size_t)keep * H : NULL;
    if (model_forward_seq(g->model, g->ctx, g->kv, g->slot, tokens + keep, n - keep, keep, g->logits, 0, hidden, err)) {
        g->n_history = keep;   /* positions >= keep are no longer trustworthy */
        kv_keep(g->kv, g->slot, keep);
        if (g->mtp_valid > keep - 1) g->mtp_valid = keep > 0 ? keep - 1 : 0;
        return MOE_FAIL;
    }
    memcpy(g->history, tokens, sizeof(int) * (size_t)n);
    g->n_history = n;
    if (g->use_mtp) {
        /* MTP position p reads (h_p, token p+1): valid while token p+1 was kept */
        if (g->mtp_valid > keep - 1) g->mtp_valid = keep > 0 ? keep - 1 : 0;
        if (mtp_catch_up(g, -1, err)) return MOE_FAIL;
    }
    g->n_prompt_computed = n - keep;
    g->prompt_seconds = now_seconds() - t0;
    return MOE_OK;
}

/* ------------------------------------------------------------------ sampling loop */

/* Streams one generated token; returns 1 when generation must stop (EOS, or the
 * caller said so), -1 on error. */
static int emit_token(generator *g, int id, generate_emit emit, void *ctx, moe_error *err) {
    if (id == g->eos_id) return 1;
    g->n_generated++;
    if (!emit) return 0;
    size_t len;
    /* a model's vocabulary may be padded beyond the tokenizer's (V3: 129280 vs 128815 ids) */
    if (!g->tok || !tokenizer_token_bytes(g->tok, id, &len)) return emit(ctx, id, "", 0) ? 1 : 0;
    const char *text;
    if (tokenizer_stream_push(g->tok, &g->stream, id, &text, &len, err)) return -1;
    return emit(ctx, id, text, len) ? 1 : 0;
}

static void flush_stream(generator *g, generate_emit emit, void *ctx) {
    if (!emit || !g->tok) return;
    const char *text;
    size_t len;
    tokenizer_stream_flush(&g->stream, &text, &len);
    if (len) emit(ctx, -1, text, len);
}

/* Plain decoding: sample, feed, repeat. */
static int run_plain(generator *g, int max_new, generate_emit emit, void *ctx, moe_error *err) {
    while (g->n_generated < max_new) {
        int id = sampler_sample(g->smp, g->logits);
        int stop = emit_token(g, id, emit, ctx, err);
        if (stop < 0) return MOE_FAIL;
        if (stop || g->n_generated == max_new) break;  /* the last token need not be fed */
        if (g->n_history >= g->kv->S) break;           /* context full */
        if (model_forward_seq(g->model, g->ctx, g->kv, g->slot, &id, 1, g->n_history, g->logits, 0, NULL, err))
            return MOE_FAIL;
        g->history[g->n_history++] = id;
    }
    return MOE_OK;
}

/* Self-speculative decoding with the MTP module (spec 5.3).
 * Loop invariant: `x` is the next token (chosen and emitted, not yet fed) at
 * position n = n_history; hidden[0..n) are known; MTP positions [0, mtp_valid) are done.
 *   1. draft: MTP over the missing positions up to n-1 (the last gets (h_{n-1}, x)) -> q -> d
 *   2. verify: one main pass over [x, d] at positions n, n+1 -> p (at n+1) and p' (at n+2)
 *   3. accept d with probability min(1, p(d)/q(d)) (greedy: iff argmax p == d); then the
 *      bonus token comes from p'. On rejection, draw from max(0, p - q) (greedy: argmax p);
 *      the cache entry written for d at n+1 is simply overwritten by the next pass. */
static int run_mtp(generator *g, int max_new, generate_emit emit, void *ctx, moe_error *err) {
    const moe_model *m = g->model;
    int V = m->cfg.vocab_size, H = m->cfg.hidden_size, S = g->kv->S;
    int x = sampler_sample(g->smp, g->logits);
    int stop = emit_token(g, x, emit, ctx, err);
    while (stop == 0 && g->n_generated < max_new) {
        int n = g->n_history;
        if (n + 2 > S) break;   /* no room to verify two tokens: the context is full */
        /* 1. draft */
        if (mtp_catch_up(g, x, err)) return MOE_FAIL;
        int d;
        if (g->smp->p.temperature == 0.0f) {
            d = sampler_argmax(g->draft_logits, V);
        } else {
            sampler_distribution(g->smp, g->draft_logits, g->q_draft);
            d = sampler_draw(g->smp, g->q_draft);
        }
        g->n_drafted++;
        /* 2. verify [x, d] */
        int pair[2] = {x, d};
        if (model_forward_seq(m, g->ctx, g->kv, g->slot, pair, 2, n, g->verify_logits, 1, g->hidden + (size_t)n * H, err))
            return MOE_FAIL;
        g->history[g->n_history++] = x;
        g->n_steps++;
        /* 3. accept or reject */
        int accept;
        if (g->smp->p.temperature == 0.0f) {
            accept = sampler_argmax(g->verify_logits, V) == d;
        } else {
            sampler_distribution(g->smp, g->verify_logits, g->p_target);
            accept = g->q_draft[d] > 0.0f && sampler_uniform(g->smp) * g->q_draft[d] < g->p_target[d];
        }
        if (accept) {
            g->n_accepted++;
            g->history[g->n_history++] = d;
            stop = emit_token(g, d, emit, ctx, err);
            if (stop || g->n_generated >= max_new) break;
            memcpy(g->logits, g->verify_logits + V, sizeof(float) * (size_t)V);
            x = sampler_sample(g->smp, g->logits);          /* the bonus token */
        } else {
            if (g->smp->p.temperature == 0.0f) {
                x = sampler_argmax(g->verify_logits, V);
            } else {                                         /* residual max(0, p - q), renormalised */
                double mass = 0;
                for (int i = 0; i < V; i++) {
                    float r = g->p_target[i] - g->q_draft[i];
                    g->p_target[i] = r > 0.0f ? r : 0.0f;
                    mass += g->p_target[i];
                }
                if (mass > 0) for (int i = 0; i < V; i++) g->p_target[i] = (float)(g->p_target[i] / mass);
                else sampler_distribution(g->smp, g->verify_logits, g->p_target);
                x = sampler_draw(g->smp, g->p_target);
            }
        }
        stop = emit_token(g, x, emit, ctx, err);
    }
    return stop < 0 ? MOE_FAIL : MOE_OK;
}

int generator_run(generator *g, int max_new, generate_emit emit, void *ctx, moe_error *err) {
    g->n_generated = 0;
    g->n_drafted = g->n_accepted = g->n_steps = 0;
    double t0 = now_seconds();
    int rc = MOE_OK;
    if (max_new > 0) rc = g->use_mtp ? run_mtp(g, max_new, emit, ctx, err) : run_plain(g, max_new, emit, ctx, err);
    flush_stream(g, emit, ctx);
    g->gen_seconds = now_seconds() - t0;
    return rc;
}
