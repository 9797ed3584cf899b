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

/* q_abs [R] = W_UK[h]^T q_nope [dn], and o [dv] = W_UV[h] o_lat [R]: from GGUF's split
 * attn_k_b / attn_v_b as stored when the loader kept them (plain matvecs), else kv_b. */
static void uk_t(const layer_weights *lw, int h, const float *q_nope, float *q_abs, int dn, int dv, int R) {
    if (lw->k_b.data) matvec_rows(&lw->k_b, q_nope, q_abs, h * R, h * R + R);
    else matvec_t_rows(&lw->kv_b, q_nope, q_abs, h * (dn + dv), h * (dn + dv) + dn);
}
static void uv(const layer_weights *lw, int h, const float *o_lat, float *o, int dn, int dv) {
    if (lw->v_b.data) matvec_rows(&lw->v_b, o_lat, o, h * dv, h * dv + dv);
    else matvec_rows(&lw->kv_b, o_lat, o, h * (dn + dv) + dn, h * (dn + dv) + dn + dv);
}

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
    /* q_abs = W_UK[h]^T q_nope: a sum of the head's dn key rows */
    uk_t(lw, h, qh, w->q_abs, dn, dv, R);
    float scale = m->rope.softmax_scale;
    size_t ld = (size_t)kv->width;
    if (kv->dtype == KV_BF16) {   /* the same sums over the widened bf16 values */
        const uint16_t *cache = kv_row_bf16(kv, seq, layer, 0);
        for (int t = 0; t <= p; t++) {
            const uint16_t *row = cache + (size_t)t * ld;
            w->scores[t] = scale * (vec_dot_bf16(w->q_abs, row, R) + vec_dot_bf16(qh + dn, row + R, dr));
        }
        softmax(w->scores, p + 1);
        memset(w->o_lat, 0, sizeof(float) * (size_t)R);
        for (int t = 0; t <= p; t++) vec_axpy_bf16(w->o_lat, w->scores[t], cache + (size_t)t * ld, R);
    } else {
        const float *cache = kv_row(kv, seq, layer, 0);
        for (int t = 0; t <= p; t++) {
            const float *row = cache + (size_t)t * ld;
            w->scores[t] = scale * (vec_dot(w->q_abs, row, R) + vec_dot(qh + dn, row + R, dr));
        }
        softmax(w->scores, p + 1);
        memset(w->o_lat, 0, sizeof(float) * (size_t)R);
        for (int t = 0; t <= p; t++) vec_axpy(w->o_lat, w->scores[t], cache + (size_t)t * ld, R);
    }
    /* o = W_UV[h] o_lat: the head's dv value rows */
    uv(lw, h, w->o_lat, o, dn, dv);
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
    const float *cache;       /* attend_span_gemm: its sequence's rows of this layer as f32 [pos0 + n, R + dr] */
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

/* ------------------------------------------------------------------ one token at depth */

/* Decoding far into a sequence: every head of the token reads each cache row once
 * (attn_block), in blocks of ATTEND_BLOCK positions split over the pool (flash-decoding):
 *   qc[h]    = [W_UK[h]^T q_nope[h] | q_pe[h]]                        phase 0, a head per item
 *   block b: m_b[h] = max score, l_b[h] = sum exp(score - m_b[h]),
 *            o_b[h] = sum exp(score - m_b[h]) c_kv                     phase 1, a block per item
 *   o_lat[h] = sum_b exp(m_b[h] - M[h]) o_b[h] / sum_b exp(m_b[h] - M[h]) l_b[h],  M[h] = max_b m_b[h]
 *   o[h]     = W_UV[h] o_lat[h]                                        phase 2, a head per item
 * The same math as head_absorbed; the sums run in another order. */
typedef struct {
    const moe_model *m;
    moe_ctx *c;
    const layer_weights *lw;
    int layer, t;             /* the pass's token */
    int phase, n_blocks;
    atomic_int next;
} deep_job;

