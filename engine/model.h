/* model.h - moe_model = config + weights + state, and the forward pass.
 *
 * Notation: V vocab, H hidden, L main layers, nh heads, dn/dr/dv head dims,
 * dq = dn + dr, rq q_lora_rank, R kv_lora_rank, I dense width, Im expert width,
 * Ns shared multiplier, E experts, K experts per token, B batch (tokens per
 * forward chunk), S context length (KV cache positions).
 *
 * The KV cache holds, per layer (MTP modules included, at index L..) and per
 * position, only the normalised latent c_kv [R] and the rotated shared key k_pe
 * [dr]: R + dr floats, whatever nh is.
 */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "config.h"
#include "error.h"
#include "numa_place.h"
#include "rope.h"
#include "router.h"
#include "weights.h"

#include "threadpool.h"

typedef enum { ATTN_ABSORB = 0, ATTN_NAIVE = 1 } attn_mode;

/* Called for every routed token: layer index (MTP blocks at >= L), absolute position. */
typedef void (*route_observer)(void *ctx, int layer, int pos, const route_decision *d);

typedef struct {
    weights_dtype dtype;        /* compute format of the weights (default: as stored, exact) */
    int max_seq;                /* S: KV cache positions (0 = min(max_position_embeddings, 4096)) */
    int batch_max;              /* B: tokens per forward chunk (0 = 64) */
    int n_threads;              /* 0 = one per core */
    attn_mode attn;             /* absorbed (default) or naive MLA */
    router_options routing;     /* experiment knobs */
    numa_mode numa;             /* NUMA placement of weights and threads (numa_place.h; default off) */
    const numa_topology *numa_topo;     /* NULL = the machine's; tests pass a simulated one */
    void (*progress)(void *ctx, int done, int total);   /* load progress, may be NULL */
    void *progress_ctx;
} model_options;

typedef struct {
    int B, S;
    /* per-token activations, [B, ...] */
    float *x;           /* [B, H] residual stream */
    float *xn;          /* [B, H] normalised input of a sub-block */
    float *cq;          /* [B, rq] query latent */
    float *q;           /* [B, nh*dq] queries */
    float *kv;          /* [B, R+dr] latent KV before norm / rotation */
    float *attn;        /* [B, nh*dv] attention output per head, before o_proj */
    float *out;         /* [B, H] output of a sub-block */
    float *gate;        /* [B, max FFN width] */
    float *up;          /* [B, max FFN width] */
    float *rope_cs;     /* [B, dr] cos/sin per token */
    float *logits_b;    /* [B, max(V, E)] head logits / router logits */
    float *hidden;      /* [B, H] hidden after the final norm */
    float *mtp_in;      /* [B, 2H] [enorm(embedding); hnorm(hidden)] */
    /* attention scratch, per share of the pool: q_abs [R], o_lat [R], scores [S] */
    size_t attn_scratch;   /* floats per share: 2R + S */
    float *share_attn;     /* [P, attn_scratch] */
    float *kv_full;     /* [S, nh*(dn+dv)] naive attention only (NULL otherwise) */
    float *pf_qabs;     /* [P, B, R] prefill attention, per share: Q_abs of one head */
    float *pf_p;        /* [P, B, S] its scores / probabilities */
    float *pf_olat;     /* [P, B, R] its latent outputs */
    float *pf_w;        /* [P, dn + dv, R] the head's kv_b rows as f32 */
    /* MoE scratch */
    int *route_ids;     /* [B, K] */
    float *route_w;     /* [B, K] */
    int *expert_count;  /* [E] tokens per expert in this chunk */
    int *expert_start;  /* [E + 1] */
    int *expert_tok;    /* [B * K] token index, grouped by expert */
    float *expert_w;    /* [B * K] gate weight, grouped by expert */
    int *token_slot;    /* [B * K] slot of each (token, choice) */
    int *expert_item;   /* [E + 1] work items: active experts (and -1, the shared expert) */
    float *slot_out;    /* [B * K, H] each slot's expert output, unweighted */
    float *shared_out;  /* [B, H] shared expert output */
    int ffn_width;      /* max FFN width (dense, expert, shared) */
    int n_shares;       /* P: shares of the thread pool (per-share scratch below) */
    float *share_x;     /* [P, B, H] one expert's tokens, gathered */
    float *share_gate;  /* [P, B, ffn_width] */
    float *share_up;    /* [P, B, ffn_width] */
    float *ye;          /* [B, H] scratch output */
    router_scratch router;
    /* KV cache: [n_layers][S][R + dr], c_kv then k_pe */
    float *kv_cache;
    size_t kv_cache_bytes;
} model_state;

