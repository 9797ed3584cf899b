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

#include "config.h"
#include "error.h"
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
    /* attention scratch, per token */
    float *q_abs;       /* [nh, R] W_UK^T q_nope per head */
    float *o_lat;       /* [R] */
    float *row;         /* [max(R, H)] one weight row as f32 */
    float *scores;      /* [S] */
    float *kv_full;     /* [S, nh*(dn+dv)] naive attention only (NULL otherwise) */
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

typedef struct {
    moe_config cfg;
    moe_weights w;
    model_state s;
    rope_params rope;
    model_options opt;
    int K;                      /* experts per token in use */
    threadpool *pool;           /* NULL = single-threaded */
    route_observer on_route;    /* optional */
    void *on_route_ctx;
} moe_model;

int model_load(moe_model *m, const char *dir, const model_options *opt, moe_error *err);
void model_free(moe_model *m);

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
