/* model.c - load a checkpoint, make contexts, and run the forward pass (spec section 2, 5).
 *
 * Notation: see model.h. One pass over n tokens of any sequences (batch.h); every token
 * embeds, projects, routes and runs its experts together with the others; only attention
 * looks at a token's own sequence (its KV slot):
 *
 *   x = embed[tokens]
 *   for each layer i < L:
 *       x += MLA_i( RMSNorm(x; input_layernorm) )
 *       x += FFN_i( RMSNorm(x; post_attention_layernorm) )     dense SwiGLU or MoE
 *   h = RMSNorm(x; model.norm)          logits = lm_head h
 *
 * MTP module k (layer L+k), drafting position t+2 from (h_t, token t+1):
 *   u = eh_proj [RMSNorm(embed(token t+1); enorm) ; RMSNorm(h_t; hnorm)]     embedding first
 *   z = DecoderBlock_{L+k}(u) at position t (own KV cache)
 *   logits = shared_head.head RMSNorm(z; shared_head.norm)
 */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>

#include "attention.h"
#include "blas.h"
#include "gguf_config.h"
#include "kernels.h"
#include "linear.h"
#include "moe.h"
#include "threadpool.h"

/* ------------------------------------------------------------------ memory */

size_t model_mem_available(void) {
    const char *env = getenv("MOE_MEM_AVAILABLE");   /* bytes; for tests */
    if (env && *env) return (size_t)strtoull(env, NULL, 10);
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) { fclose(f); return (size_t)kb * 1024; }
        fclose(f);
    }
    struct sysinfo si;
    if (sysinfo(&si) == 0) return ((size_t)si.freeram + si.bufferram) * si.mem_unit;
    return SIZE_MAX;   /* unknown: do not refuse */
}

int model_context_len(const moe_model *m) {
    const moe_config *c = &m->cfg;
    if (m->opt.max_seq > 0) return m->opt.max_seq;
    return c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096;
}

/* ------------------------------------------------------------------ context */

