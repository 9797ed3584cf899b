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

/* --mtp: always draft, or (auto, the default) draft only while it pays. */
typedef enum { MTP_ALWAYS = 1, MTP_AUTO = 2 } mtp_mode;

/* What speculative decoding costs and gains, measured as it runs (seconds of wall time). */
#define MTP_CONF_BUCKETS 4   /* draft confidence q(d) in [0, .25), [.25, .5), [.5, .75), [.75, 1] */
typedef struct {
    double plain_s, verify_s, draft_s;   /* summed times: one-token steps, two-token verifications, drafts */
    long n_plain, n_verify, n_draft;     /* and how many (drafts: of one position only) */
    long drafted[MTP_CONF_BUCKETS], accepted[MTP_CONF_BUCKETS];   /* by draft confidence */
    long skipped;                        /* auto: drafts not verified (too unlikely to pay) */
    double catchup_s;                    /* MTP passes over two positions (after an accepted draft) */
    long n_catchup;
    /* the MTP loop's wall time split (moe bench --mtp: where auto's time goes) */
    double step_plain_s, step_spec_s;    /* whole steps of each mode (less the two below) */
    double rows_s;                       /* cache-only catch-ups over more than one position (after plain steps) */
    double unverified_s;                 /* drafts not verified */
    long tok_spec;                       /* tokens the speculative steps yielded */
    int draft_len;                       /* drafts per speculative step (generator.draft_len) */
    double chain_s;                      /* --draft N > 1: the 2nd..Nth drafts of the speculative steps */
} mtp_costs;

/* Auto mode's controller (generate.c): the last wall times of each mode's steps, and which
 * mode it chose. Kept across generator_run calls (a chat's turns), reset by generator_enable_mtp. */
#define MTP_WIN 16
#define MTP_DRAFT_MAX 4    /* --draft N: at most this many chained drafts per step */
#define MTP_SETTLE 4       /* re-measurements in a row that speculation lost by over 5 % (generate.c: settle), */
#define MTP_QUIET 16384    /* ... and auto stays plain this many steps without running the MTP module at all */
typedef struct {
    double v[MTP_WIN];             /* seconds, a ring */
    int n, next;
} mtp_window;
typedef struct {
    mtp_window plain, spec_step;   /* whole steps of each mode (generate.c says what is in one) */
    mtp_window verify;             /* [x, d] passes alone (skipping an unlikely draft's verification) */
    mtp_window row;                /* one-row cache-only MTP passes (the row after an accepted draft) */
    mtp_window draft;              /* drafts (the MTP position that makes the logits; cache-only rows apart) */
    mtp_window ratio;              /* speculative step / plain step: each step of the mode not chosen
                                      against the chosen mode's recent steps (robust to load drifting) */
    int spec;                      /* the current choice: speculate */
    int since, every;              /* steps since the other mode was re-measured, and the interval */
    int probe_left;                /* speculative steps left in a re-measurement while plain */
    int probing;                   /* this step is a re-measurement (set by should_draft): 1, or 2 = draft
                                      and check it against the next plain step only, do not verify */
    int streak;                    /* consecutive decisions for the other mode (a switch needs MTP_CONFIRM) */
    int n_far;                     /* consecutive re-measurements that speculation lost by a wide margin
                                      (MTP_SETTLE of them: settle) */
    int quiet_left;                /* settled plain: steps left without running the MTP module at all */
    long n_quiet;                  /* times it settled so far */
    long n_settled_steps;          /* steps run settled (plain decoding's step exactly, untimed) */
    long n_remeasure;              /* re-measurements so far */
    long n_switch;                 /* switches of mode so far */
    long n_spec_steps, n_plain_steps;   /* steps run in each mode (kept across runs, as the windows) */
    long drafted[MTP_CONF_BUCKETS];      /* drafts verified, or checked against the next plain step's logits */
    double accepted[MTP_CONF_BUCKETS];   /* of them accepted (a check: the probability it would have been) */
    long n_shadow;                 /* drafts not verified but checked (a re-measurement's cheap half) */
    int fresh;                     /* a speculative step was measured since the last decision */
    double rel;                    /* the last decision's speculation / plain time per token (while plain,
                                      re-computed only when `fresh`: nothing else changes it much) */
} mtp_auto;

/* The clock auto mode and the cost figures read: NULL = CLOCK_MONOTONIC seconds. A test sets a
 * virtual clock to check the controller's decisions deterministically. */
typedef double (*generator_clock)(void *ctx);

