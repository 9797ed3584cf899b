/* attention.h - Multi-head Latent Attention (MLA) for one layer. */
#ifndef MOE_ATTENTION_H
#define MOE_ATTENTION_H

#include "model.h"

/* xn: [n, H] input_layernorm output of tokens at positions pos..pos+n-1; out: [n, H].
 * Appends (c_kv, k_pe) of these tokens to the layer's latent cache, then attends
 * causally over positions 0..pos+t. Uses m->opt.attn (absorbed or naive). */
void attention_forward(moe_model *m, int layer, const float *xn, int n, int pos, float *out);

/* Pointer to the cache row (c_kv [R] then k_pe [dr]) of `layer` at position `p`. */
float *attention_cache_row(const moe_model *m, int layer, int p);

#endif
