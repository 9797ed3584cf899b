/* sampler.h - next-token choice from logits: greedy, temperature, top-k, top-p, min-p.
 *
 * Notation: V vocabulary size, z logits [V], p probabilities [V].
 * Order (as Hugging Face's generate): p = softmax(z / temperature); keep the top_k
 * most probable; keep the smallest prefix of those whose mass reaches top_p; drop
 * tokens with p < min_p * max p; renormalise; draw with a seeded xorshift RNG.
 * temperature 0 is greedy (argmax, ties to the lower id). The same seed and the
 * same logits give the same tokens.
 */
#ifndef MOE_SAMPLER_H
#define MOE_SAMPLER_H

#include <stdint.h>

#include "error.h"

typedef struct {
    float temperature;   /* 0 = greedy; default 0.8 in the tools */
    int top_k;           /* 0 = off */
    float top_p;         /* 1 = off */
    float min_p;         /* 0 = off */
    uint64_t seed;
} sampler_params;

typedef struct {
    sampler_params p;
    int V;
    uint64_t rng;        /* xorshift64* state */
    float *probs;        /* [V] scratch: the filtered distribution */
    int *order;          /* [V] scratch: candidate ids by probability, descending */
    float *kept;         /* [V] scratch: renormalised probabilities of the kept candidates */
} sampler;

int sampler_init(sampler *s, int vocab_size, const sampler_params *p, moe_error *err);
void sampler_free(sampler *s);

/* Checks the parameters; returns MOE_FAIL with a message naming the bad one. */
int sampler_params_check(const sampler_params *p, moe_error *err);

/* Picks the next token from logits [V]. */
int sampler_sample(sampler *s, const float *logits);

/* The distribution sampler_sample draws from (after all filters), into probs [V];
 * for greedy, all mass on the argmax. Used by speculative decoding. */
void sampler_distribution(sampler *s, const float *logits, float *probs);

/* Draws an id from a distribution probs [V] (sums to 1), and a uniform number in [0, 1). */
int sampler_draw(sampler *s, const float *probs);
float sampler_uniform(sampler *s);

/* Index of the largest logit, ties to the lower id. */
int sampler_argmax(const float *x, int n);

#endif
