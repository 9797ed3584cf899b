/* attention.c - Multi-head Latent Attention (spec section 3).
 *
 * Notation: H hidden, nh heads, dn nope dims, dr rope dims, dq = dn + dr,
 * dv value dims, rq q_lora_rank, R kv_lora_rank, S cache positions, n tokens.
 *
 *   c_q   = RMSNorm(q_a_proj x)            q = q_b_proj c_q      (or q = q_proj x)
 *   kv    = kv_a_proj_with_mqa x           c_kv = RMSNorm(kv[:R])   k_pe = RoPE(kv[R:])
 *   q[h]  = [q_nope (dn) | RoPE(q_pe) (dr)]           kv_b rows of head h: [W_UK (dn) | W_UV (dv)]
 * absorbed (decoding; caches only c_kv and k_pe):
 *   q_abs = W_UK^T q_nope          score[s] = scale (q_abs . c_kv[s] + q_pe . k_pe[s])
 *   o_lat = sum_s softmax(score)[s] c_kv[s]        o[h] = W_UV o_lat
 * naive (materialises per-head K and V; for checking):
 *   k[s] = [W_UK c_kv[s] | k_pe[s]]   v[s] = W_UV c_kv[s]    o[h] = sum_s p[s] v[s]
 *   out = o_proj concat_h o[h]
 */
#include "attention.h"

#include <math.h>
#include <string.h>

#include "kernels.h"
#include "linear.h"

/* ------------------------------------------------------------------ cache */

float *attention_cache_row(const moe_model *m, int layer, int p) {
    const moe_config *c = &m->cfg;
    size_t width = (size_t)c->kv_lora_rank + c->qk_rope_head_dim;
    return m->s.kv_cache + ((size_t)layer * m->s.S + p) * width;
}

/* ------------------------------------------------------------------ one head, one token */

/* Absorbed attention of head h of one query at position p. q: this head's [dq] (rotated).
 * Writes o [dv]. */
static void head_absorbed(moe_model *m, const layer_weights *lw, int layer, int h, const float *qh, int p, float *o) {
    const moe_config *c = &m->cfg;
    model_state *s = &m->s;
    int dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim, R = c->kv_lora_rank;
    int head_row = h * (dn + dv);
    float *q_abs = s->q_abs;
    /* q_abs = W_UK[h]^T q_nope: a sum of the head's dn key rows */
    memset(q_abs, 0, sizeof(float) * (size_t)R);
    for (int d = 0; d < dn; d++) {
        mat_row_f32(&lw->kv_b, head_row + d, s->row);
        vec_axpy(q_abs, qh[d], s->row, R);
    }
    float scale = m->rope.softmax_scale;
    for (int t = 0; t <= p; t++) {
        const float *kv = attention_cache_row(m, layer, t);
        s->scores[t] = scale * (vec_dot(q_abs, kv, R) + vec_dot(qh + dn, kv + R, dr));
    }
    softmax(s->scores, p + 1);
    memset(s->o_lat, 0, sizeof(float) * (size_t)R);
    for (int t = 0; t <= p; t++) vec_axpy(s->o_lat, s->scores[t], attention_cache_row(m, layer, t), R);
    /* o = W_UV[h] o_lat: the head's dv value rows */
    matvec_rows(&lw->kv_b, s->o_lat, o, head_row + dn, head_row + dn + dv);
}

/* Naive attention of head h: K and V of every cached position are in s->kv_full. */
static void head_naive(moe_model *m, int layer, int h, const float *qh, int p, float *o) {
    const moe_config *c = &m->cfg;
    model_state *s = &m->s;
    int dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim, R = c->kv_lora_rank;
    int nh = c->num_attention_heads, width = nh * (dn + dv);
    float scale = m->rope.softmax_scale;
    for (int t = 0; t <= p; t++) {
        const float *k_nope = s->kv_full + (size_t)t * width + h * (dn + dv);
        const float *k_pe = attention_cache_row(m, layer, t) + R;
        s->scores[t] = scale * (vec_dot(qh, k_nope, dn) + vec_dot(qh + dn, k_pe, dr));
    }
    softmax(s->scores, p + 1);
    memset(o, 0, sizeof(float) * (size_t)dv);
    for (int t = 0; t <= p; t++) vec_axpy(o, s->scores[t], s->kv_full + (size_t)t * width + h * (dn + dv) + dn, dv);
}

/* ------------------------------------------------------------------ layer */

void attention_forward(moe_model *m, int layer, const float *xn, int n, int pos, float *out) {
    const moe_config *c = &m->cfg;
    const layer_weights *lw = &m->w.layers[layer];
    model_state *s = &m->s;
    int nh = c->num_attention_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim;
    int dq = dn + dr, dv = c->v_head_dim, R = c->kv_lora_rank, rq = c->q_lora_rank;
    float eps = c->rms_norm_eps;

    uint64_t t0 = profile_start(m);
    /* queries */
    if (rq > 0) {
        linear(m->pool, &lw->q_a, xn, n, s->cq);
        for (int t = 0; t < n; t++) rmsnorm(s->cq + (size_t)t * rq, s->cq + (size_t)t * rq, lw->q_a_norm, rq, eps);
        linear(m->pool, &lw->q_b, s->cq, n, s->q);
    } else {
        linear(m->pool, &lw->q, xn, n, s->q);
    }
    /* latent KV of the new tokens -> cache */
    linear(m->pool, &lw->kv_a, xn, n, s->kv);
    for (int t = 0; t < n; t++) {
        const float *kv = s->kv + (size_t)t * (R + dr);
        float *row = attention_cache_row(m, layer, pos + t);
        rmsnorm(row, kv, lw->kv_a_norm, R, eps);         /* c_kv: normalised */
        memcpy(row + R, kv + R, sizeof(float) * (size_t)dr);
        rope_apply(row + R, s->rope_cs + (size_t)t * dr, dr, m->rope.interleaved);   /* k_pe: rotated, not normalised */
    }
    t0 = profile_mark(m, PHASE_ATTN_PROJ, t0);
    /* naive path: materialise K_nope and V of every position */
    if (m->opt.attn == ATTN_NAIVE)
        for (int t = 0; t < pos + n; t++)
            matvec_rows(&lw->kv_b, attention_cache_row(m, layer, t), s->kv_full + (size_t)t * nh * (dn + dv), 0,
                        nh * (dn + dv));
    /* attend, token by token, head by head */
    for (int t = 0; t < n; t++) {
        for (int h = 0; h < nh; h++) {
            float *qh = s->q + (size_t)t * nh * dq + (size_t)h * dq;
            float *o = s->attn + (size_t)t * nh * dv + (size_t)h * dv;
            rope_apply(qh + dn, s->rope_cs + (size_t)t * dr, dr, m->rope.interleaved);
            if (m->opt.attn == ATTN_NAIVE) head_naive(m, layer, h, qh, pos + t, o);
            else head_absorbed(m, lw, layer, h, qh, pos + t, o);
        }
    }
    t0 = profile_mark(m, PHASE_ATTN_CORE, t0);
    linear(m->pool, &lw->o, s->attn, n, out);
    profile_mark(m, PHASE_ATTN_PROJ, t0);
}
