/* moe.h - feed-forward blocks: the dense SwiGLU MLP and the routed MoE with its shared expert. */
#ifndef MOE_MOE_H
#define MOE_MOE_H

#include "model.h"

/* out[n, H] = down( silu(gate x) * up x ) for n tokens x [n, H]; width = the MLP's hidden width. */
void mlp_forward(moe_ctx *c, const mlp_weights *w, int width, const float *x, int n, float *out);

/* out[n, H] = sum_j w_j Expert_{id_j}(x) + SharedExpert(x) for the pass's c->n tokens,
 * routing each token (router.h); tokens are grouped by expert so each active expert runs
 * once over its tokens, whichever sequences they belong to. Every decision is reported to
 * c->on_route with the layer and the token's sequence and position. */
void moe_forward(const moe_model *m, moe_ctx *c, int layer, const float *xn, float *out);

#endif