/* --profile of the MTP arm: the phases of each kind of pass (generator.prof) */
enum { MTP_PASS_PLAIN, MTP_PASS_VERIFY, MTP_PASS_DRAFT, MTP_PASS_KINDS };

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
    int use_mtp;          /* 0 off, else the mode */
    mtp_mode mode;
    mtp_auto ctl;         /* auto: which mode runs, and what each measured (kept across runs) */
    mtp_costs cost;
    model_profile *prof;  /* NULL, or [MTP_PASS_KINDS]: each kind of pass's phases go to its own */
    generator_clock clock;   /* NULL: the wall clock */
    void *clock_ctx;
    float *hidden;        /* [S, H] main hidden after the final norm, per cached position */
    int *mtp_next;        /* [S] the tokens fed to the MTP module (mtp_catch_up) */
    int mtp_valid;        /* MTP cache positions [0, mtp_valid) agree with history */
    int blind_from;       /* auto settled on plain: positions >= blind_from ran as plain decoding does,
                             without keeping their hidden state, so this sequence drafts no more
                             (until a prompt recomputes them); INT_MAX: none */
    int draft_len;        /* N drafts per speculative step (--draft N, 1..MTP_DRAFT_MAX): the MTP module
                             fed its own output hidden state and draft for the 2nd..Nth */
    float *verify_logits; /* [MTP_DRAFT_MAX + 1, V] */
    float *draft_logits;  /* [V] MTP logits of the newest position */
    float *p_target;      /* [V] main distribution at the draft's position */
    float *q_draft;       /* [MTP_DRAFT_MAX, V] MTP distribution of each draft */
    float *mtp_h;         /* [2, H] the MTP module's output hidden states, for chained drafts */
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
 * S x H floats to keep the main hidden states: *extra_bytes says how many.
 * MTP_AUTO times every step (plain, or draft + verification), keeps the medians of the
 * recent ones of each mode and the acceptance, speculates only while that predicts fewer
 * seconds per token than plain steps, and re-measures the mode it is not using now and then (every 8
 * steps, the interval doubling (x4 when the other mode lost by over 5 %) to 256 while the choice
 * holds); it switches only after 3 decisions in a row for the other mode, to speculation only
 * for a predicted gain of 15 % or more; while speculating it
 * skips verifying a draft whose confidence bucket's acceptance does not pay for the verification.
 * While plain it does not run the MTP module at all: a re-measurement first catches the MTP
 * cache up on the missed positions in one batched cache-only pass. */
int generator_enable_mtp(generator *g, mtp_mode mode, size_t *extra_bytes, moe_error *err);

/* Auto mode starts from what an earlier sequence of this process learned (its generator's ctl,
 * on the same model, context and threads) instead of re-learning it: the step times of each
 * mode, the acceptance by confidence, the choice and the re-measuring interval. What it learns
 * is a property of the model, the machine and the kind of text, not of one sequence, so a
 * process that generates again (a bench's reps, a client's next request) need not pay the
 * probes a cold start pays (on the toy, ~3 % of 128 tokens); the re-measurements go on as
 * before, so a change of load or text is still seen. The counters (n_remeasure, n_switch,
 * n_spec_steps, n_plain_steps, n_shadow) restart at 0. Call after generator_enable_mtp. */
void generator_mtp_adopt(generator *g, const mtp_auto *learned);

/* --draft N: N chained drafts per speculative step (default 1), verified in one (N+1)-token
 * pass; the longest accepted prefix is kept, then the bonus (or resampled) token. The 2nd..Nth
 * drafts feed the MTP module its own output hidden state in place of the main model's (not
 * known yet); their MTP cache rows are recomputed from the main hidden states later. Fails for
 * N outside 1..MTP_DRAFT_MAX. Call after generator_enable_mtp. */
int generator_set_draft_len(generator *g, int n, moe_error *err);

/* The speculative-sampling rule: a draft d drawn from q [V] against the target p [V]:
 * returns -1 when d is accepted (probability min(1, p(d)/q(d))), else a token drawn from
 * max(0, p - q) renormalised (p is overwritten). The output is then distributed as p. */
int speculative_resolve(sampler *s, float *p, const float *q, int d, int V);

/* Expected seconds per generated token, from the costs measured so far: plain decoding,
 * and speculation (draft + verification per 1 + acceptance tokens); 0 when not measured. */
double mtp_cost_plain(const mtp_costs *c);
double mtp_cost_spec(const mtp_costs *c);

/* Auto mode's current estimates of the seconds per generated token, plain and speculating
 * (medians of the recent passes; 0 before measured). */
double mtp_auto_plain(const generator *g);
double mtp_auto_spec(const generator *g);

/* Makes the cache hold exactly tokens[0..n) and computes the next-token logits. */
int generator_prompt(generator *g, const int *tokens, int n, moe_error *err);

/* Samples up to max_new tokens after the current history, feeding each back in;
 * stops at EOS (not emitted, not fed) or when the context is full. */
int generator_run(generator *g, int max_new, generate_emit emit, void *ctx, moe_error *err);

#endif
