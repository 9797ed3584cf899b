/* serve_mtp_auto.h - `moe serve --mtp` (auto, the default): draft in a step only while it pays.
 *
 * The server's counterpart of generate.c's auto mode. A step of the server decodes every
 * decoding slot at once, so what it weighs is a whole step: its wall time per token it
 * generated, in each mode (plain: one token per slot; speculative: each slot's MTP draft
 * verified in the same pass, 1 + accepted tokens per slot), kept for each number n of
 * decoding slots (a pass of 8 sequences costs what it costs, not 8 single ones). It chooses
 * the mode with the lower figure at the current n (where only one mode was measured, by the
 * ratio at the nearest n that has both), re-measures the other one now and then,
 * and settles on plain for a long time once speculation has lost by a wide margin again and
 * again (random weights, or a model whose drafts are too rarely right for this machine).
 *
 * Notation: n decoding slots in a step (1..SMA_MAX_N); t[mode][n] seconds per generated
 * token, a moving average of the clean steps (no prompt chunk, no MTP catch-up) of that mode.
 * Pure bookkeeping, no clock of its own: the scheduler passes each step's seconds in. */
#ifndef SERVE_MTP_AUTO_H
#define SERVE_MTP_AUTO_H

#define SMA_MAX_N 64       /* slots (sched_options.n_slots <= 64) */
#define SMA_EVERY_MIN 8    /* re-measure the other mode after this many steps, x2 (x4 when it lost by far) */
#define SMA_EVERY_MAX 256
#define SMA_PROBE 2        /* steps of the other mode per re-measurement (the first may catch the MTP cache up) */
#define SMA_CONFIRM 3      /* decisions in a row for the other mode before switching */
#define SMA_MARGIN 0.10    /* speculation must promise this much less time per token to be chosen */
#define SMA_FAR 0.05       /* lost by more than this: a wide margin */
#define SMA_SETTLE 4       /* re-measurements in a row lost by a wide margin: settle on plain */
#define SMA_QUIET 16384    /* steps settled on plain without running the MTP module */
#define SMA_ALPHA 0.25     /* weight of a new step in the moving average */

typedef struct {
    double t[2][SMA_MAX_N + 1];    /* [plain, speculative][n] seconds per generated token (0: no sample yet) */
    int spec;                      /* the chosen mode */
    int since, every;              /* steps since the other mode was re-measured, and the interval */
    int probe_left;                /* steps of the other mode still to run in this re-measurement */
    int streak;                    /* decisions in a row for the other mode */
    int n_far;                     /* re-measurements in a row that speculation lost by a wide margin */
    int quiet_left;                /* settled on plain: steps left */
    unsigned long long n_remeasure, n_switch, n_quiet, n_spec_steps, n_plain_steps;
} serve_mtp_auto;

void sma_init(serve_mtp_auto *a);
/* Draft in this step, with n slots decoding (n >= 1)? */
int sma_decide(serve_mtp_auto *a, int n);
/* The step just run: its mode, its n, its seconds and the tokens it generated; clean = no
 * prompt chunk and no MTP catch-up beyond the normal rows in it (else it is not a sample). */
void sma_record(serve_mtp_auto *a, int spec, int n, double seconds, int tokens, int clean);

#endif
