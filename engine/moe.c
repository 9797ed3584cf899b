/* moe.c - dense SwiGLU MLP and the MoE block (spec section 4).
 *
 * Notation: H hidden, E experts, K experts per token, Im expert width,
 * Ns shared multiplier (ONE shared MLP of width Im*Ns), n tokens in the chunk.
 *
 *   y = sum_{j<K} w_j Expert_{ids_j}(x) + SharedExpert(x)
 *
 * Dispatch: route all n tokens, count tokens per expert, lay the (token, weight)
 * pairs out grouped by expert, then run each active expert once on its gathered
 * tokens (a small matrix product instead of K matrix-vector products per token)
 * and scatter-add the weighted outputs.
 */
#include "moe.h"

#include <string.h>

#include "kernels.h"
#include "linear.h"

/* ------------------------------------------------------------------ SwiGLU */

void mlp_forward(moe_model *m, const mlp_weights *w, int width, const float *x, int n, float *out) {
    model_state *s = &m->s;
    linear(m->pool, &w->gate, x, n, s->gate);
    linear(m->pool, &w->up, x, n, s->up);
    silu_mul(s->gate, s->up, n * width);
    linear(m->pool, &w->down, s->gate, n, out);
}

/* ------------------------------------------------------------------ MoE */

void moe_forward(moe_model *m, int layer, const float *xn, int n, int pos, float *out) {
    const moe_config *c = &m->cfg;
    const layer_weights *lw = &m->w.layers[layer];
    model_state *s = &m->s;
    int H = c->hidden_size, E = c->n_routed_experts, K = m->K;

    uint64_t t0 = profile_start(m);
    /* 1. route every token */
    linear(m->pool, &lw->router, xn, n, s->logits_b);          /* [n, E] gate logits */
    for (int t = 0; t < n; t++) {
        route_decision d;
        router_select(c, &m->opt.routing, s->logits_b + (size_t)t * E, lw->router_bias, &s->router, &d);
        memcpy(s->route_ids + (size_t)t * K, d.ids, sizeof(int) * (size_t)K);
        memcpy(s->route_w + (size_t)t * K, d.weights, sizeof(float) * (size_t)K);
        if (m->on_route) m->on_route(m->on_route_ctx, layer, pos + t, &d);
    }
    /* 2. group (token, weight) pairs by expert */
    memset(s->expert_count, 0, sizeof(int) * (size_t)E);
    for (int i = 0; i < n * K; i++) s->expert_count[s->route_ids[i]]++;
    s->expert_start[0] = 0;
    for (int e = 0; e < E; e++) s->expert_start[e + 1] = s->expert_start[e] + s->expert_count[e];
    memset(s->expert_count, 0, sizeof(int) * (size_t)E);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < K; j++) {
            int e = s->route_ids[t * K + j], slot = s->expert_start[e] + s->expert_count[e]++;
            s->expert_tok[slot] = t;
            s->expert_w[slot] = s->route_w[t * K + j];
        }
    t0 = profile_mark(m, PHASE_ROUTER, t0);
    /* 3. run each active expert once over its tokens, scatter-add weighted outputs */
    memset(out, 0, sizeof(float) * (size_t)n * H);
    for (int e = 0; e < E; e++) {
        int cnt = s->expert_count[e], first = s->expert_start[e];
        if (!cnt) continue;
        for (int i = 0; i < cnt; i++)
            memcpy(s->xe + (size_t)i * H, xn + (size_t)s->expert_tok[first + i] * H, sizeof(float) * (size_t)H);
        mlp_forward(m, &lw->experts[e], c->moe_intermediate_size, s->xe, cnt, s->ye);
        for (int i = 0; i < cnt; i++)
            vec_axpy(out + (size_t)s->expert_tok[first + i] * H, s->expert_w[first + i], s->ye + (size_t)i * H, H);
    }
    t0 = profile_mark(m, PHASE_EXPERTS, t0);
    /* 4. the shared expert, weight 1 */
    if (lw->has_shared) {
        mlp_forward(m, &lw->shared, c->moe_intermediate_size * c->n_shared_experts, xn, n, s->ye);
        for (int i = 0; i < n * H; i++) out[i] += s->ye[i];
    }
    profile_mark(m, PHASE_SHARED, t0);
}