int ctx_init(moe_ctx *s, const moe_model *m, moe_error *err) {
    memset(s, 0, sizeof *s);
    const moe_config *c = &m->cfg;
    s->B = m->opt.batch_max > 0 ? m->opt.batch_max : 64;
    s->S = model_context_len(m);
    int threads = m->opt.n_threads > 0 ? m->opt.n_threads : threadpool_default_threads();
    s->n_shares = threads;
    int B = s->B, S = s->S, H = c->hidden_size, E = c->n_routed_experts, K = m->K;
    int nh = c->num_attention_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim;
    int R = c->kv_lora_rank;
    int ffn = c->intermediate_size;
    if (c->moe_intermediate_size > ffn) ffn = c->moe_intermediate_size;
    if (c->moe_intermediate_size * c->n_shared_experts > ffn) ffn = c->moe_intermediate_size * c->n_shared_experts;
    s->ffn_width = ffn;
    if (m->opt.attn == ATTN_NAIVE) {
        size_t per_pos = (size_t)nh * (size_t)(dn + dv) * sizeof(float), b, avail = model_mem_available();
        if (__builtin_mul_overflow(per_pos, (size_t)S, &b) || b > avail)
            return moe_error_set(err, "naive attention's expanded K/V for %d tokens needs %.1f GiB but only %.1f GiB are "
                                 "available (lower --ctx)", S, (double)per_pos * S / (1u << 30), (double)avail / (1u << 30));
    }
    if (m->opt.attn == ATTN_NAIVE && m->opt.kv_dtype != KV_F32)
        return moe_error_set(err, "naive attention reads an f32 cache: drop --kv-dtype %s or --attn naive",
                             kv_dtype_name(m->opt.kv_dtype));
    int ok = 1;
#define ALLOC(ptr, count) ok = ok && ((ptr) = calloc((size_t)(count), sizeof *(ptr))) != NULL
    ALLOC(s->spans, B);
    ALLOC(s->attn_tok, B);
    ALLOC(s->x, (size_t)B * H);
    ALLOC(s->xn, (size_t)B * H);
    ALLOC(s->cq, (size_t)B * (c->q_lora_rank > 0 ? c->q_lora_rank : 1));
    ALLOC(s->q, (size_t)B * nh * (dn + dr));
    ALLOC(s->kv_new, (size_t)B * (R + dr));
    ALLOC(s->attn, (size_t)B * nh * dv);
    ALLOC(s->out, (size_t)B * H);
    ALLOC(s->gate, (size_t)B * ffn);
    ALLOC(s->up, (size_t)B * ffn);
    ALLOC(s->rope_cs, (size_t)B * dr);
    ALLOC(s->hidden, (size_t)B * H);
    ALLOC(s->mtp_in, (size_t)B * 2 * H);
    s->attn_scratch = (size_t)2 * R + S;
    ALLOC(s->share_attn, (size_t)s->n_shares * s->attn_scratch);
    ALLOC(s->pf_qabs, (size_t)s->n_shares * B * R);
    ALLOC(s->pf_p, (size_t)s->n_shares * B * S);
    ALLOC(s->pf_olat, (size_t)s->n_shares * B * R);
    ALLOC(s->pf_w, (size_t)s->n_shares * (dn + dv) * R);
    if (m->opt.attn == ATTN_NAIVE) ALLOC(s->kv_full, (size_t)S * nh * (dn + dv));
    int n_blocks = (S + ATTEND_BLOCK - 1) / ATTEND_BLOCK;
    ALLOC(s->deep_qc, (size_t)nh * (R + dr));
    ALLOC(s->deep_part, (size_t)n_blocks * nh * (R + 2));
    ALLOC(s->deep_olat, (size_t)nh * R);
    ALLOC(s->share_deep, (size_t)s->n_shares * attn_block_scratch(nh, R + dr, ATTEND_BLOCK));
    if (m->opt.kv_dtype != KV_F32) ALLOC(s->kv_f32, (size_t)S * (R + dr));
    if (E > 0) {
        ALLOC(s->logits_b, (size_t)B * E);
        ALLOC(s->route_ids, (size_t)B * K);
        ALLOC(s->route_w, (size_t)B * K);
        ALLOC(s->expert_count, E);
        ALLOC(s->expert_start, E + 1);
        ALLOC(s->expert_tok, (size_t)B * K);
        ALLOC(s->expert_w, (size_t)B * K);
        ALLOC(s->token_slot, (size_t)B * K);
        ALLOC(s->expert_item, E + 1);
        ALLOC(s->slot_out, (size_t)B * K * H);
        ALLOC(s->shared_out, (size_t)B * H);
        ALLOC(s->share_x, (size_t)s->n_shares * B * H);
        ALLOC(s->share_gate, (size_t)s->n_shares * B * ffn);
        ALLOC(s->share_up, (size_t)s->n_shares * B * ffn);
    }
#undef ALLOC
    if (!ok) {
        ctx_free(s);
        return moe_error_set(err, "out of memory for the context's scratch buffers (batch %d, context %d)", B, S);
    }
    if ((E > 0 && router_scratch_init(&s->router, c, &m->opt.routing, err)) || batch_init(&s->one, B, err)) {
        ctx_free(s);
        return MOE_FAIL;
    }
    if (threads > 1 && !(s->pool = model_pool_create(m, threads))) {
        ctx_free(s);
        return moe_error_set(err, "cannot start %d threads", threads);
    }
    return MOE_OK;
}

void ctx_free(moe_ctx *s) {
    threadpool_free(s->pool);
    float *bufs[] = {s->x, s->xn, s->cq, s->q, s->kv_new, s->attn, s->out, s->gate, s->up, s->rope_cs, s->logits_b,
                     s->hidden, s->mtp_in, s->share_attn, s->kv_full, s->kv_f32, s->deep_qc, s->deep_part, s->deep_olat, s->share_deep, s->pf_qabs, s->pf_p, s->pf_olat, s->pf_w, s->route_w,
                     s->expert_w, s->slot_out, s->shared_out, s->share_x, s->share_gate, s->share_up};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s->spans); free(s->attn_tok);
    free(s->route_ids); free(s->expert_count); free(s->expert_start); free(s->expert_tok);
    free(s->token_slot); free(s->expert_item);
    router_scratch_free(&s->router);
    batch_free(&s->one);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------ load */

int model_config_load(moe_config *cfg, const char *path, moe_error *err) {
    if (!weights_is_gguf(path)) return config_load(cfg, path, err);
    gguf_file g;   /* the config from the file's metadata */
    if (gguf_open(&g, path, err)) return MOE_FAIL;
    int rc = gguf_config(&g, cfg, err);
    gguf_close(&g);
    return rc;
}

