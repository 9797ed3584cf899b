/* ep_moe.h - the MoE layer's side of expert parallelism (design: ep.h): which routed experts
 * this rank runs, and the exchange of the slot outputs so every rank reduces the same rows in
 * the same order as one process.
 *
 * Legend
 *   Lt      layers of the model, MTP included (moe_weights order)
 *   E, K    routed experts, experts per token;  H hidden;  B tokens per pass (ctx->B)
 *   owner   [Lt][E] the rank that runs expert e of layer l (-1 for a dense layer; a replicated
 *           expert: its first holder)
 *   holders [Lt][E][N] the h distinct ranks holding a copy of e, ascending (ep.h: the split)
 *   slots   ctx->slot_out rows [n*K, H], grouped by expert (expert_start[e] .. [e+1])
 *   stage   [B*K, H] rank-major copy of the rows, used when a rank's experts are not
 *           adjacent (a plan); with contiguous blocks the allgather runs in place on slot_out
 *
 * ep_moe_exchange is called by engine/moe.c between running the owned experts and the
 * reduction. It cannot return an error through moe_forward: on failure it ends every rank
 * with one line (ep_comm_abort), the behaviour expert parallelism needs anyway (a rank that
 * cannot exchange leaves the others waiting).
 *
 * Plans with replicas (an expert on several ranks): in a layer where some expert has two
 * holders or more, ep_moe_ranges gives moe.c this rank's share [lo, hi) of each expert's
 * slots (ep_share_range), and the exchange goes through the staging buffer.
 */
#ifndef MOE_EP_MOE_H
#define MOE_EP_MOE_H

#include "context.h"
#include "ep_comm.h"
#include "eplb.h"
#include "model.h"

typedef struct {
    ep_comm *comm;
    int Lt, E, K, H, B;
    int *owner;                 /* [Lt][E] */
    unsigned char *own;         /* [Lt][E] this rank holds a copy */
    unsigned char *n_hold;      /* [Lt][E] h: distinct ranks holding a copy (0: dense layer) */
    unsigned char *holders;     /* [Lt][E][N] those ranks, ascending */
    unsigned char *replicated;  /* [Lt] some expert of the layer has h >= 2 */
    unsigned char *contiguous;  /* [Lt] no replicas and owner non-decreasing in e: in-place exchange */
    int *range;                 /* [E][2] this rank's [lo, hi) of each expert's slots (the layer in flight) */
    int *rows_of;               /* [N] rows per rank in this layer */
    int *row_of_slot;           /* [B*K] staged row of each slot */
    float *stage;               /* [B*K, H] (NULL when every layer is contiguous) */
    int check;                  /* MOE_EP_CHECK=1: the routing's hash compared across ranks per layer */
    uint64_t n_exchanges;       /* layers exchanged so far */
    uint64_t n_split;           /* (layer, expert) of a pass whose slots went to 2+ holders */
    uint64_t n_moved;           /* ... whose one share went to a holder other than its first */
    double comm_s;              /* wall seconds inside the exchange's collectives (moe bench --ep) */
    uint64_t bytes_sent;        /* this rank's row bytes times the N-1 ranks they go to */
} ep_moe;

/* Ownership from `plan` (NULL: the contiguous blocks of numa_plan_make over comm->size ranks),
 * checked against the model (its MoE layers, E, the number of ranks); buffers sized for ctx->B. */
int ep_moe_init(ep_moe *x, ep_comm *comm, const moe_model *m, const moe_ctx *c, const eplb_plan *plan, moe_error *err);
void ep_moe_free(ep_moe *x);

/* [E] 1 for the routed experts of `layer` this rank runs. */
const unsigned char *ep_moe_owned(void *ctx, int layer);
/* A layer with replicas: [E][2] this rank's [lo, hi) of each expert's slots of the pass in
 * c (after moe.c grouped them); NULL for a layer without replicas (then ep_moe_owned). */
const int *ep_moe_ranges(void *ctx, int layer, const moe_ctx *c);
/* After the owned experts wrote their slots of c->slot_out: every rank's rows to every rank. */
void ep_moe_exchange(void *ctx, int layer, moe_ctx *c);

#endif
