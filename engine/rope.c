/* rope.c - RoPE / YaRN frequencies and the softmax scale (see rope.h). */
#include "rope.h"

#include <math.h>

static double yarn_mscale(double factor, double mscale) {
    return factor <= 1.0 ? 1.0 : 0.1 * mscale * log(factor) + 1.0;
}

int rope_init(rope_params *r, const moe_config *c, moe_error *err) {
    int d = c->qk_rope_head_dim;
    if (d > ROPE_MAX_DIM) return moe_error_set(err, "config.json: qk_rope_head_dim = %d exceeds %d", d, ROPE_MAX_DIM);
    r->dr = d;
    r->interleaved = c->rope_interleave;
    r->cos_sin_scale = 1.0;
    double scale = 1.0 / sqrt((double)(c->qk_nope_head_dim + c->qk_rope_head_dim));
    for (int i = 0; i < d / 2; i++) r->inv_freq[i] = 1.0 / pow(c->rope_theta, (2.0 * i) / d);
    r->yarn_low = 0;
    r->yarn_high = 0;
    if (c->rope_yarn) {
        double f = c->yarn_factor, base = c->rope_theta, L0 = c->yarn_original_max_pos;
        double corr_fast = d * log(L0 / (c->yarn_beta_fast * 2.0 * M_PI)) / (2.0 * log(base));
        double corr_slow = d * log(L0 / (c->yarn_beta_slow * 2.0 * M_PI)) / (2.0 * log(base));
        /* clamped to [0, d - 1]: extreme betas or a theta near 1 make them huge (or NaN) */
        double low = fmin(fmax(floor(corr_fast), 0.0), d - 1), high = fmax(fmin(ceil(corr_slow), d - 1), 0.0);
        if (low == high) high += 0.001;
        for (int i = 0; i < d / 2; i++) {
            double ramp = fmin(fmax((i - low) / (high - low), 0.0), 1.0);
            r->inv_freq[i] = r->inv_freq[i] / f * ramp + r->inv_freq[i] * (1.0 - ramp);
        }
        r->cos_sin_scale = yarn_mscale(f, c->yarn_mscale) / yarn_mscale(f, c->yarn_mscale_all_dim);
        if (c->yarn_mscale_all_dim != 0.0) {
            double m = yarn_mscale(f, c->yarn_mscale_all_dim);
            scale *= m * m;
        }
        r->yarn_low = (int)low;
        r->yarn_high = high;
    }
    r->softmax_scale = (float)scale;
    return MOE_OK;
}

void rope_cos_sin(const rope_params *r, int pos, float *cs) {
    for (int i = 0; i < r->dr / 2; i++) {
        double a = pos * r->inv_freq[i];
        cs[2 * i] = (float)(cos(a) * r->cos_sin_scale);
        cs[2 * i + 1] = (float)(sin(a) * r->cos_sin_scale);
    }
}