int model_load(moe_model *m, const char *path, const model_options *opt, moe_error *err) {
    memset(m, 0, sizeof *m);
    if (opt) m->opt = *opt;
    if (model_config_load(&m->cfg, path, err)) return MOE_FAIL;
    const moe_config *c = &m->cfg;
    if (rope_init(&m->rope, c, err)) return MOE_FAIL;
    m->K = c->n_routed_experts > 0 ? router_top_k(c, &m->opt.routing) : 0;
    if (c->n_routed_experts > 0 && (m->K < 1 || m->K > c->n_routed_experts))
        return moe_error_set(err, "experts per token = %d must be in [1, %d]", m->K, c->n_routed_experts);
    /* NUMA (numa_place.h): the topology, read only when asked for; converted weights are
     * interleaved while loading, then placed by the plan */
    numa_topology *topo = calloc(1, sizeof *topo);
    if (!topo) return moe_error_set(err, "out of memory");
    topo->n_nodes = 1;
    if (m->opt.numa != NUMA_OFF) {
        if (m->opt.numa_topo) *topo = *m->opt.numa_topo;
        else if (numa_topology_read(topo, err)) { free(topo); return MOE_FAIL; }
    }
    weights_options wo = { m->opt.dtype, m->opt.progress, m->opt.progress_ctx, m->opt.holds, m->opt.holds_ctx,
                           m->opt.draft_dtype, 0 /* conversion threads: one per online CPU */,
                           /* --numa places (partition: copies) the weights itself, from the mapping */
                           m->opt.mmap_in_place || m->opt.numa != NUMA_OFF };
    numa_policy policy;
    numa_load_begin(topo, m->opt.numa, &policy);
    int rc = weights_load(&m->w, c, path, &wo, err);
    numa_load_end(&policy);
    if (rc) { free(topo); return MOE_FAIL; }
    int threads = m->opt.n_threads > 0 ? m->opt.n_threads : threadpool_default_threads();
    blas_init();   /* OpenBLAS: our choice of its kernels, and one thread inside each of our pool's work items */
    size_t expert_bytes = 0;
    int n_moe = 0;
    for (int i = 0; i < m->w.n_layers; i++)
        if (m->w.layers[i].is_moe && n_moe++ == 0) {
            const mlp_weights *e = &m->w.layers[i].experts[0];
            expert_bytes = mat_bytes(&e->gate) + mat_bytes(&e->up) + mat_bytes(&e->down);
        }
    rc = numa_plan_make(&m->numa, topo, m->opt.numa, m->w.n_layers, n_moe, c->n_routed_experts, c->n_group,
                        expert_bytes, threads, err);
    free(topo);
    if (rc || numa_place_weights(&m->numa, &m->w, err)) { model_free(m); return MOE_FAIL; }
    return MOE_OK;
}

threadpool *model_pool_create(const moe_model *m, int n_threads) {
    if (m->numa.active) return threadpool_create_hooked(n_threads, numa_bind_thread, (void *)&m->numa);
    return threadpool_create(n_threads);
}

void model_free(moe_model *m) {
    weights_free(&m->w);
    numa_plan_free(&m->numa);   /* after the weights: partitioned experts live in its buffers */
}

/* ------------------------------------------------------------------ forward */

const char *model_phase_name(model_phase p) {
    static const char *names[N_PHASES] = {"embedding", "norms+residual", "attn projections", "attn core (MLA)",
                                          "router", "experts (routed+shared)", "dense MLP", "head"};
    return p < N_PHASES ? names[p] : "?";
}

/* One decoder block on c->x [n, H] (in place): attention, then dense MLP or MoE. */
static void decoder_block(const moe_model *m, moe_ctx *c, int layer) {
    const moe_config *cfg = &m->cfg;
    const layer_weights *lw = &m->w.layers[layer];
    int H = cfg->hidden_size, n = c->n;
    uint64_t t0 = profile_start(c);
    for (int t = 0; t < n; t++) rmsnorm(c->xn + (size_t)t * H, c->x + (size_t)t * H, lw->input_norm, H, cfg->rms_norm_eps);
    profile_mark(c, PHASE_NORMS, t0);
    attention_forward(m, c, layer, c->xn, c->out);                 /* marks its own phases */
    t0 = profile_start(c);
    for (int i = 0; i < n * H; i++) c->x[i] += c->out[i];
    for (int t = 0; t < n; t++) rmsnorm(c->xn + (size_t)t * H, c->x + (size_t)t * H, lw->post_norm, H, cfg->rms_norm_eps);
    t0 = profile_mark(c, PHASE_NORMS, t0);
    if (lw->is_moe) moe_forward(m, c, layer, c->xn, c->out);      /* marks its own phases */
    else {
        mlp_forward(c, &lw->dense, cfg->intermediate_size, c->xn, n, c->out);
        profile_mark(c, PHASE_DENSE, t0);
    }
    t0 = profile_start(c);
    for (int i = 0; i < n * H; i++) c->x[i] += c->out[i];
    profile_mark(c, PHASE_NORMS, t0);
}

