/* model.h - moe_model: the loaded checkpoint, read-only after load; and the forward pass
 * over a batch of tokens of any sequences.
 *
 * Notation: V vocab, H hidden, L main layers, nh heads, dn/dr/dv head dims, dq = dn + dr,
 * rq q_lora_rank, R kv_lora_rank, I dense width, Im expert width, Ns shared multiplier,
 * E experts, K experts per token, B tokens per pass, S positions per sequence.
 *
 * The four objects (after llama.cpp's model / context / kv / batch split):
 *   moe_model   config, weights, RoPE tables, expert placement      (this file; read-only)
 *   moe_ctx     scratch, thread pool, profiling, routing observer   (context.h)
 *   moe_kv      latent cache rows of every sequence slot            (kv.h)
 *   moe_batch   token i of sequence seq[i] at position pos[i]       (batch.h)
 */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"
#include "config.h"
#include "context.h"
#include "error.h"
#include "kv.h"
#include "numa_place.h"
#include "rope.h"
#include "router.h"
#include "weights.h"

typedef enum { ATTN_ABSORB = 0, ATTN_NAIVE = 1 } attn_mode;

typedef struct {
    weights_dtype dtype;        /* compute format of the weights (default: as stored, exact) */
    int max_seq;                /* S: positions per sequence (0 = min(max_position_embeddings, 4096)) */
    int batch_max;              /* B: tokens per pass of a context (0 = 64) */
    int n_threads;              /* a context's threads (0 = one per core); the NUMA plan splits them */
    attn_mode attn;             /* absorbed (default) or naive MLA */
    kv_dtype kv_dtype;          /* the latent cache's values: f32 (default, exact) or bf16 */
    router_options routing;     /* experiment knobs */
    numa_mode numa;             /* NUMA placement of weights and threads (numa_place.h; default off) */
    const numa_topology *numa_topo;     /* NULL = the machine's; tests pass a simulated one */
    void (*progress)(void *ctx, int done, int total);   /* load progress, may be NULL */
    void *progress_ctx;
    int (*holds)(void *ctx, int layer, int expert);   /* weights_options.holds (expert parallelism), may be NULL */
    void *holds_ctx;
    weights_dtype draft_dtype;  /* --draft-dtype: the MTP module's format (WEIGHTS_AUTO = as the rest) */
    int mmap_in_place;          /* --mmap: weights_options.mmap_in_place (default 0: copied into huge pages; --numa implies 1) */
} model_options;

typedef struct moe_model {
    moe_config cfg;
    moe_weights w;
    rope_params rope;
    model_options opt;          /* as loaded */
    int K;                      /* experts per token in use */
    numa_plan numa;             /* where experts and threads live (inactive unless --numa on 2+ nodes) */
} moe_model;

/* The config of a checkpoint: DIR/config.json, or a .gguf file's metadata. */
int model_config_load(moe_config *cfg, const char *path, moe_error *err);

/* path: a checkpoint directory (config.json + *.safetensors) or a .gguf file. */
int model_load(moe_model *m, const char *path, const model_options *opt, moe_error *err);
void model_free(moe_model *m);

/* Positions per sequence: opt.max_seq, else min(max_position_embeddings, 4096). */
int model_context_len(const moe_model *m);

/* A thread pool for this model: with an active NUMA plan its threads are pinned to their
 * nodes (a context's own pool is made this way; moe bench makes more). NULL on failure. */
threadpool *model_pool_create(const moe_model *m, int n_threads);

/* ------------------------------------------------------------------ forward */

/* Runs the batch through the main model, in passes of at most c->B tokens (in batch
 * order). Per sequence its tokens must be at consecutive ascending positions p0..p1 with
 * p0 <= kv->len[seq] (writing at p0 drops what the slot held from p0 on); afterwards
 * kv->len[seq] = p1 + 1. Projections, router and experts run once over each pass;
 * attention runs for each token against its own sequence's cache.
 * logits: NULL, or [n_wanted, V] for the tokens with want set, in batch order.
 * hidden: NULL or [n, H], the hidden state after the final norm (the MTP input). */
int model_forward(const moe_model *m, moe_ctx *c, moe_kv *kv, const moe_batch *b, float *logits, float *hidden,
                  moe_error *err);

/* MTP module k (0-based) over a batch whose token[i] is the token at position pos[i] + 1 of
 * sequence seq[i], and hidden [n, H] the main model's hidden state (after the final norm)
 * at (seq[i], pos[i]). Uses the slot's MTP layers (kv->mtp_len as kv->len above).
 * logits: NULL or [n_wanted, V]; mtp_hidden: NULL or [n, H]. */
int model_forward_mtp(const moe_model *m, moe_ctx *c, moe_kv *kv, int k, const moe_batch *b, const float *hidden,
                      float *logits, float *mtp_hidden, moe_error *err);

/* One sequence: tokens[0..n) of slot `seq` at positions pos..pos+n-1 (any n: passes of B).
 * logits: NULL, or [n, V] when all_logits, else [V] for the last token. hidden: NULL or [n, H]. */
int model_forward_seq(const moe_model *m, moe_ctx *c, moe_kv *kv, int seq, const int *tokens, int n, int pos,
                      float *logits, int all_logits, float *hidden, moe_error *err);
/* The same for MTP module k: hidden [n, H] at positions pos.., next_tokens [n]. */
int model_forward_mtp_seq(const moe_model *m, moe_ctx *c, moe_kv *kv, int k, int seq, const float *hidden,
                          const int *next_tokens, int n, int pos, float *logits, int all_logits, float *mtp_hidden,
                          moe_error *err);

/* Only the MTP cache rows of such a batch (the MTP block's attention input of each token,
 * what later positions attend to), advancing kv->mtp_len: for positions whose draft logits
 * are not needed (a catch-up over several positions needs the last one's only). */
int model_forward_mtp_cache(const moe_model *m, moe_ctx *c, moe_kv *kv, int k, const moe_batch *b, const float *hidden,
                            moe_error *err);
int model_forward_mtp_cache_seq(const moe_model *m, moe_ctx *c, moe_kv *kv, int k, int seq, const float *hidden,
                                const int *next_tokens, int n, int pos, moe_error *err);

/* Available memory in bytes (/proc/meminfo MemAvailable, else sysinfo; the environment
 * variable MOE_MEM_AVAILABLE overrides it, for tests). kv_init refuses a KV cache larger. */
size_t model_mem_available(void);

#endif
