/* bench_seqs.h - the many-sequences arm of `moe bench --seqs 1,2,4,8,16` (llama.cpp's
 * batched-bench calls B "-npl"): B independent sequences decoded together, one token of
 * each per forward pass, so the weights outside the routed experts are read once for all B
 * and the experts they share once for the tokens that chose them.
 *
 * Notation: B sequences in flight, n decode passes per run, L main layers.
 */
#ifndef MOE_BENCH_SEQS_H
#define MOE_BENCH_SEQS_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"

#define SEQS_MAX_CONFIGS 8
#define EXPERTS_SEQS_MAX 64   /* the most sequences per pass counted (bench_experts.h) */

typedef struct {
    int threads;
    int n_b, b[SEQS_MAX_CONFIGS];      /* the B values */
    int reps, n_gen, n_prompt;
    double *agg_ts;                    /* [n_b, reps] aggregate tokens/s (B tokens per pass) */
    double *agg_cpu_ts;                /* [n_b, reps] the same over process CPU seconds / threads */
    double experts[SEQS_MAX_CONFIGS];  /* mean distinct routed experts per MoE layer per pass */
    double bytes_pass[SEQS_MAX_CONFIGS];   /* weight bytes a pass reads (model: fixed + distinct experts) */
    int profile;                       /* --profile: phase times per pass */
    model_profile prof[SEQS_MAX_CONFIGS];
    long prof_passes[SEQS_MAX_CONFIGS];
} seqs_arm;

/* Weight bytes of a decode pass: `fixed` (everything but the routed experts, read once per
 * pass) and `per_expert` (one expert of one MoE layer; n_moe such layers). */
typedef struct { double fixed, per_expert; int n_moe; } seqs_bytes;

/* For each B in b[0..n_b), `reps` runs (B values alternating within a rep, after one
 * warm-up run each): B sequences of n_prompt random tokens prefilled together (untimed),
 * then n_gen timed passes of B tokens, each sequence fed its own previous argmax.
 * Runs on ctx (its pool as set) with a KV cache of max(b) slots of its own. */
int seqs_arm_run(const moe_model *m, moe_ctx *ctx, const int *b, int n_b, int n_prompt, int n_gen, int reps,
                 uint64_t seed, const seqs_bytes *bytes, int profile, seqs_arm *out, moe_error *err);
void seqs_arm_print(FILE *f, const seqs_arm *r, int n_runs);
json_t *seqs_arm_json(const seqs_arm *r);
void seqs_arm_free(seqs_arm *r);

#endif
