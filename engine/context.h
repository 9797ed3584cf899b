/* context.h - moe_ctx: everything one forward pass writes, apart from the KV cache.
 *
 * Notation: B tokens per pass (batch_max), S positions per sequence, P shares of the
 * thread pool, H hidden, V vocab, E experts, K experts per token, nh heads, dn/dr/dv head
 * dims, dq = dn + dr, rq q_lora_rank, R kv_lora_rank, F the widest FFN (dense, expert or
 * shared).
 *
 * The model (model.h) is read-only after load; a context holds the scratch sized once
 * from its config and B, the thread pool, profiling and the routing observer. One context
 * runs one pass at a time; several contexts may share one model.
 */
#ifndef MOE_CONTEXT_H
#define MOE_CONTEXT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "batch.h"
#include "error.h"
#include "router.h"
#include "threadpool.h"

struct moe_model;

/* Called for every routed token: the layer (MTP blocks at >= L), the token's sequence slot
 * and absolute position, and the decision. */
typedef void (*route_observer)(void *ctx, int layer, int seq, int pos, const route_decision *d);

/* Profiling (moe bench --profile): wall time of each phase of the forward pass, accumulated
 * in ctx->prof while it is non-NULL (off by default: no clock reads). Phases are marked on
 * the calling thread; a phase run by the pool counts its wall time. */
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

/* A run of consecutive batch entries [i0, i0 + n) of one sequence at positions pos0.. */
typedef struct {
    int i0, n, seq, pos0;
} batch_span;

/* Expert parallelism (engine/ep/ep_moe.h): the routed experts of a layer this process runs,
 * and the exchange that fills the other slots of slot_out before the reduction. Called on the
 * calling thread; exchange ends the process on failure (ep_comm_abort). NULL: every expert. */
struct moe_ctx;
typedef struct ep_hook {
    const unsigned char *(*owned)(void *ctx, int layer);      /* [E] 1: run expert e here */
    void (*exchange)(void *ctx, int layer, struct moe_ctx *c); /* after the experts ran */
    void *ctx;
    /* NULL, or (replicated experts) after the grouping: [E][2] the part [lo, hi) of expert e's
     * slots (0 .. its count) this process runs; it replaces `owned` for the layer */
    const int *(*ranges)(void *ctx, int layer, const struct moe_ctx *c);
} ep_hook;

typedef struct moe_ctx {
    int B, S;           /* tokens per pass; positions per sequence */
    int n_shares;       /* P: shares of the pool (per-share scratch below) */
    int ffn_width;      /* F */
    /* the pass in flight (set by model_forward): tokens [0, n) of it */
    int n;
    const int *pos;     /* [n] positions */
    const int *seq;     /* [n] KV slots */
    struct moe_kv *kv;  /* the cache it reads and extends */
    int n_spans;
    batch_span *spans;  /* [B] runs of one sequence */
    int *attn_tok;      /* [B] tokens that attend one by one (not as a span's matrix products) */
    moe_batch one;      /* [B] model_forward_seq's batch */
    /* per-token activations, [B, ...] */
    float *x;           /* [B, H] residual stream */
    float *xn;          /* [B, H] normalised input of a sub-block */
    float *cq;          /* [B, rq] query latent */
    float *q;           /* [B, nh*dq] queries */
    float *kv_new;      /* [B, R+dr] latent KV of the pass's tokens (normalised and rotated in place, then stored) */
    float *attn;        /* [B, nh*dv] attention output per head, before o_proj */
    float *out;         /* [B, H] output of a sub-block */
    float *gate;        /* [B, F] */
    float *up;          /* [B, F] */
    float *rope_cs;     /* [B, dr] cos/sin per token */
    float *logits_b;    /* [B, E] router logits */
    float *hidden;      /* [B, H] hidden after the final norm */
    float *mtp_in;      /* [B, 2H] [enorm(embedding); hnorm(hidden)] */
    /* attention scratch, per share of the pool: q_abs [R], o_lat [R], scores [S] */
    size_t attn_scratch;   /* floats per share: 2R + S */
    float *share_attn;     /* [P, attn_scratch] */
    float *kv_full;     /* [S, nh*(dn+dv)] naive attention only (NULL otherwise) */
    float *kv_f32;      /* [S, R+dr] a prefill span's cache rows widened to f32 (bf16 cache only, else NULL) */
    float *pf_qabs;     /* [P, B, R] prefill attention, per share: Q_abs of one head */
    float *pf_p;        /* [P, B, S] its scores / probabilities */
    float *pf_olat;     /* [P, B, R] its latent outputs */
    float *pf_w;        /* [P, dn + dv, R] the head's kv_b rows as f32 */
    /* decoding at depth (attention.c attend_deep), one token at a time; NB = ceil(S / ATTEND_BLOCK) */
    float *deep_qc;     /* [nh, R + dr] the token's q_abs | q_pe per head */
    float *deep_part;   /* [NB, nh, R + 2] per block of positions: o (R), m, l */
    float *deep_olat;   /* [nh, R] the merged latent outputs */
    float *share_deep;  /* [P, attn_block_scratch(nh, R + dr, ATTEND_BLOCK)] a share's attn_block scratch */
    /* MoE scratch */
    int *route_ids;     /* [B, K] */
    float *route_w;     /* [B, K] */
    int *expert_count;  /* [E] tokens per expert in this pass */
    int *expert_start;  /* [E + 1] */
    int *expert_tok;    /* [B * K] token index, grouped by expert */
    float *expert_w;    /* [B * K] gate weight, grouped by expert */
    int *token_slot;    /* [B * K] slot of each (token, choice) */
    int *expert_item;   /* [E + 1] work items: active experts (and -1, the shared expert) */
    float *slot_out;    /* [B * K, H] each slot's expert output, unweighted */
    float *shared_out;  /* [B, H] shared expert output */
    float *share_x;     /* [P, B, H] one expert's tokens, gathered */
    float *share_gate;  /* [P, B, F] */
    float *share_up;    /* [P, B, F] */
    router_scratch router;
    /* the pool, profiling, the observer */
    threadpool *pool;           /* NULL = single-threaded */
    model_profile *prof;        /* NULL = off */
    route_observer on_route;    /* NULL = none */
    void *on_route_ctx;
    const ep_hook *ep;          /* NULL = this process runs every routed expert */
    unsigned long n_forward_calls;   /* passes so far (lets an observer tell passes apart) */
} moe_ctx;

/* Scratch for passes of up to m->opt.batch_max tokens (0 = 64) over sequences of up to the
 * model's context, and a pool of m->opt.n_threads threads (0 = one per core). */
int ctx_init(moe_ctx *c, const struct moe_model *m, moe_error *err);
void ctx_free(moe_ctx *c);

/* Profiling marks: t = profile_start(c); ...; t = profile_mark(c, PHASE_X, t);
 * both are no-ops returning 0 when c->prof is NULL. */
static inline uint64_t profile_start(const moe_ctx *c) {
    if (!c->prof) return 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
static inline uint64_t profile_mark(moe_ctx *c, model_phase phase, uint64_t t0) {
    if (!c->prof) return 0;
    uint64_t now = profile_start(c);
    c->prof->ns[phase] += now - t0;
    return now;
}

#endif
