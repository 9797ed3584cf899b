/* eplb.h - expert-parallel load balancing: which rank holds which routed experts (and
 * replicas of the hottest ones), planned from routing counts. A C port of DeepSeek's EPLB
 * (github deepseek-ai/EPLB, eplb.py: rebalance_experts, rebalance_experts_hierarchical,
 * replicate_experts, balanced_packing), on the counts `moe route` writes; docs/ep.md.
 *
 * Legend
 *   L      MoE layers in the counts (the MTP block included), layer_id[l] their ids
 *   E      routed experts (logical experts) per layer
 *   N      ranks (processes; usually one per machine)
 *   Nn     nodes: groups of N / Nn ranks with a faster network between them (machines
 *          when a machine runs several ranks, e.g. one per socket); 1 = flat
 *   G      router groups (config n_group) used by the hierarchical policy; 1 = none
 *   R      redundant experts: extra replicas of the hottest experts, over all ranks
 *   P      physical slots per layer = E + R; rank r holds the slots whose slot_rank is r
 *   w[e]   an expert's load: the count of (token, choice) pairs routed to it
 *   load   a rank's expected load: sum over its slots of w[e] / copies(e) (a replicated
 *          expert's tokens are split evenly between its copies)
 *
 * The algorithm (eplb.py, kept step for step; float32 arithmetic as torch's float tensors):
 *   balanced_packing(w[n], m)   n items into m packs of exactly n/m: heaviest first, each
 *                               into the lightest pack that still has room
 *   replicate(w[n], p)          p - n times: give one more copy to the expert with the
 *                               largest w / copies
 *   hierarchical(G, Nn)         1: pack the G groups onto the Nn nodes (balanced_packing of
 *                               group loads); 2: on each node replicate its E/Nn experts to
 *                               P/Nn slots; 3: pack each node's slots onto its N/Nn ranks
 *                               (balanced_packing of w / copies)
 *   eplb_rebalance              hierarchical(G, Nn) when Nn divides G, else hierarchical(1, 1)
 * Ties (eplb.py leaves them to torch.sort / torch.max / Python's min): the lower index
 * wins everywhere (stable sort on descending weight, first maximum, first lightest pack).
 * tools/check/eplb_ref.py is a numpy transliteration of eplb.py with the same rule; its
 * outputs on hand-made cases are tests/data/eplb/cases.txt (tests/test_eplb.c).
 *
 * The default placement (no plan) is engine/numa_place.c's: contiguous balanced blocks
 * [E*r/N, E*(r+1)/N) (numa_plan_make in partition mode over N simulated nodes).
 */
#ifndef MOE_EPLB_H
#define MOE_EPLB_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "error.h"

#define EPLB_MAX_RANKS 64          /* NUMA_MAX_NODES: the default blocks come from numa_plan_make */
#define EPLB_MAX_EXPERTS 65536
#define EPLB_MAX_LAYERS 4096
#define EPLB_MAX_COUNT ((int64_t)1 << 53)

/* ------------------------------------------------------------------ counts */

typedef struct {
    int n_layers;        /* L */
    int n_experts;       /* E */
    int *layer_id;       /* [L] ascending model layer ids */
    int64_t *count;      /* [L][E] (token, choice) pairs routed to each expert */
} eplb_counts;

/* layer_id,expert_id,count (header line first; rows in any order; every (layer, expert)
 * exactly once, experts 0..E-1 in every layer). `name` is used in errors:
 * "NAME: line 7: ...". */
int eplb_counts_parse(eplb_counts *c, const char *text, size_t len, const char *name, moe_error *err);
int eplb_counts_load(eplb_counts *c, const char *path, moe_error *err);
void eplb_counts_free(eplb_counts *c);

/* ------------------------------------------------------------------ plan */

