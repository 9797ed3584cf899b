/* bench_mtp.h - the MTP arm of `moe bench --mtp`: greedy decoding with and
 * without self-speculation from the same prompts, acceptance, tokens per
 * verification step, and how many distinct experts a step reads. */
#ifndef MOE_BENCH_MTP_H
#define MOE_BENCH_MTP_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "generate.h"
#include "model.h"

typedef struct {
    int reps, n_gen, n_prompt;
    const char *prompt_source;      /* "random tokens" or the text file */
    double *plain_ts, *mtp_ts;      /* [reps] tokens/s: plain, --mtp-mode always */
    double *auto_ts;                /* [reps] tokens/s: --mtp (auto) */
    double *cpu_ts[3];              /* [arm][reps] on-CPU tokens/s: tokens / (process CPU seconds / threads) */
    int threads;
    int draft_len;                  /* --draft N: chained drafts per speculative step */
    mtp_costs always_cost;          /* the always arm's measured costs, summed over reps */
    long auto_drafted, auto_accepted, auto_plain, auto_skipped;
    long auto_remeasure;            /* auto arm: re-measurements of the mode not chosen */
    long auto_switch;               /* auto arm: switches of mode */
    long auto_spec_reps;            /* auto arm: reps that ended speculating */
    long auto_quiet_reps;           /* auto arm: reps that ended settled plain (mtp_auto.quiet_left) */
    long auto_settled;              /* auto arm: steps run settled (untimed: in "the rest") */
    int auto_carry;                 /* auto arm: each rep adopts the previous rep's controller (generator_mtp_adopt) */
    mtp_auto auto_learned;          /* the last auto rep's controller */
    /* where the auto arm's time goes (seconds summed over reps; mtp_costs' split) against the plain arm */
    double auto_step_plain_s, auto_step_spec_s, auto_rows_s, auto_unverified_s, auto_gen_s, plain_gen_s;
    long auto_tok_spec, auto_generated, plain_generated;
    int profile;                    /* --profile: phases of each kind of pass (plain arm, always arm) */
    model_profile prof[MTP_PASS_KINDS];
    long prof_passes[MTP_PASS_KINDS];
    long drafted, accepted, steps, generated;
    double experts_plain;           /* mean distinct routed experts per main layer per decode step */
    double experts_verify;          /* the same per verification step (two tokens) */
    int mismatches;                 /* reps whose MTP output differed from plain greedy (must be 0) */
} mtp_arm;

/* Runs `reps` rounds, alternating plain, always-MTP and auto-MTP greedy decoding (the order of
 * the three rotating from rep to rep, so that none always runs first or last) of n_gen tokens after
 * n_prompt-token prompts: windows of text_file (tokenized with the model dir's
 * tokenizer) or, when text_file is NULL, random tokens from `seed`. carry: the auto arm's reps after
 * the first start from what the previous one learned (generator_mtp_adopt); 0: each from scratch. */
int mtp_arm_run(const moe_model *m, moe_ctx *ctx, moe_kv *kv, const char *model_dir, const char *text_file, int n_prompt, int n_gen, int reps,
                uint64_t seed, int profile, int carry, int draft_len, mtp_arm *out, moe_error *err);
void mtp_arm_print(FILE *f, const mtp_arm *r);
json_t *mtp_arm_json(const mtp_arm *r);
void mtp_arm_free(mtp_arm *r);

#endif
