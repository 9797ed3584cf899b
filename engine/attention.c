/* attention.c - Multi-head Latent Attention (spec section 3).
 *
 * Notation: H hidden, nh heads, dn nope dims, dr rope dims, dq = dn + dr,
 * dv value dims, rq q_lora_rank, R kv_lora_rank, S cache positions, n tokens of a pass
 * (each of its own sequence and position: context.h).
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

/* ------------------------------------------------------------------ one head, one token */

/* One share's scratch: q_abs [R], o_lat [R], scores [S]. */
typedef struct { float *q_abs, *o_lat, *scores; } head_scratch;

static head_scratch scratch_of_share(const moe_ctx *c, int R, int share) {
    float *base = c->share_attn + (size_t)share * c->attn_scratch;
    return (head_scratch){ base, base + R, base + 2 * R };
}

/* Absorbed attention of head h of one query at position p of slot `seq`. q: this head's
 * [dq] (rotated). Writes o [dv]. */
static void head_absorbed(const moe_model *m, const moe_kv *kv, const layer_weights *lw, int layer, int h, const float *qh,
                          int seq, int p, float *o, head_scratch *w) {
    const moe_config *c = &m->cfg;
    int dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim, R = c->kv_lora_rank;
    int head_row = h * (dn + dv);
    /* q_abs = W_UK[h]^T q_nope: a sum of the head's dn key rows */
    matvec_t_rows(&lw->kv_b, qh, w->q_abs, head_row, head_row + dn);
    float scale = m->rope.softmax_scale;
    const float *cache = kv_row(kv, seq, layer, 0);
    size_t ld = (size_t)kv->width;
    for (int t = 0; t <= p; t++) {
        const float *row = cache + (size_t)t * ld;
        w->scores[t] = scale * (vec_dot(w->q_abs, row, R) + vec_dot(qh + dn, row + R, dr));
    }
    softmax(w->scores, p + 1);
    memset(w->o_lat, 0, sizeof(float) * (size_t)R);
    for (int t = 0; t <= p; t++) vec_axpy(w->o_lat, w->scores[t], cache + (size_t)t * ld, R);
    /* o = W_UV[h] o_lat: the head's dv value rows */
    matvec_rows(&lw->kv_b, w->o_lat, o, head_row + dn, head_row + dn + dv);
}

/* Naive attention of head h: K and V of every cached position of the token's sequence are
 * in c->kv_full (attend_naive_span). */
static void head_naive(const moe_model *m, const moe_ctx *ctx, int layer, int h, const float *qh, int seq, int p, float *o,
                       head_scratch *w) {
    const moe_config *c = &m->cfg;
    int dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim, R = c->kv_lora_rank;
    int nh = c->num_attention_heads, width = nh * (dn + dv);
    const float *kv_full = ctx->kv_full;
    float scale = m->rope.softmax_scale;
    for (int t = 0; t <= p; t++) {
        const float *k_nope = kv_full + (size_t)t * width + h * (dn + dv);
        const float *k_pe = kv_row(ctx->kv, seq, layer, t) + R;
        w->scores[t] = scale * (vec_dot(qh, k_nope, dn) + vec_dot(qh + dn, k_pe, dr));
    }
    softmax(w->scores, p + 1);
    memset(o, 0, sizeof(float) * (size_t)dv);
    for (int t = 0; t <= p; t++) vec_axpy(o, w->scores[t], kv_full + (size_t)t * width + h * (dn + dv) + dn, dv);
}

/* Work items for the pool's shares: (token, head) pairs of the tokens tok[0..n_tok), or
 * whole heads of one span in attend_span_gemm; `next` is the next unclaimed item. */
typedef struct {
    const moe_model *m;
    moe_ctx *c;
    const layer_weights *lw;
    int layer;
    const int *tok;           /* [n_tok] pass token indices (per-token items) */
    int n_tok;
    const batch_span *span;   /* attend_span_gemm: the span */
    int naive;                /* naive MLA (head_naive) instead of absorbed */
    atomic_int next;
} attend_job;

static void attend_share(void *arg, int share, int n_shares) {
    (void)n_shares;
    attend_job *job = arg;
    const moe_model *m = job->m;
    const moe_ctx *c = job->c;
    const moe_config *cfg = &m->cfg;
    int nh = cfg->num_attention_heads, dq = cfg->qk_nope_head_dim + cfg->qk_rope_head_dim, dv = cfg->v_head_dim;
    head_scratch w = scratch_of_share(c, cfg->kv_lora_rank, share);
    for (;;) {
        int item = atomic_fetch_add(&job->next, 1);
        if (item >= job->n_tok * nh) break;
        int t = job->tok[item / nh], h = item % nh;
        const float *qh = c->q + (size_t)t * nh * dq + (size_t)h * dq;
        float *o = c->attn + (size_t)t * nh * dv + (size_t)h * dv;
        if (job->naive) head_naive(m, c, job->layer, h, qh, c->seq[t], c->pos[t], o, &w);
        else head_absorbed(m, c->kv, job->lw, job->layer, h, qh, c->seq[t], c->pos[t], o, &w);
    }
}

