/* generate.h - the generation loop of one sequence on a KV slot: keep the slot in step
 * with a token history, sample, stream whole UTF-8 characters, time it.
 *
 * The slot always holds exactly `history` (positions 0..n_history-1). Setting a
 * new prompt reuses the longest common prefix with what the cache holds, so a
 * chat re-renders its whole conversation each turn and only the new tokens are
 * computed.
 */
#ifndef MOE_GENERATE_H
#define MOE_GENERATE_H

#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

/* Receives each piece of text as it is produced (whole UTF-8 characters only).
 * Return non-zero to stop generating. */
typedef int (*generate_emit)(void *ctx, int id, const char *text, size_t len);

typedef struct {
    const moe_model *model;
    moe_ctx *ctx;         /* the context its passes run in */
    moe_kv *kv;           /* the cache, and its slot */
    int slot;
    const tokenizer *tok;
    sampler *smp;
    int *history;         /* [S] token ids whose K/V are in the cache */
    int n_history;
    float *logits;        /* [V] next-token logits after history */
    int eos_id;           /* stops generation (-1: none) */
    tokenizer_stream stream;
    /* MTP self-speculative decoding (generator_enable_mtp) */
    int use_mtp;
    float *hidden;        /* [S, H] main hidden after the final norm, per cached position */
    int *mtp_next;        /* [S] the tokens fed to the MTP module (mtp_catch_up) */
    int mtp_valid;        /* MTP cache positions [0, mtp_valid) agree with history */
    float *verify_logits; /* [2, V] */
    float *draft_logits;  /* [V] MTP logits of the newest position */
    float *p_target;      /* [V] main distribution at the draft's position */
    float *q_draft;       /* [V] MTP distribution of the draft */
    int n_drafted, n_accepted, n_steps;
    /* statistics of the last generator_prompt / generator_run */
    int n_prompt_computed;   /* prompt tokens actually run (the rest were cached) */
    double prompt_seconds;
    int n_generated;
    double gen_seconds;
} generator;

/* A sequence on `slot` of kv, run in ctx. The slot is cleared. */
int generator_init(generator *g, const moe_model *m, moe_ctx *ctx, moe_kv *kv, int slot, const tokenizer *tok, sampler *s,
                   moe_error *err);
void generator_free(generator *g);

/* Turns on MTP self-speculative decoding: the MTP module drafts the token after
 * next and a two-token main pass verifies it (greedy output is unchanged; sampled
 * output keeps its distribution through the speculative-sampling rule). Costs
 * S x H floats to keep the main hidden states: *extra_bytes says how many. */
int generator_enable_mtp(generator *g, size_t *extra_bytes, moe_error *err);

/* Makes the cache hold exactly tokens[0..n) and computes the next-token logits. */
int generator_prompt(generator *g, const int *tokens, int n, moe_error *err);

/* Samples up to max_new tokens after the current history, feeding each back in;
 * stops at EOS (not emitted, not fed) or when the context is full. */
int generator_run(generator *g, int max_new, generate_emit emit, void *ctx, moe_error *err);

#endif
