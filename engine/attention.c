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

#include "blas.h"
#include "kernels.h"
#include "linear.h"

/* multiply-adds (cache and kv_b rows) below which one thread beats waking the pool */
#define ATTEND_PARALLEL_MIN (256 * 1024)
/* chunks at least this long attend through matrix products (attend_chunk_gemm), in
 * blocks of this many queries */
#define ATTEND_GEMM_MIN 8
#define ATTEND_QUERY_BLOCK 64

/* ------------------------------------------------------------------ cache */

float *attention_cache_row(const moe_model *m, int layer, int p) {
    const moe_config *c = &m->cfg;
    size_t width = (size_t)c->kv_lora_rank + c->qk_rope_head_dim;
    return m->s.kv_cache + ((size_t)layer * m->s.S + p) * width;
}

/* ------------------------------------------------------------------ one head, one token */

/* One share's scratch: q_abs [R], o_lat [R], scores [S]. */
typedef struct { float *q_abs, *o_lat, *scores; } head_scratch;

static head_scratch scratch_of_share(const moe_model *m, int share) {
    int R = m->cfg.kv_lora_rank;
    float *base = m->s.share_attn + (size_t)share * m->s.attn_scratch;
    return (head_scratch){ base, base + R, base + 2 * R };
}

/* Absorbed attention of head h of one query at position p. q: this head's [dq] (rotated).
 * Writes o [dv]. */
static void head_absorbed(const moe_model *m, const layer_weights *lw, int layer, int h, const float *qh, int p,
                          float *o, head_scratch *w) {
    const moe_config *c = &m->cfg;
    int dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim, R = c->kv_lora_rank;
    int head_row = h * (dn + dv);
    /* q_abs = W_UK[h]^T q_nope: a sum of the head's dn key rows */
    matvec_t_rows(&lw->kv_b, qh, w->q_abs, head_row, head_row + dn);
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

/* A chunk's work items for the pool's shares: (token, head) pairs, or whole heads in
 * attend_chunk_gemm; `next` is the next unclaimed item. */
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

/* ------------------------------------------------------------------ a prefill chunk */

/* One share of attend_chunk_gemm (below): claims heads until none is left. */
static void attend_chunk_share(void *arg, int share, int n_shares) {
    (void)n_shares;
    attend_job *job = arg;
    const moe_model *m = job->m;
    const moe_config *c = &m->cfg;
    const model_state *s = &m->s;
    int nh = c->num_attention_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim;
    int dq = dn + dr, dv = c->v_head_dim, R = c->kv_lora_rank, n = job->n, pos = job->pos, S = pos + n, ld = R + dr;
    const float *cache = attention_cache_row(m, job->layer, 0);
    float scale = m->rope.softmax_scale;
    /* this share's scratch */
    float *qabs = s->pf_qabs + (size_t)share * s->B * R, *p = s->pf_p + (size_t)share * s->B * s->S;
    float *olat = s->pf_olat + (size_t)share * s->B * R, *w = s->pf_w + (size_t)share * (dn + dv) * R;
    for (;;) {
        int h = atomic_fetch_add(&job->next, 1);
        if (h >= nh) break;
        /* this head's kv_b rows as f32: W_UK [dn, R] then W_UV [dv, R] */
        for (int r = 0; r < dn + dv; r++) mat_row_f32(&job->lw->kv_b, h * (dn + dv) + r, w + (size_t)r * R);
        const float *q = s->q + (size_t)h * dq;
        blas_sgemm(0, n, R, dn, 1.0f, q, nh * dq, w, R, 0.0f, qabs, R);
        /* scores, softmax and the latent sum in blocks of queries, each against only the
         * positions its last query sees (causal: about half the products of a long chunk) */
        for (int t0 = 0; t0 < n; t0 += ATTEND_QUERY_BLOCK) {
            int nb = n - t0 < ATTEND_QUERY_BLOCK ? n - t0 : ATTEND_QUERY_BLOCK, seen = pos + t0 + nb;
            float *pb = p + (size_t)t0 * S;
            blas_sgemm(1, nb, seen, R, scale, qabs + (size_t)t0 * R, R, cache, ld, 0.0f, pb, S);
            blas_sgemm(1, nb, seen, dr, scale, q + (size_t)t0 * nh * dq + dn, nh * dq, cache + R, ld, 1.0f, pb, S);
            for (int t = t0; t < t0 + nb; t++) {
                float *row = p + (size_t)t * S;
                int visible = pos + t + 1;                   /* causal: positions 0..pos+t */
                softmax(row, visible);
                memset(row + visible, 0, sizeof(float) * (size_t)(seen - visible));
            }
            blas_sgemm(0, nb, R, seen, 1.0f, pb, S, cache, ld, 0.0f, olat + (size_t)t0 * R, R);
        }
        blas_sgemm(1, n, dv, R, 1.0f, olat, R, w + (size_t)dn * R, R, 0.0f,
                    s->attn + (size_t)h * dv, nh * dv);
    }
}

/* Absorbed attention of a whole chunk, one head per work item, as matrix products
 * (blas_sgemm: OpenBLAS, one thread each; the heads are split over the pool):
 *   Q_abs = Q_nope W_UK[h]                         [n, R]
 *   S     = scale (Q_abs C^T + Q_pe K_pe^T)        [n, pos+n], causal mask, row softmax -> P
 *   O_lat = P C                                    [n, R]
 *   O[h]  = O_lat W_UV[h]^T                        [n, dv]
 * C and K_pe are the layer's cache rows (stride R + dr). The same math as head_absorbed,
 * summed in another order; used for chunks of ATTEND_GEMM_MIN tokens or more, so that
 * decoding and MTP verification (1-2 tokens) keep the per-token path. */
static void attend_chunk_gemm(moe_model *m, const layer_weights *lw, int layer, int n, int pos) {
    attend_job job = { m, lw, layer, n, pos, 0 };
    if (m->pool && threadpool_threads(m->pool) > 1 && m->cfg.num_attention_heads > 1)
        threadpool_run(m->pool, attend_chunk_share, &job);
    else
        attend_chunk_share(&job, 0, 1);
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
    /* attend: a prefill chunk as matrix products; otherwise every (token, head) pair is
     * independent, split over the pool when it pays */
    attend_job job = { m, lw, layer, n, pos, 0 };
    /* multiply-adds: over the cache, and the head's kv_b rows (W_UK^T q, W_UV o_lat), which
     * decoding reads from memory: splitting them keeps both threads streaming weights */
    size_t work = (size_t)n * nh * ((size_t)(pos + n) * (size_t)(R + dr) + (size_t)(dn + dv) * R);
    if (m->opt.attn == ATTN_ABSORB && n >= ATTEND_GEMM_MIN)
        attend_chunk_gemm(m, lw, layer, n, pos);
    else if (m->pool && threadpool_threads(m->pool) > 1 && n * nh > 1 && work >= ATTEND_PARALLEL_MIN)
        threadpool_run(m->pool, attend_share, &job);
    else
        attend_share(&job, 0, 1);
    t0 = profile_mark(m, PHASE_ATTN_CORE, t0);
    linear(m->pool, &lw->o, s->attn, n, out);
    profile_mark(m, PHASE_ATTN_PROJ, t0);
}