/* ------------------------------------------------------------------ a prefill span */

/* One share of attend_span_gemm (below): claims heads until none is left. */
static void attend_span_share(void *arg, int share, int n_shares) {
    (void)n_shares;
    attend_job *job = arg;
    const moe_model *m = job->m;
    const moe_config *c = &m->cfg;
    const moe_ctx *s = job->c;
    int nh = c->num_attention_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim;
    int dq = dn + dr, dv = c->v_head_dim, R = c->kv_lora_rank, ld = R + dr;
    int n = job->span->n, pos = job->span->pos0, t_first = job->span->i0, S = pos + n;
    const float *cache = kv_row(s->kv, job->span->seq, job->layer, 0);
    float scale = m->rope.softmax_scale;
    /* this share's scratch */
    float *qabs = s->pf_qabs + (size_t)share * s->B * R, *p = s->pf_p + (size_t)share * s->B * s->S;
    float *olat = s->pf_olat + (size_t)share * s->B * R, *w = s->pf_w + (size_t)share * (dn + dv) * R;
    for (;;) {
        int h = atomic_fetch_add(&job->next, 1);
        if (h >= nh) break;
        /* this head's kv_b rows as f32: W_UK [dn, R] then W_UV [dv, R] */
        for (int r = 0; r < dn + dv; r++) mat_row_f32(&job->lw->kv_b, h * (dn + dv) + r, w + (size_t)r * R);
        const float *q = s->q + (size_t)t_first * nh * dq + (size_t)h * dq;
        blas_sgemm(0, n, R, dn, 1.0f, q, nh * dq, w, R, 0.0f, qabs, R);
        /* scores, softmax and the latent sum in blocks of queries, each against only the
         * positions its last query sees (causal: about half the products of a long span) */
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
                    s->attn + (size_t)t_first * nh * dv + (size_t)h * dv, nh * dv);
    }
}

/* Absorbed attention of a span (consecutive tokens of one sequence), one head per work
 * item, as matrix products (blas_sgemm: OpenBLAS, one thread each; the heads are split over
 * the pool):
 *   Q_abs = Q_nope W_UK[h]                         [n, R]
 *   S     = scale (Q_abs C^T + Q_pe K_pe^T)        [n, pos+n], causal mask, row softmax -> P
 *   O_lat = P C                                    [n, R]
 *   O[h]  = O_lat W_UV[h]^T                        [n, dv]
 * C and K_pe are the sequence's cache rows of this layer (stride R + dr). The same math as
 * head_absorbed, summed in another order; used for spans of ATTEND_GEMM_MIN tokens or more,
 * so that decoding and MTP verification (1-2 tokens) keep the per-token path. */
static void attend_span_gemm(const moe_model *m, moe_ctx *c, const layer_weights *lw, int layer, const batch_span *sp) {
    attend_job job = { .m = m, .c = c, .lw = lw, .layer = layer, .span = sp };
    if (c->pool && threadpool_threads(c->pool) > 1 && m->cfg.num_attention_heads > 1)
        threadpool_run(c->pool, attend_span_share, &job);
    else
        attend_span_share(&job, 0, 1);
}

/* Runs per-token items over tok[0..n_tok), split over the pool when it pays. */
static void attend_tokens(const moe_model *m, moe_ctx *c, const layer_weights *lw, int layer, const int *tok, int n_tok,
                          int naive) {
    const moe_config *cfg = &m->cfg;
    int nh = cfg->num_attention_heads, dn = cfg->qk_nope_head_dim, dr = cfg->qk_rope_head_dim, dv = cfg->v_head_dim;
    int R = cfg->kv_lora_rank;
    if (n_tok == 0) return;
    attend_job job = { .m = m, .c = c, .lw = lw, .layer = layer, .tok = tok, .n_tok = n_tok, .naive = naive };
    /* multiply-adds: over the cache, and the head's kv_b rows (W_UK^T q, W_UV o_lat), which
     * decoding reads from memory: splitting them keeps both threads streaming weights */
    size_t work = 0;
    for (int i = 0; i < n_tok; i++)
        work += (size_t)nh * ((size_t)(c->pos[tok[i]] + 1) * (size_t)(R + dr) + (size_t)(dn + dv) * R);
    if (c->pool && threadpool_threads(c->pool) > 1 && n_tok * nh > 1 && work >= ATTEND_PARALLEL_MIN)
        threadpool_run(c->pool, attend_share, &job);
    else
        attend_share(&job, 0, 1);
}

