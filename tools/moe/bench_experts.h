/* bench_experts.h - how many distinct routed experts a forward pass reads, by the number of
 * tokens in the pass (moe bench --mtp, --seqs). A route observer (context.h) fed every
 * routing decision; a pass is told apart by the context's n_forward_calls.
 *
 * Notation: L main layers, E experts, T tokens in a pass (1..EXPERTS_MAX_TOKENS).
 */
#ifndef MOE_BENCH_EXPERTS_H
#define MOE_BENCH_EXPERTS_H

#include "model.h"

#define EXPERTS_MAX_TOKENS 64

typedef struct {
    int L, E;
    const moe_ctx *ctx;          /* whose passes are counted */
    unsigned long *pass;         /* [L] pass id of the set being collected */
    unsigned char *seen;         /* [L, E] experts of that pass */
    int *count;                  /* [L] distinct experts so far in that pass */
    int *tokens;                 /* [L] tokens routed in that pass */
    double sum_distinct[EXPERTS_MAX_TOKENS + 1];   /* finished (layer, pass) sets, by T */
    long n_sets[EXPERTS_MAX_TOKENS + 1];
} expert_counter;

int expert_counter_init(expert_counter *c, const moe_model *m, const moe_ctx *ctx, moe_error *err);
void expert_counter_free(expert_counter *c);
/* The route observer: pass ctx = the counter. MTP layers (>= L) are not counted. */
void expert_counter_observe(void *counter, int layer, int seq, int pos, const route_decision *d);
/* Files the open sets (call between runs whose passes must stay apart). */
void expert_counter_close(expert_counter *c);
/* Mean distinct experts per MoE layer of the passes of T tokens (0 if none). */
double expert_counter_mean(const expert_counter *c, int T);
/* Forgets the sets of passes of T tokens. */
void expert_counter_reset(expert_counter *c, int T);

#endif