/* Profiling (moe bench --profile): wall time of each phase of the forward pass,
 * accumulated in m->prof while it is non-NULL (off by default: no clock reads).
 * Phases are marked on the calling thread; a phase run by the pool counts its
 * wall time. */
typedef enum {
    PHASE_EMBED,        /* embedding rows, RoPE cos/sin */
    PHASE_NORMS,        /* RMSNorms of the residual stream, residual adds */
    PHASE_ATTN_PROJ,    /* q / kv_a / o projections, q_a and kv_a norms, cache write */
    PHASE_ATTN_CORE,    /* scores, softmax, weighted latent sum, W_UK / W_UV (absorbed kv_b) */
    PHASE_ROUTER,       /* gate logits, expert selection, grouping tokens by expert */
    PHASE_EXPERTS,      /* routed expert MLPs and the shared expert (one pool job), weighted reduction */
    PHASE_DENSE,        /* dense MLP layers */
    PHASE_HEAD,         /* final norm + lm_head */
    N_PHASES
} model_phase;

typedef struct {
    uint64_t ns[N_PHASES];
} model_profile;

const char *model_phase_name(model_phase p);

typedef struct {
    moe_config cfg;
    moe_weights w;
    model_state s;
    rope_params rope;
    model_options opt;
    int K;                      /* experts per token in use */
    threadpool *pool;           /* NULL = single-threaded */
    numa_plan numa;             /* where experts and threads live (inactive unless --numa on 2+ nodes) */
    route_observer on_route;    /* optional */
    void *on_route_ctx;
    unsigned long n_forward_calls;   /* model_forward calls so far (lets an observer tell passes apart) */
    model_profile *prof;        /* optional: phase timings (NULL = off) */
} moe_model;

/* Profiling marks: t = profile_start(m); ...; t = profile_mark(m, PHASE_X, t);
 * both are no-ops returning 0 when m->prof is NULL. */
static inline uint64_t profile_start(const moe_model *m) {
    if (!m->prof) return 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
static inline uint64_t profile_mark(moe_model *m, model_phase phase, uint64_t t0) {
    if (!m->prof) return 0;
    uint64_t now = profile_start(m);
    m->prof->ns[phase] += now - t0;
    return now;
}

int model_load(moe_model *m, const char *dir, const model_options *opt, moe_error *err);
void model_free(moe_model *m);

/* A thread pool for this model: with an active NUMA plan its threads are pinned to their
 * nodes (the model's own pool is made this way; moe bench makes more). NULL on failure. */
threadpool *model_pool_create(moe_model *m, int n_threads);

/* Runs tokens[0..n) at positions pos..pos+n-1 through the main model, using and
 * extending the KV cache (positions < pos must already be cached).
 * logits: NULL, or [n, V] when all_logits, else [V] for the last token.
 * hidden: NULL or [n, H], the hidden state after the final norm (the MTP input). */
int model_forward(moe_model *m, const int *tokens, int n, int pos, float *logits, int all_logits, float *hidden,
                  moe_error *err);

/* MTP module `k` (0-based) at positions pos..pos+n-1: inputs hidden [n, H] (main model,
 * after the final norm, at those positions) and next_tokens [n] (the token at position+1).
 * Uses its own KV cache. logits: [n, V] (all_logits) or [V]; mtp_hidden: NULL or [n, H]. */
int model_forward_mtp(moe_model *m, int k, const float *hidden, const int *next_tokens, int n, int pos,
                      float *logits, int all_logits, float *mtp_hidden, moe_error *err);

/* Available memory in bytes (/proc/meminfo MemAvailable, else sysinfo; the environment
 * variable MOE_MEM_AVAILABLE overrides it, for tests). model_load refuses a KV cache larger. */
size_t model_mem_available(void);

/* Bytes of KV cache per token (all layers incl. MTP). */
size_t model_kv_bytes_per_token(const moe_model *m);

#endif