/* Checks a whole batch before its first pass: token ids, slots, positions (per sequence
 * consecutive, starting at most at what the slot holds: len[] of the main or MTP layers). */
static int check_batch(const moe_model *m, const moe_kv *kv, const moe_batch *b, const int *len, moe_error *err) {
    if (b->n < 1) return moe_error_set(err, "no tokens to run");
    for (int i = 0; i < b->n; i++) {
        int tok = b->token[i], s = b->seq[i], p = b->pos[i];
        if (tok < 0 || tok >= m->cfg.vocab_size)
            return moe_error_set(err, "token id %d (input %d) is outside the vocabulary [0, %d)", tok, i, m->cfg.vocab_size);
        if (s < 0 || s >= kv->n_slots)
            return moe_error_set(err, "batch token %d names sequence %d, but the cache has %d slots", i, s, kv->n_slots);
        if (p < 0 || p >= kv->S)
            return moe_error_set(err, "position %d (input %d) does not fit the context of %d tokens (raise --ctx)", p, i,
                                 kv->S);
    }
    for (int i = 0; i < b->n; i++) {
        int s = b->seq[i], p = b->pos[i];
        int prev = -1;   /* this sequence's previous token in the batch */
        for (int j = i - 1; j >= 0 && prev < 0; j--)
            if (b->seq[j] == s) prev = j;
        if (prev >= 0 ? p != b->pos[prev] + 1 : p > len[s])
            return moe_error_set(err, prev >= 0 ? "batch token %d of sequence %d is at position %d, not right after its "
                                                  "previous token (%d)"
                                                : "batch token %d of sequence %d starts at position %d, but the slot holds "
                                                  "only %d positions",
                                 i, s, p, prev >= 0 ? b->pos[prev] : len[s]);
    }
    return MOE_OK;
}

/* Sets up the pass over batch entries [i0, i0 + n): positions, slots, runs of one sequence,
 * RoPE cos/sin. */
static void pass_begin(const moe_model *m, moe_ctx *c, moe_kv *kv, const moe_batch *b, int i0, int n) {
    int dr = m->cfg.qk_rope_head_dim;
    c->n = n;
    c->pos = b->pos + i0;
    c->seq = b->seq + i0;
    c->kv = kv;
    c->n_spans = 0;
    for (int t = 0; t < n; t++) {
        batch_span *sp = c->n_spans ? &c->spans[c->n_spans - 1] : NULL;
        if (sp && sp->seq == c->seq[t] && sp->pos0 + sp->n == c->pos[t]) sp->n++;
        else c->spans[c->n_spans++] = (batch_span){ t, 1, c->seq[t], c->pos[t] };
        rope_cos_sin(&m->rope, c->pos[t], c->rope_cs + (size_t)t * dr);
    }
    c->n_forward_calls++;
}

/* Final norm `norm` and head `head` of c->x: hidden rows [n, H] (if asked) and the logits of
 * the wanted tokens, compacted (one token -> one matvec, as a plain decode step). Returns
 * the number of logits rows written. */
static int head_out(const moe_model *m, moe_ctx *c, const float *norm, const mat *head, const unsigned char *want,
                    float *logits, float *hidden) {
    const moe_config *cfg = &m->cfg;
    int H = cfg->hidden_size, n = c->n, n_want = 0;
    uint64_t t0 = profile_start(c);
    for (int t = 0; t < n; t++) rmsnorm(c->hidden + (size_t)t * H, c->x + (size_t)t * H, norm, H, cfg->rms_norm_eps);
    if (hidden) memcpy(hidden, c->hidden, sizeof(float) * (size_t)n * H);
    if (logits) {
        for (int t = 0; t < n; t++)
            if (want[t]) {
                if (n_want != t) memcpy(c->hidden + (size_t)n_want * H, c->hidden + (size_t)t * H, sizeof(float) * (size_t)H);
                n_want++;
            }
        if (n_want) linear(c->pool, head, c->hidden, n_want, logits);
    }
    profile_mark(c, PHASE_HEAD, t0);
    return n_want;
}

