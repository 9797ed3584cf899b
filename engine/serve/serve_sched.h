/* serve_sched.h - the continuous-batching scheduler of `moe serve`: N sequence slots
 * (KV cache slots), a FIFO queue, and ONE engine thread that runs every decoding
 * sequence's next token and chunks of newly arrived prompts in the same forward pass.
 *
 * Notation: N slots, S context per slot, B tokens per pass (--batch), V vocabulary,
 * L main layers, K experts per token, Gmax router groups (max kept groups).
 *
 * A request (serve_req) is made by an HTTP thread, submitted, and then read by that
 * thread while the engine thread appends to it: released text, one record per
 * generated token (id, position, text offset, routing when asked), and at the end a
 * finish reason. Both sides hold a reference; the last serve_req_unref frees it.
 *
 * Each step of the engine thread:
 *   1. drop cancelled requests (their client went away): the slot is free again
 *   2. admit queued requests into free slots: the slot whose cached tokens share the
 *      longest prefix with the prompt (the previous turn of the same chat), else the
 *      least recently used; only the tokens after that prefix are computed
 *   3. one batch: the pending token of every decoding slot, then prompt chunks of the
 *      prefilling slots up to B tokens in all
 *   4. model_forward; per slot with logits: sample (one sampler per slot, seeded per
 *      request), stream whole UTF-8 characters, hold back text that may begin a stop
 *      string, finish on EOS / stop string / max_tokens / full context.
 */
#ifndef MOE_SERVE_SCHED_H
#define MOE_SERVE_SCHED_H

#include <pthread.h>
#include <stddef.h>

#include "batch.h"
#include "context.h"
#include "kv.h"
#include "model.h"
#include "sampler.h"
#include "serve_api.h"
#include "tokenizer.h"

typedef enum { FINISH_NONE = 0, FINISH_STOP, FINISH_LENGTH, FINISH_ERROR } serve_finish;

typedef struct serve_req {
    /* set before sched_submit, read-only afterwards */
    int *prompt;                 /* [n_prompt] token ids (owned) */
    int n_prompt;
    int max_tokens;              /* >= 1 */
    sampler_params sp;
    int seed_given;              /* a seeded sampled request: --mtp auto never drafts for it (its text
                                    must not depend on which steps drafted) */
    char *stop[SERVE_MAX_STOP];  /* [n_stop] (owned) */
    int n_stop;
    int want_routing;
    int no_cache;                /* compute the whole prompt (cache_prompt false) */
    int *bias_ids;               /* [n_bias] logit_bias token ids (owned) */
    float *bias;                 /* [n_bias] added to their logits before sampling */
    int n_bias;
    double t_submit;             /* monotonic seconds */
    /* written by the engine thread, guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;           /* signalled on every record and at the end */
    char *text;                  /* [text_cap] released text, all of it */
    size_t text_len, text_cap;
    int n_tok;                   /* records so far */
    int tok_cap;                 /* records allocated (max_tokens) */
    int *tok_id;                 /* [tok_cap] generated token */
    int *tok_pos;                /* [tok_cap] position of the pass that chose it */
    size_t *tok_end;             /* [tok_cap] text_len after it */
    int L, K, Gmax;              /* routing record shape */
    int *r_ids;                  /* [tok_cap, L, K] (want_routing only) */
    float *r_w;                  /* [tok_cap, L, K] */
    int *r_groups;               /* [tok_cap, L, Gmax] */
    int *r_ngroups;              /* [tok_cap, L] */
    int *r_k;                    /* [tok_cap, L] */
    int n_cached;                /* prompt tokens found in the slot's cache */
    int slot;                    /* -1 while queued */
    double t_first;              /* monotonic time of the first record (0: none yet) */
    serve_finish finish;         /* FINISH_NONE while running */
    char error[256];             /* FINISH_ERROR: what went wrong */
    /* either thread */
    int cancelled;               /* set by the HTTP side (atomic) */
    int refs;                    /* guarded by mu */
} serve_req;

/* A request for prompt [n] (copied) and params (stop strings moved out of p). */
serve_req *serve_req_new(const int *prompt, int n, serve_params *p, int max_tokens);
void serve_req_unref(serve_req *r);
/* Marks r cancelled: the engine frees its slot at the next step. */
void serve_req_cancel(serve_req *r);
const char *serve_finish_name(serve_finish f);
/* Routing of record i as a serve_routing view (want_routing only). */
serve_routing serve_req_routing(const serve_req *r, int i);

/* Expert parallelism (moe serve --ep, tools/moe/cli_ep.c): told on the engine thread of every
 * cache operation and forward pass just before the scheduler runs it, so that the other
 * ranks can run the same. forward failing fails the pass. Not with mtp (its inputs are
 * rank 0's hidden states). */
enum { SCHED_KV_CLEAR = 1, SCHED_KV_KEEP, SCHED_KV_COPY };
typedef struct {
    void (*kv_op)(void *ctx, int op, int slot, int a, int b);  /* CLEAR slot; KEEP slot, n; COPY dst, src, n */
    int (*forward)(void *ctx, const moe_batch *b, moe_error *err);
    void *ctx;
} sched_follow;

typedef struct {
    int n_slots;                 /* N */
    int queue_max;               /* requests waiting beyond the slots; more get 503 */
    int batch;                   /* B tokens per pass (0 = the context's) */
    int mtp;                     /* MTP self-speculative decoding, drafts verified in the batched pass:
                                    0 off, 1 (MTP_ALWAYS) every step, 2 (MTP_AUTO) where it pays
                                    (serve_mtp_auto.h) */
    const sched_follow *follow;  /* NULL, or expert parallelism's leader (see sched_follow) */
} sched_options;

typedef struct {
    unsigned long long requests, rejected, cancelled, prompt_tokens, cached_tokens, gen_tokens, passes,
        batch_tokens, mtp_drafted, mtp_accepted, mtp_spec_steps, mtp_plain_steps;
    int mtp_settled;             /* --mtp auto: settled on plain (no MTP module for a while) */
    double busy_seconds;         /* time spent in forward passes + sampling */
    int queue_len, busy_slots, n_slots, kv_used, kv_total;
} sched_stats;

typedef struct serve_sched serve_sched;

/* Starts the engine thread over a loaded model, a context it will own (its observer is
 * set) and a cache of at least n_slots slots (S = kv->S positions each). */
int sched_start(serve_sched **out, const moe_model *m, moe_ctx *c, moe_kv *kv, const tokenizer *tok,
                const sched_options *o, moe_error *err);
/* Positions per slot. */
int sched_context(const serve_sched *s);
/* Finishes every running and queued request (finish "stop", a final record) and joins
 * the engine thread; later submissions get -2. The scheduler stays readable (stats). */
void sched_stop(serve_sched *s);
/* Stops (if running) and frees the slots; gives the model back its own cache. */
void sched_free(serve_sched *s);
/* Queues r (taking a reference). Returns 0, or -1 when the queue is full, -2 when stopping. */
int sched_submit(serve_sched *s, serve_req *r);
void sched_get_stats(serve_sched *s, sched_stats *st);
/* Per-layer expert load since the start: counts [L, E] (copied into out). */
void sched_expert_load(serve_sched *s, unsigned long long *out);

#endif
