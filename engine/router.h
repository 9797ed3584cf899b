/* router.h - the MoE gate: which K of the E experts a token uses, and with what weights.
 *
 * Notation: E experts, K experts per token, G groups of E/G contiguous experts,
 * Gk groups kept. This is the one place to read routing (spec section 4):
 *
 *   logits = gate.weight x                           (computed by the caller, [E])
 *   scores = sigmoid(logits) | softmax(logits)       scoring_func
 *   sel    = scores + bias                           noaux_tc only: the bias picks, never weighs
 *   if G > 1 and method != greedy:                   group-limited routing
 *       group score = sum of the 2 best sel (noaux_tc) | max sel (group_limited_greedy)
 *       keep the Gk best groups; sel = -inf elsewhere
 *   ids = top-K of sel (ties -> lower id);  w = scores[ids]
 *   if norm_topk_prob: w /= sum(w) + 1e-20;  w *= routed_scaling_factor
 */
#ifndef MOE_ROUTER_H
#define MOE_ROUTER_H

#include "config.h"

/* Experiment knobs (moe route / generate flags). Zero values = the checkpoint's own routing. */
typedef struct {
    int experts_per_token;     /* K override (0 = config's num_experts_per_tok) */
    int no_group_limit;        /* ignore n_group / topk_group */
    int no_route_bias;         /* ignore e_score_correction_bias for selection */
} router_options;

/* One token's routing decision. Arrays are owned by a router_scratch. */
typedef struct {
    int k;                     /* number of experts chosen */
    int *ids;                  /* [k] expert ids, by selection score descending */
    float *weights;            /* [k] final gate weights (normalised, times routed_scaling_factor) */
    float *scores;             /* [E] the unbiased scores (sigmoid/softmax of the logits) */
    float *sel;                /* [E] selection scores (biased, -inf outside kept groups) */
    float margin;              /* k-th minus (k+1)-th selection score (INFINITY if k == E) */
    int n_groups_kept;         /* 0 when routing is not group-limited */
    int *groups;               /* [Gk] kept groups, ascending */
    float group_margin;        /* Gk-th minus (Gk+1)-th group score (INFINITY if none) */
    float *group_scores;       /* [G] group scores before the cut (NULL when not group-limited) */
} route_decision;

typedef struct {
    int E, G, k;
    int *ids; float *weights; float *scores; float *sel; int *groups;
    int *top;                  /* [k+1] router_topk's output: the k chosen, then the runner-up */
    float *group_score;        /* [G] */
    unsigned char *taken;      /* [E] */
} router_scratch;

int router_scratch_init(router_scratch *s, const moe_config *cfg, const router_options *opt, moe_error *err);
void router_scratch_free(router_scratch *s);

/* Number of experts per token with the options applied. */
int router_top_k(const moe_config *cfg, const router_options *opt);

/* Routes one token from its gate logits [E]. bias may be NULL. The result points into s. */
void router_select(const moe_config *cfg, const router_options *opt, const float *logits, const float *bias,
                   router_scratch *s, route_decision *out);

#endif