static void deep_item(deep_job *job, int item, int share) {
    const moe_model *m = job->m;
    const moe_config *cfg = &m->cfg;
    moe_ctx *c = job->c;
    int nh = cfg->num_attention_heads, dn = cfg->qk_nope_head_dim, dr = cfg->qk_rope_head_dim, dv = cfg->v_head_dim;
    int dq = dn + dr, R = cfg->kv_lora_rank, W = R + dr, t = job->t, seq = c->seq[t], p = c->pos[t];
    const moe_kv *kv = c->kv;
    float *part = c->deep_part;   /* [NB] blocks of nh * (R + 2): o [nh][R], m [nh], l [nh] */
    size_t part_block = (size_t)nh * (R + 2);
    if (job->phase == 0) {
        int h = item;
        const float *qh = c->q + (size_t)t * nh * dq + (size_t)h * dq;
        float *qc = c->deep_qc + (size_t)h * W;
        uk_t(job->lw, h, qh, qc, dn, dv, R);
        memcpy(qc + R, qh + dn, sizeof(float) * (size_t)dr);
    } else if (job->phase == 1) {
        int j0 = item * ATTEND_BLOCK, n = p + 1 - j0 < ATTEND_BLOCK ? p + 1 - j0 : ATTEND_BLOCK;
        float *pb = part + (size_t)item * part_block;   /* o [nh][R], then m [nh], then l [nh] */
        attn_block(c->deep_qc, nh, W, R, kv_row_ptr(kv, seq, job->layer, j0), kv->dtype == KV_BF16, (size_t)kv->width, n,
                   m->rope.softmax_scale, c->share_deep + (size_t)share * attn_block_scratch(nh, W, ATTEND_BLOCK), pb + (size_t)nh * R,
                   pb + (size_t)nh * R + nh, pb);
    } else {
        int h = item;
        float M = -INFINITY, L = 0.0f, *olat = c->deep_olat + (size_t)h * R;
        for (int b = 0; b < job->n_blocks; b++) {
            float mb = part[(size_t)b * part_block + (size_t)nh * R + h];
            if (mb > M) M = mb;
        }
        memset(olat, 0, sizeof(float) * (size_t)R);
        for (int b = 0; b < job->n_blocks; b++) {
            const float *pb = part + (size_t)b * part_block;
            float w = expf(pb[(size_t)nh * R + h] - M);
            L += w * pb[(size_t)nh * R + nh + h];
            vec_axpy(olat, w, pb + (size_t)h * R, R);
        }
        float inv = 1.0f / L;
        for (int i = 0; i < R; i++) olat[i] *= inv;
        uv(job->lw, h, olat, c->attn + (size_t)t * nh * dv + (size_t)h * dv, dn, dv);
    }
}


static void deep_share(void *arg, int share, int n_shares) {
    (void)n_shares;
    deep_job *job = arg;
    int n_items = job->phase == 1 ? job->n_blocks : job->m->cfg.num_attention_heads;
    for (;;) {
        int item = atomic_fetch_add(&job->next, 1);
        if (item >= n_items) break;
        deep_item(job, item, share);
    }
}

/* Token t of the pass (a decode token at position ATTEND_DEEP_MIN or later), absorbed. */
static void attend_deep(const moe_model *m, moe_ctx *c, const layer_weights *lw, int layer, int t) {
    deep_job job = { .m = m, .c = c, .lw = lw, .layer = layer, .t = t,
                     .n_blocks = (c->pos[t] + ATTEND_BLOCK) / ATTEND_BLOCK };
    int pool = c->pool && threadpool_threads(c->pool) > 1;
    for (int phase = 0; phase < 3; phase++) {
        job.phase = phase;
        atomic_store(&job.next, 0);
        if (pool && (phase != 1 || job.n_blocks > 1)) threadpool_run(c->pool, deep_share, &job);
        else deep_share(&job, 0, 1);
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
    const float *cache = job->cache;
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
    if (c->kv->dtype == KV_F32) {
        job.cache = kv_row(c->kv, sp->seq, layer, 0);
    } else {   /* widen the rows the span sees once, for all heads */
        kv_load_rows(c->kv, sp->seq, layer, 0, sp->pos0 + sp->n, c->kv_f32);
        job.cache = c->kv_f32;
    }
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
    if (!naive && attn_block_fast()) {   /* tokens far into their sequence: all heads at once */
        int k = 0;
        for (int i = 0; i < n_tok; i++)
            if (c->pos[tok[i]] >= ATTEND_DEEP_MIN) attend_deep(m, c, lw, layer, tok[i]);
            else c->attn_tok[k++] = tok[i];   /* tok is c->attn_tok: compacted in place */
        n_tok = k;
    }
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
        float *row = s->kv_new + (size_t)t * (R + dr);
        rmsnorm(row, row, lw->kv_a_norm, R, c->rms_norm_eps);   /* c_kv: normalised */
        rope_apply(row + R, s->rope_cs + (size_t)t * dr, dr, m->rope.interleaved);   /* k_pe: rotated, not normalised */
        kv_store_row(s->kv, s->seq[t], layer, s->pos[t], row);
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
