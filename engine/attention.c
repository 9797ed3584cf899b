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
#include <stdatomic.h>
#include <string.h>

#include "kernels.h"
#include "linear.h"

/* multiply-adds over the cache below which one thread beats waking the pool */
#define ATTEND_PARALLEL_MIN (256 * 1024)

/* ------------------------------------------------------------------ cache */

float *attention_cache_row(const moe_model *m, int layer, int p) {
    const moe_config *c = &m->cfg;
    size_t width = (size_t)c->kv_lora_rank + c->qk_rope_head_dim;
    return m->s.kv_cache + ((size_t)layer * m->s.S + p) * width;
}

/* ------------------------------------------------------------------ one head, one token */

/* One share's scratch: q_abs [R], o_lat [R], one weight row [R], scores [S]. */
typedef struct { float *q_abs, *o_lat, *row, *scores; } head_scratch;

static head_scratch scratch_of_share(const moe_model *m, int share) {
    int R = m->cfg.kv_lora_rank;
    float *base = m->s.share_attn + (size_t)share * m->s.attn_scratch;
    return (head_scratch){ base, base + R, base + 2 * R, base + 3 * R };
}

/* Absorbed attention of head h of one query at position p. q: this head's [dq] (rotated).
 * Writes o [dv]. */
static void head_absorbed(const moe_model *m, const layer_weights *lw, int layer, int h, const float *qh, int p,
                          float *o, head_scratch *w) {
    const moe_config *c = &m->cfg;
    int dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim, R = c->kv_lora_rank;
    int head_row = h * (dn + dv);
    /* q_abs = W_UK[h]^T q_nope: a sum of the head's dn key rows */
    memset(w->q_abs, 0, sizeof(float) * (size_t)R);
    for (int d = 0; d < dn; d++) {
        mat_row_f32(&lw->kv_b, head_row + d, w->row);
        vec_axpy(w->q_abs, qh[d], w->row, R);
    }
    float scale = m->rope.softmax_scale;
    for (int t = 0; t <= p; t++) {
        const float *kv = attention_cache_row(m, layer, t);
        w->scores[t] = scale * (vec_dot(w->q_abs, kv, R) + vec_dot(qh + dn, kv + R, dr));
    }
    softmax(w->scores, p + 1);
    memset(w->o_lat, 0, sizeof(float) * (size_t)R);
    for (int t = 0; t <= p; t++) vec_axpy(w->o_lat, w->scores[t], attention_cache_row(m, layer, t), R);
    /* o = W_UV[h] o_lat: the head's dv value rows */
    matvec_rows(&lw->kv_b, w->o_lat, o, head_row + dn, head_row + dn + dv);
}

/* Naive attention of head h: K and V of every cached position are in s->kv_full. */
static void head_naive(const moe_model *m, int layer, int h, const float *qh, int p, float *o, head_scratch *w) {
    const moe_config *c = &m->cfg;
    int dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim, R = c->kv_lora_rank;
    int nh = c->num_attention_heads, width = nh * (dn + dv);
    const float *kv_full = m->s.kv_full;
    float scale = m->rope.softmax_scale;
    for (int t = 0; t <= p; t++) {
        const float *k_nope = kv_full + (size_t)t * width + h * (dn + dv);
        const float *k_pe = attention_cache_row(m, layer, t) + R;
        w->scores[t] = scale * (vec_dot(qh, k_nope, dn) + vec_dot(qh + dn, k_pe, dr));
    }
    softmax(w->scores, p + 1);
    memset(o, 0, sizeof(float) * (size_t)dv);
    for (int t = 0; t <= p; t++) vec_axpy(o, w->scores[t], kv_full + (size_t)t * width + h * (dn + dv) + dn, dv);
}

/* The (token, head) pairs of a chunk as work items for the pool's shares. */
typedef struct {
    const moe_model *m;
    const layer_weights *lw;
    int layer, n, pos;
    atomic_int next;
} attend_job;

static void attend_share(void *arg, int share, int n_shares) {
    (void)n_shares;
    attend_job *job = arg;
    const moe_model *m = job->m;
    const moe_config *c = &m->cfg;
    int nh = c->num_attention_heads, dq = c->qk_nope_head_dim + c->qk_rope_head_dim, dv = c->v_head_dim;
    head_scratch w = scratch_of_share(m, share);
    for (;;) {
        int item = atomic_fetch_add(&job->next, 1);
        if (item >= job->n * nh) break;
        int t = item / nh, h = item % nh;
        const float *qh = m->s.q + (size_t)t * nh * dq + (size_t)h * dq;
        float *o = m->s.attn + (size_t)t * nh * dv + (size_t)h * dv;
        if (m->opt.attn == ATTN_NAIVE) head_naive(m, job->layer, h, qh, job->pos + t, o, &w);
        else head_absorbed(m, job->lw, job->layer, h, qh, job->pos + t, o, &w);
    }
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
    /* rotate the queries' rope parts */
    for (int t = 0; t < n; t++)
        for (int h = 0; h < nh; h++)
            rope_apply(s->q + (size_t)t * nh * dq + (size_t)h * dq + dn, s->rope_cs + (size_t)t * dr, dr, m->rope.interleaved);
    /* attend: every (token, head) pair is independent; split them over the pool when it pays */
    attend_job job = { m, lw, layer, n, pos, 0 };
    size_t work = (size_t)n * nh * (size_t)(pos + n) * (size_t)(R + dr);
    if (m->pool && threadpool_threads(m->pool) > 1 && n * nh > 1 && work >= ATTEND_PARALLEL_MIN)
        threadpool_run(m->pool, attend_share, &job);
    else
        attend_share(&job, 0, 1);
    t0 = profile_mark(m, PHASE_ATTN_CORE, t0);
    linear(m->pool, &lw->o, s->attn, n, out);
    profile_mark(m, PHASE_ATTN_PROJ, t0);
}