/* Sets len[seq] to one past the last position each sequence of b reached. */
static void advance_lengths(const moe_batch *b, int *len) {
    for (int i = 0; i < b->n; i++) len[b->seq[i]] = b->pos[i] + 1;
}

int model_forward(const moe_model *m, moe_ctx *c, moe_kv *kv, const moe_batch *b, float *logits, float *hidden,
                  moe_error *err) {
    if (check_batch(m, kv, b, kv->len, err)) return MOE_FAIL;
    const moe_config *cfg = &m->cfg;
    int H = cfg->hidden_size, V = cfg->vocab_size;
    for (int i0 = 0; i0 < b->n; i0 += c->B) {
        int nb = b->n - i0 < c->B ? b->n - i0 : c->B;
        uint64_t t0 = profile_start(c);
        pass_begin(m, c, kv, b, i0, nb);
        for (int t = 0; t < nb; t++) mat_row_f32(&m->w.embed, b->token[i0 + t], c->x + (size_t)t * H);
        profile_mark(c, PHASE_EMBED, t0);
        for (int i = 0; i < cfg->num_hidden_layers; i++) decoder_block(m, c, i);
        int rows = head_out(m, c, m->w.final_norm, &m->w.lm_head, b->want + i0, logits, hidden ? hidden + (size_t)i0 * H : NULL);
        if (logits) logits += (size_t)rows * V;
    }
    advance_lengths(b, kv->len);
    return MOE_OK;
}

int model_forward_mtp(const moe_model *m, moe_ctx *c, moe_kv *kv, int k, const moe_batch *b, const float *hidden,
                      float *logits, float *mtp_hidden, moe_error *err) {
    const moe_config *cfg = &m->cfg;
    if (k < 0 || k >= cfg->num_nextn_predict_layers)
        return moe_error_set(err, "this checkpoint has %d MTP modules (asked for module %d)", cfg->num_nextn_predict_layers, k);
    if (check_batch(m, kv, b, kv->mtp_len, err)) return MOE_FAIL;
    int layer = cfg->num_hidden_layers + k, H = cfg->hidden_size, V = cfg->vocab_size;
    const layer_weights *lw = &m->w.layers[layer];
    for (int i0 = 0; i0 < b->n; i0 += c->B) {
        int nb = b->n - i0 < c->B ? b->n - i0 : c->B;
        pass_begin(m, c, kv, b, i0, nb);
        for (int t = 0; t < nb; t++) {
            float *in = c->mtp_in + (size_t)t * 2 * H;
            mat_row_f32(&lw->mtp_embed, b->token[i0 + t], in);
            rmsnorm(in, in, lw->enorm, H, cfg->rms_norm_eps);                              /* embedding first */
            rmsnorm(in + H, hidden + (size_t)(i0 + t) * H, lw->hnorm, H, cfg->rms_norm_eps);  /* then hidden */
        }
        linear(c->pool, &lw->eh_proj, c->mtp_in, nb, c->x);
        decoder_block(m, c, layer);
        int rows = head_out(m, c, lw->head_norm, &lw->mtp_head, b->want + i0, logits,
                            mtp_hidden ? mtp_hidden + (size_t)i0 * H : NULL);
        if (logits) logits += (size_t)rows * V;
    }
    advance_lengths(b, kv->mtp_len);
    return MOE_OK;
}

/* The MTP module's cache rows only (its one decoder block's attention input): what a later
 * position reads of these tokens. The rest of the block and the head are not run. */
