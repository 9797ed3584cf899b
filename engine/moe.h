/* moe.h - feed-forward blocks: the dense SwiGLU MLP and the routed MoE with its shared expert. */
#ifndef MOE_MOE_H
#define MOE_MOE_H

#include "model.h"

/* out[n, H] = down( silu(gate x) * up x ) for n tokens x [n, H]; width = the MLP's hidden width. */
void mlp_forward(moe_model *m, const mlp_weights *w, int width, const float *x, int n, float *out);

/* out[n, H] = sum_j w_j Expert_{id_j}(x) + SharedExpert(x), routing each token (router.h);
 * tokens are grouped by expert so each active expert runs once over its tokens.
 * `layer` and positions pos.. are reported to m->on_route. */
void moe_forward(moe_model *m, int layer, const float *xn, int n, int pos, float *out);

#endif
