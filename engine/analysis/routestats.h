/* routestats.h - what the router did: counters fed by the route observer, the
 * load-balance metrics computed from them, and the writers (CSV, JSON, trace lines).
 *
 * Notation: E experts, K experts per token, G groups, Lt layers incl. MTP
 * (MTP block k at layer index L + k), c_e tokens routed to expert e in one layer,
 * N tokens routed in that layer, mean = N K / E, S_t the set of experts of token t.
 *
 * Metrics of one layer (routestats_layer):
 *   MaxVio   = max_e c_e / mean - 1                  0 = perfectly balanced
 *   CV       = std_e(c_e) / mean                      population std
 *   entropy  = -sum_e p_e ln p_e / ln E, p_e = c_e / (N K)     1 = uniform
 *   Jain     = (sum_e c_e)^2 / (E sum_e c_e^2)       1 = uniform, 1/E = one expert
 *   unused   = #{e : c_e = 0}
 *   overlap  = mean over adjacent positions of |S_t n S_{t-1}| / K
 *   mass     = mean over tokens of sum_{e in S_t} score_e / sum_e score_e
 *              (the share of the gate's score mass the chosen experts carry)
 *   groups   = mean and max number of distinct groups among the K chosen experts
 *   weight_sum = mean over tokens of sum_j w_j, the final gate weights (routed_scaling_factor
 *              when norm_topk_prob, the chosen softmax mass for V2-style routing)
 *
 * Usage: routestats_init, then set m->on_route = routestats_observe, m->on_route_ctx = &rs
 * and run the model; positions must be fed in increasing order per layer (a new
 * window starting at position 0 simply breaks the overlap chain).
 */
#ifndef MOE_ROUTESTATS_H
#define MOE_ROUTESTATS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "error.h"
#include "router.h"

#define ROUTESTATS_HOT 5       /* hottest experts reported per layer */

typedef struct {
    int L, Lt, E, K, G;        /* L main layers; Lt = L + MTP modules */
    unsigned char *is_moe;     /* [Lt] */
    int64_t *tokens;           /* [Lt] tokens routed */
    int64_t *counts;           /* [Lt, E] tokens per expert */
    int64_t *group_kept;       /* [Lt, G] times group g was kept (group-limited routing) */
    int64_t *group_used;       /* [Lt, G] times group g held at least one chosen expert */
    int64_t *groups_sum;       /* [Lt] sum over tokens of distinct groups among the chosen */
    int *groups_max;           /* [Lt] */
    double *mass_sum;          /* [Lt] sum over tokens of the chosen score share */
    double *wsum_sum;          /* [Lt] sum over tokens of the K final gate weights */
    double *overlap_sum;       /* [Lt] sum of |S_t n S_{t-1}| / K */
    int64_t *overlap_n;        /* [Lt] adjacent pairs seen */
    int *prev_ids;             /* [Lt, K] experts of the previous position */
    int *prev_pos;             /* [Lt] previous position (-2 = none) */
    int coact_layer;           /* -1 = no co-activation matrix */
    int64_t *coact;            /* [E, E] pairs chosen together at coact_layer (diagonal: c_e) */
    unsigned char *mark;       /* [max(E, G)] scratch */
} routestats;

typedef struct {
    int layer;
    int64_t tokens;
    double maxvio, cv, entropy, jain, overlap, mass, groups_mean;
    double weight_sum;                 /* mean sum of the K final gate weights */
    int groups_max;
    int unused;
    int64_t max_count, min_count;
    int n_hot;
    int hot[ROUTESTATS_HOT];           /* expert ids, hottest first (ties: lower id) */
    int64_t hot_count[ROUTESTATS_HOT];
} routestats_layer;

/* K: experts per token in use (moe_model.K). coact_layer: -1, or an MoE layer in [0, Lt). */
int routestats_init(routestats *rs, const moe_config *cfg, int K, int coact_layer, moe_error *err);
void routestats_free(routestats *rs);
void routestats_reset(routestats *rs);

/* A route_observer: ctx is the routestats. */
void routestats_observe(void *ctx, int layer, int pos, const route_decision *d);

/* Metrics of one layer from the counters (tokens == 0 gives zeros). */
void routestats_layer_metrics(const routestats *rs, int layer, routestats_layer *out);

/* Metrics straight from counts [E] (used by the above; exposed for tests and tools). */
void routestats_load_metrics(const int64_t *counts, int E, int K, double *maxvio, double *cv, double *entropy,
                             double *jain, int *unused);

/* "layer_id,expert_id,count" rows for every MoE layer (SGLang's expert-distribution
 * dump, which DeepSeek's EPLB planner reads). */
int routestats_write_counts_csv(const routestats *rs, const char *path, moe_error *err);
/* "expert_a,expert_b,count" rows of the co-activation matrix (all E x E entries). */
int routestats_write_coact_csv(const routestats *rs, const char *path, moe_error *err);
/* Per-layer metrics, expert counts and group counts as one JSON object. `meta` is a
 * JSON object text (e.g. model, tokens, knobs) stored under "run", or NULL. */
int routestats_write_summary_json(const routestats *rs, const char *path, const char *meta, moe_error *err);

/* One token at one layer as a JSON line (no newline) into buf. token: id or -1;
 * piece: its text or NULL. Returns the length written (truncated to cap - 1). */
int routestats_trace_json(char *buf, size_t cap, int layer, int pos, int token, const char *piece,
                          const route_decision *d);
/* The same, compact and human-readable:
 *   "pos 3 L1  'the'  groups 0,2,5,7  | 12 .412  37 .330 ... | margin .0123" */
int routestats_trace_text(char *buf, size_t cap, int layer, int pos, int token, const char *piece,
                          const route_decision *d);

#endif