int model_forward_mtp_cache(const moe_model *m, moe_ctx *c, moe_kv *kv, int k, const moe_batch *b, const float *hidden,
                            moe_error *err) {
    const moe_config *cfg = &m->cfg;
    if (k < 0 || k >= cfg->num_nextn_predict_layers)
        return moe_error_set(err, "this checkpoint has %d MTP modules (asked for module %d)", cfg->num_nextn_predict_layers, k);
    if (check_batch(m, kv, b, kv->mtp_len, err)) return MOE_FAIL;
    int layer = cfg->num_hidden_layers + k, H = cfg->hidden_size;
    const layer_weights *lw = &m->w.layers[layer];
    for (int i0 = 0; i0 < b->n; i0 += c->B) {
        int nb = b->n - i0 < c->B ? b->n - i0 : c->B;
        uint64_t t0 = profile_start(c);
        pass_begin(m, c, kv, b, i0, nb);
        for (int t = 0; t < nb; t++) {   /* as model_forward_mtp */
            float *in = c->mtp_in + (size_t)t * 2 * H;
            mat_row_f32(&lw->mtp_embed, b->token[i0 + t], in);
            rmsnorm(in, in, lw->enorm, H, cfg->rms_norm_eps);
            rmsnorm(in + H, hidden + (size_t)(i0 + t) * H, lw->hnorm, H, cfg->rms_norm_eps);
        }
        linear(c->pool, &lw->eh_proj, c->mtp_in, nb, c->x);
        for (int t = 0; t < nb; t++) rmsnorm(c->xn + (size_t)t * H, c->x + (size_t)t * H, lw->input_norm, H, cfg->rms_norm_eps);
        t0 = profile_mark(c, PHASE_NORMS, t0);
        attention_cache_write(m, c, layer, c->xn);
        profile_mark(c, PHASE_ATTN_PROJ, t0);
    }
    advance_lengths(b, kv->mtp_len);
    return MOE_OK;
}

/* ------------------------------------------------------------------ one sequence */

int model_forward_seq(const moe_model *m, moe_ctx *c, moe_kv *kv, int seq, const int *tokens, int n, int pos,
                      float *logits, int all_logits, float *hidden, moe_error *err) {
    if (n < 1) return moe_error_set(err, "no tokens to run");
    int H = m->cfg.hidden_size, V = m->cfg.vocab_size;
    for (int c0 = 0; c0 < n; c0 += c->B) {
        int nb = n - c0 < c->B ? n - c0 : c->B, last = c0 + nb == n;
        batch_clear(&c->one);
        batch_add_seq(&c->one, tokens + c0, nb, pos + c0, seq, all_logits);
        if (!all_logits && !last) c->one.want[nb - 1] = 0;   /* only the very last token's logits */
        float *lg = logits && (all_logits || last) ? logits + (all_logits ? (size_t)c0 * V : 0) : NULL;
        if (model_forward(m, c, kv, &c->one, lg, hidden ? hidden + (size_t)c0 * H : NULL, err)) return MOE_FAIL;
    }
    return MOE_OK;
}

int model_forward_mtp_seq(const moe_model *m, moe_ctx *c, moe_kv *kv, int k, int seq, const float *hidden,
                          const int *next_tokens, int n, int pos, float *logits, int all_logits, float *mtp_hidden,
                          moe_error *err) {
    if (n < 1) return moe_error_set(err, "no tokens to run");
    int H = m->cfg.hidden_size, V = m->cfg.vocab_size;
    for (int c0 = 0; c0 < n; c0 += c->B) {
        int nb = n - c0 < c->B ? n - c0 : c->B, last = c0 + nb == n;
        batch_clear(&c->one);
        batch_add_seq(&c->one, next_tokens + c0, nb, pos + c0, seq, all_logits);
        if (!all_logits && !last) c->one.want[nb - 1] = 0;
        float *lg = logits && (all_logits || last) ? logits + (all_logits ? (size_t)c0 * V : 0) : NULL;
        if (model_forward_mtp(m, c, kv, k, &c->one, hidden + (size_t)c0 * H, lg, mtp_hidden ? mtp_hidden + (size_t)c0 * H : NULL,
                              err))
            return MOE_FAIL;
    }
    return MOE_OK;
}

int model_forward_mtp_cache_seq(const moe_model *m, moe_ctx *c, moe_kv *kv, int k, int seq, const float *hidden,
                                const int *next_tokens, int n, int pos, moe_error *err) {
    if (n < 1) return moe_error_set(err, "no tokens to run");
    int H = m->cfg.hidden_size;
    for (int c0 = 0; c0 < n; c0 += c->B) {
        int nb = n - c0 < c->B ? n - c0 : c->B;
        batch_clear(&c->one);
        batch_add_seq(&c->one, next_tokens + c0, nb, pos + c0, seq, 0);
        if (model_forward_mtp_cache(m, c, kv, k, &c->one, hidden + (size_t)c0 * H, err)) return MOE_FAIL;
    }
    return MOE_OK;
}
