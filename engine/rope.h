/* rope.h - rotary position embedding frequencies, YaRN, and the attention softmax scale.
 *
 * Notation: dr qk_rope_head_dim, dq = dn + dr, f yarn factor.
 * inv_freq[i] = theta^(-2i/dr); YaRN blends inv_freq/f and inv_freq by a linear
 * ramp between the correction dims of beta_fast and beta_slow; cos/sin carry
 * m(f, mscale)/m(f, mscale_all_dim); the softmax scale is dq^-1/2 * m(f, mscale_all_dim)^2.
 * YaRN applies whenever rope_scaling is set, at every position (spec 3.3).
 */
#ifndef MOE_ROPE_H
#define MOE_ROPE_H

#include "config.h"

#define ROPE_MAX_DIM 1024

typedef struct {
    int dr;                         /* rotated dims (qk_rope_head_dim) */
    int interleaved;                /* 1: pairs (x[2i], x[2i+1]); 0: halves (x[i], x[i+dr/2]) */
    double inv_freq[ROPE_MAX_DIM / 2];
    double cos_sin_scale;           /* YaRN m(f, mscale) / m(f, mscale_all_dim), else 1 */
    float softmax_scale;            /* dq^-1/2, times m(f, mscale_all_dim)^2 under YaRN */
    int yarn_low;                   /* YaRN ramp ends (for display) */
    double yarn_high;
} rope_params;

int rope_init(rope_params *r, const moe_config *cfg, moe_error *err);
/* cos_sin[2i], cos_sin[2i+1] = cos, sin of pos * inv_freq[i], times cos_sin_scale; i < dr/2. */
void rope_cos_sin(const rope_params *r, int pos, float *cos_sin);

#endif