/* Naive MLA of a span: materialise K_nope and V of every position its sequence sees. */
static void attend_naive_span(const moe_model *m, moe_ctx *c, const layer_weights *lw, int layer, const batch_span *sp) {
    const moe_config *cfg = &m->cfg;
    int nh = cfg->num_attention_heads, dn = cfg->qk_nope_head_dim, dv = cfg->v_head_dim;
    for (int t = 0; t < sp->pos0 + sp->n; t++)
        matvec_rows(&lw->kv_b, kv_row(c->kv, sp->seq, layer, t), c->kv_full + (size_t)t * nh * (dn + dv), 0, nh * (dn + dv));
    for (int i = 0; i < sp->n; i++) c->attn_tok[i] = sp->i0 + i;
    attend_tokens(m, c, lw, layer, c->attn_tok, sp->n, 1);
}

/* ------------------------------------------------------------------ layer */

void attention_cache_write(const moe_model *m, moe_ctx *s, int layer, const float *xn) {
    const moe_config *c = &m->cfg;
    const layer_weights *lw = &m->w.layers[layer];
    int dr = c->qk_rope_head_dim, R = c->kv_lora_rank, n = s->n;
    /* latent KV of the new tokens -> each one's sequence's cache */
    linear(s->pool, &lw->kv_a, xn, n, s->kv_new);
    for (int t = 0; t < n; t++) {
        const float *kv = s->kv_new + (size_t)t * (R + dr);
        float *row = kv_row(s->kv, s->seq[t], layer, s->pos[t]);
        rmsnorm(row, kv, lw->kv_a_norm, R, c->rms_norm_eps);   /* c_kv: normalised */
        memcpy(row + R, kv + R, sizeof(float) * (size_t)dr);
        rope_apply(row + R, s->rope_cs + (size_t)t * dr, dr, m->rope.interleaved);   /* k_pe: rotated, not normalised */
    }
}

void attention_forward(const moe_model *m, moe_ctx *s, int layer, const float *xn, float *out) {
    const moe_config *c = &m->cfg;
    const layer_weights *lw = &m->w.layers[layer];
    int nh = c->num_attention_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim;
    int dq = dn + dr, rq = c->q_lora_rank, n = s->n;
    float eps = c->rms_norm_eps;

    uint64_t t0 = profile_start(s);
    /* queries */
    if (rq > 0) {
        linear(s->pool, &lw->q_a, xn, n, s->cq);
        for (int t = 0; t < n; t++) rmsnorm(s->cq + (size_t)t * rq, s->cq + (size_t)t * rq, lw->q_a_norm, rq, eps);
        linear(s->pool, &lw->q_b, s->cq, n, s->q);
    } else {
        linear(s->pool, &lw->q, xn, n, s->q);
    }
    attention_cache_write(m, s, layer, xn);
    t0 = profile_mark(s, PHASE_ATTN_PROJ, t0);
    /* rotate the queries' rope parts */
    for (int t = 0; t < n; t++)
        for (int h = 0; h < nh; h++)
            rope_apply(s->q + (size_t)t * nh * dq + (size_t)h * dq + dn, s->rope_cs + (size_t)t * dr, dr, m->rope.interleaved);
    /* attend: a long span of one sequence (a prefill chunk) as matrix products; every other
     * (token, head) pair is independent, against its own sequence's cache */
    if (m->opt.attn == ATTN_NAIVE) {
        for (int i = 0; i < s->n_spans; i++) attend_naive_span(m, s, lw, layer, &s->spans[i]);
    } else {
        int n_tok = 0;
        for (int i = 0; i < s->n_spans; i++) {
            const batch_span *sp = &s->spans[i];
            if (sp->n >= ATTEND_GEMM_MIN) attend_span_gemm(m, s, lw, layer, sp);
            else for (int j = 0; j < sp->n; j++) s->attn_tok[n_tok++] = sp->i0 + j;
        }
        attend_tokens(m, s, lw, layer, s->attn_tok, n_tok, 0);
    }
    t0 = profile_mark(s, PHASE_ATTN_CORE, t0);
    linear(s->pool, &lw->o, s->attn, n, out);
    profile_mark(s, PHASE_ATTN_PROJ, t0);
}
