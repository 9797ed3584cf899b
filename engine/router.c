/* router.c - gate scores, selection bias, group-limited top-k, gate weights (see router.h). */
#include "router.h"

#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int router_top_k(const moe_config *cfg, const router_options *opt) {
    return (opt && opt->experts_per_token > 0) ? opt->experts_per_token : cfg->num_experts_per_tok;
}

int router_scratch_init(router_scratch *s, const moe_config *cfg, const router_options *opt, moe_error *err) {
    memset(s, 0, sizeof *s);
    s->E = cfg->n_routed_experts;
    s->G = cfg->n_group;
    s->k = router_top_k(cfg, opt);
    if (s->k < 1 || s->k > s->E)
        return moe_error_set(err, "experts per token = %d must be in [1, %d]", s->k, s->E);
    s->ids = malloc(sizeof(int) * (size_t)s->k);
    s->top = malloc(sizeof(int) * (size_t)(s->k + 1));
    s->weights = malloc(sizeof(float) * (size_t)s->k);
    s->scores = malloc(sizeof(float) * (size_t)s->E);
    s->sel = malloc(sizeof(float) * (size_t)s->E);
    s->taken = malloc((size_t)s->E);
    s->groups = malloc(sizeof(int) * (size_t)s->G);
    s->group_score = malloc(sizeof(float) * (size_t)s->G);
    if (!s->ids || !s->top || !s->weights || !s->scores || !s->sel || !s->taken || !s->groups || !s->group_score) {
        router_scratch_free(s);
        return moe_error_set(err, "out of memory for router scratch");
    }
    return MOE_OK;
}

void router_scratch_free(router_scratch *s) {
    free(s->ids); free(s->top); free(s->weights); free(s->scores); free(s->sel);
    free(s->taken); free(s->groups); free(s->group_score);
    memset(s, 0, sizeof *s);
}

/* Index of the largest x[i] with !taken[i]; ties go to the lower index. -1 if none. */
static int argmax_free(const float *x, const unsigned char *taken, int n) {
    int best = -1;
    for (int i = 0; i < n; i++)
        if (!taken[i] && (best < 0 || x[i] > x[best])) best = i;
    return best;
}

void router_select(const moe_config *cfg, const router_options *opt, const float *logits, const float *bias,
                   router_scratch *s, route_decision *out) {
    int E = s->E, k = s->k;
    /* 1. scores */
    if (cfg->scoring_func == SCORE_SIGMOID) {
        for (int e = 0; e < E; e++) s->scores[e] = 1.0f / (1.0f + expf(-logits[e]));
    } else {
        float m = -INFINITY;
        for (int e = 0; e < E; e++) m = fmaxf(m, logits[e]);
        double sum = 0;
        for (int e = 0; e < E; e++) sum += s->scores[e] = expf(logits[e] - m);
        for (int e = 0; e < E; e++) s->scores[e] = (float)(s->scores[e] / sum);
    }
    /* 2. selection scores: the bias steers the choice only */
    int use_bias = cfg->topk_method == TOPK_NOAUX_TC && bias && !(opt && opt->no_route_bias);
    for (int e = 0; e < E; e++) s->sel[e] = s->scores[e] + (use_bias ? bias[e] : 0.0f);
    /* 3. group-limited routing: keep the Gk best groups */
    out->n_groups_kept = 0;
    out->group_margin = INFINITY;
    out->group_scores = NULL;
    int G = cfg->n_group, Gk = cfg->topk_group;
    if (G > 1 && cfg->topk_method != TOPK_GREEDY && !(opt && opt->no_group_limit)) {
        int gs = E / G;
        for (int g = 0; g < G; g++) {
            const float *x = s->sel + g * gs;
            if (cfg->topk_method == TOPK_NOAUX_TC) {          /* sum of the two best */
                float a = -INFINITY, b = -INFINITY;
                for (int i = 0; i < gs; i++) {
                    if (x[i] > a) { b = a; a = x[i]; }
                    else if (x[i] > b) b = x[i];
                }
                s->group_score[g] = a + b;
            } else {                                          /* the best */
                float a = -INFINITY;
                for (int i = 0; i < gs; i++) a = fmaxf(a, x[i]);
                s->group_score[g] = a;
            }
        }
        memset(s->taken, 0, (size_t)G);
        float last = 0;
        for (int j = 0; j < Gk; j++) {
            int g = argmax_free(s->group_score, s->taken, G);
            s->taken[g] = 1;
            last = s->group_score[g];
        }
        if (Gk < G) out->group_margin = last - s->group_score[argmax_free(s->group_score, s->taken, G)];
        int n = 0;
        for (int g = 0; g < G; g++) {
            if (s->taken[g]) s->groups[n++] = g;
            else for (int i = 0; i < gs; i++) s->sel[g * gs + i] = -INFINITY;
        }
        out->n_groups_kept = n;
        out->group_scores = s->group_score;
    }
    /* 4. top-k of the selection scores (and the runner-up, for the margin), weights from the
     *    unbiased scores; router_topk (kernels/router_avx512.c) = k passes of argmax_free */
    int kk = k < E ? k + 1 : k;
    router_topk(s->sel, E, kk, s->top);
    double sum = 0;
    for (int j = 0; j < k; j++) {
        int e = s->top[j];
        s->ids[j] = e;
        s->weights[j] = s->scores[e];
        sum += s->scores[e];
    }
    out->margin = INFINITY;
    if (k < E) out->margin = s->sel[s->ids[k - 1]] - s->sel[s->top[k]];
    if (cfg->norm_topk_prob && k > 1)
        for (int j = 0; j < k; j++) s->weights[j] = (float)(s->weights[j] / (sum + 1e-20));
    for (int j = 0; j < k; j++) s->weights[j] *= cfg->routed_scaling_factor;
    out->k = k;
    out->ids = s->ids;
    out->weights = s->weights;
    out->scores = s->scores;
    out->sel = s->sel;
    out->groups = s->groups;
}
