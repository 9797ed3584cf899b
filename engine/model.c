/* model.c - load a checkpoint and run the forward pass (spec section 2, 5).
 *
 * Notation: see model.h. The forward pass of one chunk of n tokens:
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
#include "kernels.h"
#include "linear.h"
#include "moe.h"
#include "threadpool.h"

/* ------------------------------------------------------------------ state */

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

/* Fails with a clear message when `what` for S positions (per_pos floats each)
 * cannot fit in the available memory; else sets *bytes. */
static int check_cache_size(const char *what, int S, size_t per_pos, size_t *bytes, moe_error *err) {
    size_t b;
    size_t avail = model_mem_available();
    if (__builtin_mul_overflow(per_pos, (size_t)S, &b) || __builtin_mul_overflow(b, sizeof(float), &b) || b > avail)
        return moe_error_set(err, "%s for %d tokens needs %.1f GiB but only %.1f GiB are available (lower --ctx)", what, S,
                             (double)per_pos * S * sizeof(float) / (1u << 30), (double)avail / (1u << 30));
    *bytes = b;
    return MOE_OK;
}

static int state_init(moe_model *m, moe_error *err) {
    const moe_config *c = &m->cfg;
    model_state *s = &m->s;
    int B = s->B, S = s->S, H = c->hidden_size, V = c->vocab_size;
    int nh = c->num_attention_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim, dv = c->v_head_dim;
    int R = c->kv_lora_rank, E = c->n_routed_experts, K = m->K;
    int ffn = c->intermediate_size;
    if (c->moe_intermediate_size > ffn) ffn = c->moe_intermediate_size;
    if (c->moe_intermediate_size * c->n_shared_experts > ffn) ffn = c->moe_intermediate_size * c->n_shared_experts;
    size_t kv_bytes, naive_bytes;
    if (check_cache_size("KV cache", S, (size_t)m->w.n_layers * (size_t)(R + dr), &kv_bytes, err)) return MOE_FAIL;
    if (m->opt.attn == ATTN_NAIVE &&
        check_cache_size("naive attention's expanded K/V", S, (size_t)nh * (size_t)(dn + dv), &naive_bytes, err))
        return MOE_FAIL;
    int ok = 1;
    s->ffn_width = ffn;
#define ALLOC(ptr, count) ok = ok && ((ptr) = calloc((size_t)(count), sizeof *(ptr))) != NULL
    ALLOC(s->x, (size_t)B * H);
    ALLOC(s->xn, (size_t)B * H);
    ALLOC(s->cq, (size_t)B * (c->q_lora_rank > 0 ? c->q_lora_rank : 1));
    ALLOC(s->q, (size_t)B * nh * (dn + dr));
    ALLOC(s->kv, (size_t)B * (R + dr));
    ALLOC(s->attn, (size_t)B * nh * dv);
    ALLOC(s->out, (size_t)B * H);
    ALLOC(s->gate, (size_t)B * ffn);
    ALLOC(s->up, (size_t)B * ffn);
    ALLOC(s->rope_cs, (size_t)B * dr);
    ALLOC(s->logits_b, (size_t)B * (V > E ? V : E));
    ALLOC(s->hidden, (size_t)B * H);
    ALLOC(s->mtp_in, (size_t)B * 2 * H);
    s->attn_scratch = (size_t)2 * R + S;
    ALLOC(s->share_attn, (size_t)s->n_shares * s->attn_scratch);
    ALLOC(s->pf_qabs, (size_t)s->n_shares * B * R);
    ALLOC(s->pf_p, (size_t)s->n_shares * B * S);
    ALLOC(s->pf_olat, (size_t)s->n_shares * B * R);
    ALLOC(s->pf_w, (size_t)s->n_shares * (dn + dv) * R);
    if (m->opt.attn == ATTN_NAIVE) ALLOC(s->kv_full, (size_t)S * nh * (dn + dv));
    if (E > 0) {
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
    ALLOC(s->ye, (size_t)B * H);
#undef ALLOC
    if (!ok) return moe_error_set(err, "out of memory for the model's scratch buffers (batch %d, context %d)", B, S);
    s->kv_cache_bytes = kv_bytes;
    s->kv_cache = calloc(1, s->kv_cache_bytes);
    if (!s->kv_cache)
        return moe_error_set(err, "out of memory for the KV cache: %zu MiB for %d positions x %d layers x %d values",
                             s->kv_cache_bytes >> 20, S, m->w.n_layers, R + dr);
    if (E > 0 && router_scratch_init(&s->router, c, &m->opt.routing, err)) return MOE_FAIL;
    return MOE_OK;
}

static void state_free(model_state *s) {
    float *bufs[] = {s->x, s->xn, s->cq, s->q, s->kv, s->attn, s->out, s->gate, s->up, s->rope_cs, s->logits_b,
                     s->hidden, s->mtp_in, s->share_attn, s->kv_full, s->pf_qabs, s->pf_p, s->pf_olat, s->pf_w, s->route_w,
                     s->expert_w, s->slot_out, s->shared_out, s->share_x, s->share_gate, s->share_up, s->ye,
                     s->kv_cache};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s->route_ids); free(s->expert_count); free(s->expert_start); free(s->expert_tok);
    free(s->token_slot); free(s->expert_item);
    router_scratch_free(&s->router);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------ load */

int model_load(moe_model *m, const char *dir, const model_options *opt, moe_error *err) {
    memset(m, 0, sizeof *m);
    if (opt) m->opt = *opt;
    if (config_load(&m->cfg, dir, err)) return MOE_FAIL;
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
    weights_options wo = { m->opt.dtype, m->opt.progress, m->opt.progress_ctx };
    numa_policy policy;
    numa_load_begin(topo, m->opt.numa, &policy);
    int rc = weights_load(&m->w, c, dir, &wo, err);
    numa_load_end(&policy);
    if (rc) { free(topo); return MOE_FAIL; }
    m->s.B = m->opt.batch_max > 0 ? m->opt.batch_max : 64;
    m->s.S = m->opt.max_seq > 0 ? m->opt.max_seq : (c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096);
    int threads = m->opt.n_threads > 0 ? m->opt.n_threads : threadpool_default_threads();
    blas_init();   /* OpenBLAS: our choice of its kernels, and one thread inside each of our pool's work items */
    m->s.n_shares = threads;
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
    if (state_init(m, err)) { model_free(m); return MOE_FAIL; }
    if (threads > 1 && !(m->pool = model_pool_create(m, threads))) {
        model_free(m);
        return moe_error_set(err, "cannot start %d threads", threads);
    }
    return MOE_OK;
}

threadpool *model_pool_create(moe_model *m, int n_threads) {
    if (m->numa.active) return threadpool_create_hooked(n_threads, numa_bind_thread, &m->numa);
    return threadpool_create(n_threads);
}

void model_free(moe_model *m) {
    threadpool_free(m->pool);
    m->pool = NULL;
    state_free(&m->s);
    weights_free(&m->w);
    numa_plan_free(&m->numa);   /* after the weights: partitioned experts live in its buffers */
}

size_t model_kv_bytes_per_token(const moe_model *m) {
    return (size_t)m->w.n_layers * (m->cfg.kv_lora_rank + m->cfg.qk_rope_head_dim) * sizeof(float);
}

/* ------------------------------------------------------------------ forward */

/* One decoder block on s->x [n, H] (in place): attention, then dense MLP or MoE. */
static void decoder_block(moe_model *m, int layer, int n, int pos) {
    const moe_config *c = &m->cfg;
    const layer_weights *lw = &m->w.layers[layer];
    model_state *s = &m->s;
    int H = c->hidden_size;
    uint64_t t0 = profile_start(m);
    for (int t = 0; t < n; t++) rmsnorm(s->xn + (size_t)t * H, s->x + (size_t)t * H, lw->input_norm, H, c->rms_norm_eps);
    profile_mark(m, PHASE_NORMS, t0);
    attention_forward(m, layer, s->xn, n, pos, s->out);            /* marks its own phases */
    t0 = profile_start(m);
    for (int i = 0; i < n * H; i++) s->x[i] += s->out[i];
    for (int t = 0; t < n; t++) rmsnorm(s->xn + (size_t)t * H, s->x + (size_t)t * H, lw->post_norm, H, c->rms_norm_eps);
    t0 = profile_mark(m, PHASE_NORMS, t0);
    if (lw->is_moe) moe_forward(m, layer, s->xn, n, pos, s->out);  /* marks its own phases */
    else {
        mlp_forward(m, &lw->dense, c->intermediate_size, s->xn, n, s->out);
        profile_mark(m, PHASE_DENSE, t0);
    }
    t0 = profile_start(m);
    for (int i = 0; i < n * H; i++) s->x[i] += s->out[i];
    profile_mark(m, PHASE_NORMS, t0);
}

const char *model_phase_name(model_phase p) {
    static const char *names[N_PHASES] = {"embedding", "norms+residual", "attn projections", "attn core (MLA)",
                                          "router", "experts (routed+shared)", "dense MLP", "head"};
    return p < N_PHASES ? names[p] : "?";
}

static int check_span(const moe_model *m, const int *tokens, int n, int pos, moe_error *err) {
    if (n < 1) return moe_error_set(err, "no tokens to run");
    if (pos < 0 || pos + n > m->s.S)
        return moe_error_set(err, "positions %d..%d do not fit the context of %d tokens (raise --ctx)", pos, pos + n - 1,
                             m->s.S);
    for (int t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= m->cfg.vocab_size)
            return moe_error_set(err, "token id %d (input %d) is outside the vocabulary [0, %d)", tokens[t], t,
                                 m->cfg.vocab_size);
    return MOE_OK;
}

/* Final norm `norm` and head `head` of s->x for a chunk: hidden rows and logits rows. */
static void head_out(moe_model *m, const float *norm, const mat *head, int n, int chunk0, int n_total, float *logits,
                     int all_logits, float *hidden) {
    const moe_config *c = &m->cfg;
    model_state *s = &m->s;
    int H = c->hidden_size, V = c->vocab_size;
    uint64_t t0 = profile_start(m);
    for (int t = 0; t < n; t++) rmsnorm(s->hidden + (size_t)t * H, s->x + (size_t)t * H, norm, H, c->rms_norm_eps);
    if (hidden) memcpy(hidden + (size_t)chunk0 * H, s->hidden, sizeof(float) * (size_t)n * H);
    if (logits) {
        if (all_logits) {
            linear(m->pool, head, s->hidden, n, logits + (size_t)chunk0 * V);
        } else if (chunk0 + n == n_total) {   /* only the last token's logits */
            linear(m->pool, head, s->hidden + (size_t)(n - 1) * H, 1, logits);
        }
    }
    profile_mark(m, PHASE_HEAD, t0);
}

int model_forward(moe_model *m, const int *tokens, int n, int pos, float *logits, int all_logits, float *hidden,
                  moe_error *err) {
    if (check_span(m, tokens, n, pos, err)) return MOE_FAIL;
    const moe_config *c = &m->cfg;
    model_state *s = &m->s;
    int H = c->hidden_size, dr = c->qk_rope_head_dim;
    m->n_forward_calls++;
    for (int c0 = 0; c0 < n; c0 += s->B) {
        int nb = n - c0 < s->B ? n - c0 : s->B, p0 = pos + c0;
        uint64_t t0 = profile_start(m);
        for (int t = 0; t < nb; t++) {
            mat_row_f32(&m->w.embed, tokens[c0 + t], s->x + (size_t)t * H);
            rope_cos_sin(&m->rope, p0 + t, s->rope_cs + (size_t)t * dr);
        }
        profile_mark(m, PHASE_EMBED, t0);
        for (int i = 0; i < c->num_hidden_layers; i++) decoder_block(m, i, nb, p0);
        head_out(m, m->w.final_norm, &m->w.lm_head, nb, c0, n, logits, all_logits, hidden);
    }
    return MOE_OK;
}

int model_forward_mtp(moe_model *m, int k, const float *hidden, const int *next_tokens, int n, int pos, float *logits,
                      int all_logits, float *mtp_hidden, moe_error *err) {
    const moe_config *c = &m->cfg;
    if (k < 0 || k >= c->num_nextn_predict_layers)
        return moe_error_set(err, "this checkpoint has %d MTP modules (asked for module %d)", c->num_nextn_predict_layers, k);
    if (check_span(m, next_tokens, n, pos, err)) return MOE_FAIL;
    model_state *s = &m->s;
    int layer = c->num_hidden_layers + k, H = c->hidden_size, dr = c->qk_rope_head_dim;
    const layer_weights *lw = &m->w.layers[layer];
    for (int c0 = 0; c0 < n; c0 += s->B) {
        int nb = n - c0 < s->B ? n - c0 : s->B, p0 = pos + c0;
        for (int t = 0; t < nb; t++) {
            float *in = s->mtp_in + (size_t)t * 2 * H;
            mat_row_f32(&lw->mtp_embed, next_tokens[c0 + t], in);
            rmsnorm(in, in, lw->enorm, H, c->rms_norm_eps);                           /* embedding first */
            rmsnorm(in + H, hidden + (size_t)(c0 + t) * H, lw->hnorm, H, c->rms_norm_eps);  /* then hidden */
            rope_cos_sin(&m->rope, p0 + t, s->rope_cs + (size_t)t * dr);
        }
        linear(m->pool, &lw->eh_proj, s->mtp_in, nb, s->x);
        decoder_block(m, layer, nb, p0);
        head_out(m, lw->head_norm, &lw->mtp_head, nb, c0, n, logits, all_logits, mtp_hidden);
    }
    return MOE_OK;
}
