/* sampler.c - greedy / temperature / top-k / top-p / min-p sampling (see sampler.h). */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* ------------------------------------------------------------------ setup */

int sampler_params_check(const sampler_params *p, moe_error *err) {
    if (!(p->temperature >= 0.0f) || p->temperature > 100.0f)
        return moe_error_set(err, "temperature must be in [0, 100], got %g", p->temperature);
    if (p->top_k < 0) return moe_error_set(err, "top-k must be >= 0, got %d", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) return moe_error_set(err, "top-p must be in (0, 1], got %g", p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p < 1.0f)) return moe_error_set(err, "min-p must be in [0, 1), got %g", p->min_p);
    return MOE_OK;
}

int sampler_init(sampler *s, int V, const sampler_params *p, moe_error *err) {
    memset(s, 0, sizeof *s);
    if (sampler_params_check(p, err)) return MOE_FAIL;
    s->p = *p;
    s->V = V;
    s->rng = p->seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    if (!s->rng) s->rng = 1;
    s->probs = malloc(sizeof(float) * (size_t)V);
    s->order = malloc(sizeof(int) * (size_t)V);
    s->kept = malloc(sizeof(float) * (size_t)V);
    if (!s->probs || !s->order || !s->kept) {
        sampler_free(s);
        return moe_error_set(err, "out of memory for the sampler (%d tokens)", V);
    }
    return MOE_OK;
}

void sampler_free(sampler *s) {
    free(s->probs);
    free(s->order);
    free(s->kept);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------ randomness */

float sampler_uniform(sampler *s) {
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (float)((s->rng * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;   /* 24 bits in [0, 1) */
}

int sampler_argmax(const float *x, int n) { return vec_argmax(x, n); }

int sampler_draw(sampler *s, const float *probs) {
    float r = sampler_uniform(s), acc = 0.0f;
    int last = 0;
    for (int i = 0; i < s->V; i++) {
        if (probs[i] <= 0.0f) continue;
        acc += probs[i];
        last = i;
        if (r < acc) return i;
    }
    return last;   /* rounding: the mass summed to slightly below r */
}

/* ------------------------------------------------------------------ filters */

static int cmp_desc(const void *a, const void *b, void *ctx) {
    const float *p = ctx;
    float x = p[*(const int *)a], y = p[*(const int *)b];
    if (x != y) return x > y ? -1 : 1;
    return *(const int *)a - *(const int *)b;
}

/* Candidates that can survive the filters, sorted by probability (descending) into
 * s->order; returns their count. Only tokens at or above a bound can be kept:
 * top-p's nucleus never needs a token below (1 - top_p) / V (all such tokens
 * together hold less than 1 - top_p), min-p's floor is min_p * max p, and top-k
 * needs the k largest, so a full sort of V ids is never needed. */
static int candidates(sampler *s, const float *probs) {
    int V = s->V, n = 0;
    float pmax = 0.0f;
    for (int i = 0; i < V; i++) pmax = fmaxf(pmax, probs[i]);
    float thr = 0.0f;
    if (s->p.top_p < 1.0f) thr = fmaxf(thr, (1.0f - s->p.top_p) / (float)V);
    if (s->p.min_p > 0.0f) thr = fmaxf(thr, s->p.min_p * pmax);
    for (int i = 0; i < V; i++)
        if (probs[i] >= thr && probs[i] > 0.0f) s->order[n++] = i;
    qsort_r(s->order, (size_t)n, sizeof(int), cmp_desc, (void *)probs);
    return n;
}

void sampler_distribution(sampler *s, const float *logits, float *probs) {
    int V = s->V;
    if (s->p.temperature == 0.0f) {
        memset(probs, 0, sizeof(float) * (size_t)V);
        probs[sampler_argmax(logits, V)] = 1.0f;
        return;
    }
    /* softmax(z / T) */
    float mx = logits[sampler_argmax(logits, V)];
    double sum = 0;
    for (int i = 0; i < V; i++) sum += probs[i] = expf((logits[i] - mx) / s->p.temperature);
    for (int i = 0; i < V; i++) probs[i] = (float)(probs[i] / sum);
    if (!(s->p.top_k > 0 || s->p.top_p < 1.0f || s->p.min_p > 0.0f)) return;
    int n = candidates(s, probs);
    int keep = (s->p.top_k > 0 && s->p.top_k < n) ? s->p.top_k : n;
    if (s->p.top_p < 1.0f) {
        double mass = 0;
        for (int j = 0; j < keep; j++) {
            mass += probs[s->order[j]];
            if (mass >= s->p.top_p) { keep = j + 1; break; }
        }
    }
    if (s->p.min_p > 0.0f) {
        float floor_p = s->p.min_p * probs[s->order[0]];
        int j = 1;
        while (j < keep && probs[s->order[j]] >= floor_p) j++;
        keep = j;
    }
    double kept = 0;
    for (int j = 0; j < keep; j++) kept += probs[s->order[j]];
    for (int j = 0; j < keep; j++) s->kept[j] = (float)(probs[s->order[j]] / kept);
    memset(probs, 0, sizeof(float) * (size_t)V);
    for (int j = 0; j < keep; j++) probs[s->order[j]] = s->kept[j];
}

int sampler_sample(sampler *s, const float *logits) {
    if (s->p.temperature == 0.0f) return sampler_argmax(logits, s->V);
    sampler_distribution(s, logits, s->probs);
    return sampler_draw(s, s->probs);
}
