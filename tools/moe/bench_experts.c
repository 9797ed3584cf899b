/* bench_experts.c - distinct experts per pass (see bench_experts.h). */
#include "bench_experts.h"

#include <stdlib.h>
#include <string.h>

int expert_counter_init(expert_counter *c, const moe_model *m, const moe_ctx *ctx, moe_error *err) {
    memset(c, 0, sizeof *c);
    c->L = m->cfg.num_hidden_layers;
    c->E = m->cfg.n_routed_experts > 0 ? m->cfg.n_routed_experts : 1;
    c->ctx = ctx;
    c->pass = calloc((size_t)c->L, sizeof *c->pass);
    c->seen = calloc((size_t)c->L * c->E, 1);
    c->count = calloc((size_t)c->L, sizeof *c->count);
    c->tokens = calloc((size_t)c->L, sizeof *c->tokens);
    if (!c->pass || !c->seen || !c->count || !c->tokens) {
        expert_counter_free(c);
        return moe_error_set(err, "out of memory");
    }
    return MOE_OK;
}

void expert_counter_free(expert_counter *c) {
    free(c->pass); free(c->seen); free(c->count); free(c->tokens);
    memset(c, 0, sizeof *c);
}

static void close_layer(expert_counter *c, int l) {
    int t = c->tokens[l];
    if (t >= 1 && t <= EXPERTS_MAX_TOKENS) {
        c->sum_distinct[t] += c->count[l];
        c->n_sets[t]++;
    }
    memset(c->seen + (size_t)l * c->E, 0, (size_t)c->E);
    c->count[l] = c->tokens[l] = 0;
}

void expert_counter_observe(void *counter, int layer, int seq, int pos, const route_decision *d) {
    (void)seq; (void)pos;
    expert_counter *c = counter;
    if (layer >= c->L) return;                 /* the MTP block's routing is not a main pass */
    if (c->pass[layer] != c->ctx->n_forward_calls) {
        close_layer(c, layer);
        c->pass[layer] = c->ctx->n_forward_calls;
    }
    c->tokens[layer]++;
    for (int j = 0; j < d->k; j++) {
        unsigned char *s = c->seen + (size_t)layer * c->E + d->ids[j];
        if (!*s) { *s = 1; c->count[layer]++; }
    }
}

void expert_counter_close(expert_counter *c) {
    for (int l = 0; l < c->L; l++) close_layer(c, l);
}

double expert_counter_mean(const expert_counter *c, int T) {
    return T >= 1 && T <= EXPERTS_MAX_TOKENS && c->n_sets[T] ? c->sum_distinct[T] / (double)c->n_sets[T] : 0;
}

void expert_counter_reset(expert_counter *c, int T) {
    if (T < 1 || T > EXPERTS_MAX_TOKENS) return;
    c->sum_distinct[T] = 0;
    c->n_sets[T] = 0;
}