typedef struct {
    int n_layers;        /* L */
    int n_experts;       /* E */
    int n_ranks;         /* N */
    int n_nodes;         /* Nn the plan was made for (1 for the default blocks) */
    int n_groups;        /* G used (1: the global policy) */
    int n_slots;         /* P = E + R physical experts per layer */
    int *layer_id;       /* [L] */
    int *slot_expert;    /* [L][P] logical expert in physical slot p */
    int *slot_replica;   /* [L][P] which copy of it (0 .. copies - 1) */
    int *slot_rank;      /* [L][P] rank holding slot p (non-decreasing in p) */
    int *copies;         /* [L][E] replicas of each expert (>= 1) */
    unsigned char *kept_default; /* [L] eplb_rebalance: 1 where EPLB's packing had a busier rank
                                  * than the default blocks, which were kept instead */
} eplb_plan;

void eplb_plan_free(eplb_plan *p);

/* The default placement: contiguous blocks by numa_plan_make, one copy of each expert;
 * n_groups = G is passed to the block planner (it only records group alignment). */
int eplb_plan_default(eplb_plan *p, const eplb_counts *c, int n_ranks, int n_groups, moe_error *err);

/* DeepSeek's EPLB on the counts: E + n_redundant slots per layer, (E + R) / N per rank.
 * Requires N % Nn == 0, (E + R) % N == 0, E % G == 0 (else one error line saying which).
 * The greedy packing is not optimal and can lose to the contiguous blocks (loads 6 5 1 4 4 4
 * on 2 ranks: blocks 12/12, greedy 13/11); such a layer keeps the default blocks, each
 * rank's spare slots holding extra copies of its own hottest experts (same load), so a
 * plan's busiest rank is never busier than the default's (kept_default[l] = 1). */
int eplb_rebalance(eplb_plan *p, const eplb_counts *c, int n_ranks, int n_redundant, int n_groups, int n_nodes,
                   moe_error *err);

/* The building blocks, exposed for tests (float32 like eplb.py's tensors).
 * pack[i], rank_in_pack[i] for n items into m packs (m divides n); fails only out of memory. */
int eplb_balanced_packing(const float *w, int n, int m, int *pack, int *rank_in_pack, moe_error *err);
/* phy2log[p], rank[p] for p in [0, P), logcnt[e] for e in [0, n) (P >= n). */
void eplb_replicate(const float *w, int n, int P, int *phy2log, int *rank, int *logcnt);

/* Expected load of each rank in layer l: load[N] (doubles: the exact share w / copies). */
void eplb_rank_load(const eplb_plan *p, const eplb_counts *c, int l, double *load);
/* max and mean of a layer's rank loads (mean 0 when the layer has no tokens). */
void eplb_layer_balance(const eplb_plan *p, const eplb_counts *c, int l, double *max, double *mean);

/* Checks a plan against counts: same layers and E. One error line naming `what`. */
int eplb_plan_matches_counts(const eplb_plan *p, const eplb_counts *c, const char *what, moe_error *err);

/* ------------------------------------------------------------------ plan.json (docs/ep.md) */

/* Writes plan.json: per layer, per rank the (expert, replica) pairs it holds, per expert
 * its replicas' ranks; with `c` (may be NULL) each layer's max/mean load before (default
 * blocks) and after, for information only (the parser ignores them). */
int eplb_plan_write_json(const eplb_plan *p, const eplb_counts *c, const eplb_plan *before, const char *path,
                         moe_error *err);
/* The same text to a stream (fails only out of memory; the stream's errors are the caller's). */
int eplb_plan_write_stream(const eplb_plan *p, const eplb_counts *c, const eplb_plan *before, FILE *f, moe_error *err);
/* Parses and validates plan.json text: every expert on at least one rank, every
 * (expert, replica) on exactly one rank, ranks in range, "experts" agreeing with
 * "ranks", layers ascending and distinct. `name` starts every error line. */
int eplb_plan_parse(eplb_plan *p, const char *text, size_t len, const char *name, moe_error *err);
int eplb_plan_load(eplb_plan *p, const char *path, moe_error *err);
/* Against a model: the plan's layers must be exactly the MoE layers (MTP included) of
 * n_layers_total layers whose is_moe[l] is set, E equal, and N equal when n_ranks > 0. */
int eplb_plan_matches_model(const eplb_plan *p, const unsigned char *is_moe, int n_layers_total, int n_experts,
                            int n_ranks, const char *what, moe_error *err);

#endif
