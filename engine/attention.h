/* attention.h - Multi-head Latent Attention (MLA) for one layer of a pass. */
#ifndef MOE_ATTENTION_H
#define MOE_ATTENTION_H

#include "model.h"

/* xn: [n, H] input_layernorm output of the pass's tokens (c->n, each at c->pos[t] of slot
 * c->seq[t]); out: [n, H]. Writes (c_kv, k_pe) of these tokens into their sequences' latent
 * cache, then each attends causally over its own sequence's positions 0..pos.
 * Uses m->opt.attn (absorbed or naive). */
void attention_forward(const moe_model *m, moe_ctx *c, int layer, const float *xn, float *out);

/* Only the first part of attention_forward: the (c_kv, k_pe) cache rows of the pass's tokens. */
void attention_cache_write(const moe_model *m, moe_ctx *c, int layer, const float *xn);

#endif
