/* attention.h - Multi-head Latent Attention (MLA) for one layer of a pass. */
#ifndef MOE_ATTENTION_H
#define MOE_ATTENTION_H

#include "model.h"

/* xn: [n, H] input_layernorm output of the pass's tokens (c->n, each at c->pos[t] of slot
 * c->seq[t]); out: [n, H]. Writes (c_kv, k_pe) of these tokens into their sequences' latent
 * cache, then each attends causally over its own sequence's positions 0..pos.
 * Uses m->opt.attn (absorbed or naive). */
void attention_forward(const moe_model *m, moe_ctx *c, int layer, const float *xn, float *out);

/* Decode tokens at position ATTEND_DEEP_MIN or later attend with all heads at once, in
 * blocks of ATTEND_BLOCK cached positions (attn_block), when the kernel set has attn_block. */
#define ATTEND_DEEP_MIN 8
#define ATTEND_BLOCK 256
/* Only the first part of attention_forward: the (c_kv, k_pe) cache rows of the pass's tokens. */
void attention_cache_write(const moe_model *m, moe_ctx *c, int layer, const float *xn);

#endif
