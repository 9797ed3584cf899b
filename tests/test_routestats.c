/* test_routestats.c - routing statistics against a direct computation, the routing
 * knobs, and bad input.
 *
 * On golden checkpoints (tiny-bf16: 256 experts, 8 groups keep 4, top-8, noaux_tc,
 * MTP; v2lite-f32: 64 experts, greedy softmax top-6; mix-f32: V2 group-limited):
 *   - every MoE layer's counts sum to tokens x K, the co-activation diagonal equals
 *     the counts and the matrix is symmetric;
 *   - MaxVio, CV, entropy, Jain's index, unused experts, adjacent overlap, score mass
 *     and groups per token equal a computation from the per-token decisions this test
 *     captures itself;
 *   - the trace JSON line of a decision parses back to the same experts and weights;
 *   - knobs: K = 4 gives 4 ids; no_group_limit lets some token use more than
 *     topk_group groups; no_route_bias changes some selection;
 *   - bad input: co-activation layer out of range or dense, K > E: one-line errors.
 */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "session.h"
#include "routestats.h"

#define GOLDEN "tests/data/golden/"
#define T_TOK 48
#define EPS 1e-9

/* ------------------------------------------------------------------ capture */

typedef struct {
    int Lt, E, K, T;
    int *ids;              /* [Lt, T, K] */
    float *weights;        /* [Lt, T, K] */
    double *mass;          /* [Lt, T] chosen score share */
    double *wsum;          /* [Lt, T] sum of the gate weights */
    int *kept;             /* [Lt, T] n_groups_kept */
    unsigned char *seen;   /* [Lt, T] */
    routestats *rs;        /* fed too, when not NULL */
    int json_checked;
} capture;

static void check_trace_json(const route_decision *d, int layer, int pos) {
    char buf[8192];
    int n = routestats_trace_json(buf, sizeof buf, layer, pos, 7, "a \"q\"\n", d);
    assert_true(n > 0 && n < (int)sizeof buf - 1);
    json_error_t je;
    json_t *o = json_loads(buf, 0, &je);
    if (!o) fail_msg("trace line is not JSON (%s): %s", je.text, buf);
    assert_int_equal(json_integer_value(json_object_get(o, "layer")), layer);
    assert_int_equal(json_integer_value(json_object_get(o, "pos")), pos);
    assert_string_equal(json_string_value(json_object_get(o, "text")), "a \"q\"\n");
    json_t *ex = json_object_get(o, "experts"), *w = json_object_get(o, "weights");
    assert_int_equal(json_array_size(ex), d->k);
    for (int j = 0; j < d->k; j++) {
        assert_int_equal(json_integer_value(json_array_get(ex, j)), d->ids[j]);
        assert_true(fabs(json_real_value(json_array_get(w, j)) - d->weights[j]) <= 1e-5 * fabs(d->weights[j]));
    }
    assert_int_equal(json_array_size(json_object_get(o, "groups")), d->n_groups_kept);
    json_decref(o);
}

static void on_route(void *ctx, int layer, int seq, int pos, const route_decision *d) {
    capture *c = ctx;
    assert_true(layer >= 0 && layer < c->Lt && pos >= 0 && pos < c->T);
    assert_int_equal(d->k, c->K);
    size_t lt = (size_t)layer * c->T + pos;
    memcpy(c->ids + lt * c->K, d->ids, sizeof(int) * c->K);
    memcpy(c->weights + lt * c->K, d->weights, sizeof(float) * c->K);
    double chosen = 0, all = 0;
    for (int j = 0; j < c->K; j++) chosen += d->scores[d->ids[j]];
    for (int e = 0; e < c->E; e++) all += d->scores[e];
    c->mass[lt] = chosen / all;
    c->wsum[lt] = 0;
    for (int j = 0; j < c->K; j++) c->wsum[lt] += d->weights[j];
    c->kept[lt] = d->n_groups_kept;
    c->seen[lt] = 1;
    if (c->json_checked < 3) { check_trace_json(d, layer, pos); c->json_checked++; }
    if (c->rs) routestats_observe(c->rs, layer, pos, d);
}

/* Runs T_TOK fixed pseudo-random tokens (and the MTP block) through `name`, capturing
 * every decision; feeds rs too when given (rs is initialised here, coact at coact_layer). */
static void run_model(const char *name, const router_options *ro, capture *c, routestats *rs, int coact_layer) {
    char dir[256];
    snprintf(dir, sizeof dir, GOLDEN "%s", name);
    moe_session m;
    moe_error err = {{0}};
    model_options opt = { .max_seq = T_TOK, .batch_max = 7 };   /* 7: several chunks */
    if (ro) opt.routing = *ro;
    if (session_open(&m, dir, &opt, 1, &err)) fail_msg("load %s: %s", dir, err.msg);
    int T = T_TOK, V = m.m.cfg.vocab_size, H = m.m.cfg.hidden_size;
    memset(c, 0, sizeof *c);
    c->Lt = m.m.w.n_layers; c->E = m.m.cfg.n_routed_experts; c->K = m.m.K; c->T = T;
    c->ids = calloc((size_t)c->Lt * T * c->K, sizeof(int));
    c->weights = calloc((size_t)c->Lt * T * c->K, sizeof(float));
    c->mass = calloc((size_t)c->Lt * T, sizeof(double));
    c->wsum = calloc((size_t)c->Lt * T, sizeof(double));
    c->kept = calloc((size_t)c->Lt * T, sizeof(int));
    c->seen = calloc((size_t)c->Lt * T, 1);
    if (rs) {
        if (routestats_init(rs, &m.m.cfg, m.m.K, coact_layer, &err)) fail_msg("routestats_init: %s", err.msg);
        c->rs = rs;
    }
    int tokens[T_TOK], next[T_TOK];
    unsigned x = 12345;
    for (int t = 0; t < T; t++) { x = x * 1103515245u + 12345u; tokens[t] = (int)((x >> 8) % (unsigned)V); }
    float *hidden = calloc((size_t)T * H, sizeof(float));
    m.c.on_route = on_route;
    m.c.on_route_ctx = c;
    assert_int_equal(model_forward_seq(&m.m, &m.c, &m.kv, 0, tokens, T, 0, NULL, 0, hidden, &err), 0);
    if (m.m.cfg.num_nextn_predict_layers) {
        for (int t = 0; t < T; t++) next[t] = tokens[(t + 1) % T];
        assert_int_equal(model_forward_mtp_seq(&m.m, &m.c, &m.kv, 0, 0, hidden, next, T, 0, NULL, 0, NULL, &err), 0);
    }
    free(hidden);
    session_close(&m);
}

static void capture_free(capture *c) {
    free(c->ids); free(c->weights); free(c->mass); free(c->wsum); free(c->kept); free(c->seen);
}

static int in_set(const int *s, int k, int x) {
    for (int i = 0; i < k; i++) if (s[i] == x) return 1;
    return 0;
}

static void assert_close(double a, double b, const char *what, int layer) {
    if (fabs(a - b) > EPS * fmax(1.0, fabs(b))) fail_msg("layer %d %s: routestats %.12g, direct %.12g", layer, what, a, b);
}

/* ------------------------------------------------------------------ statistics vs direct */

static void check_stats(const char *name) {
    routestats rs;
    capture c;
    char dir[256];
    snprintf(dir, sizeof dir, GOLDEN "%s", name);
    moe_config cfg;
    moe_error err = {{0}};
    assert_int_equal(config_load(&cfg, dir, &err), 0);
    int coact = -1;
    for (int l = 0; l < cfg.num_hidden_layers + cfg.num_nextn_predict_layers; l++)
        if (config_layer_is_moe(&cfg, l)) coact = l;       /* the last MoE layer (the MTP block if any) */
    run_model(name, NULL, &c, &rs, coact);
    int E = c.E, K = c.K, T = c.T, G = cfg.n_group, gs = E / G, checked = 0;
    for (int l = 0; l < c.Lt; l++) {
        if (!config_layer_is_moe(&cfg, l)) { assert_int_equal(rs.tokens[l], 0); continue; }
        /* direct: counts */
        int64_t *cnt = calloc((size_t)E, sizeof(int64_t));
        for (int t = 0; t < T; t++) {
            assert_true(c.seen[(size_t)l * T + t]);
            for (int j = 0; j < K; j++) cnt[c.ids[((size_t)l * T + t) * K + j]]++;
        }
        int64_t sum = 0;
        for (int e = 0; e < E; e++) {
            sum += rs.counts[(size_t)l * E + e];
            assert_int_equal(rs.counts[(size_t)l * E + e], cnt[e]);
        }
        assert_int_equal(sum, (int64_t)T * K);
        assert_int_equal(rs.tokens[l], T);
        /* direct: metrics */
        double mean = (double)T * K / E, mx = 0, var = 0, ent = 0, sq = 0, ov = 0, mass = 0, groups = 0, wsum = 0;
        int unused = 0, gmax = 0;
        for (int e = 0; e < E; e++) {
            if (cnt[e] > mx) mx = (double)cnt[e];
            var += (cnt[e] - mean) * (cnt[e] - mean) / E;
            sq += (double)cnt[e] * cnt[e];
            if (cnt[e]) ent -= (cnt[e] / (mean * E)) * log(cnt[e] / (mean * E));
            else unused++;
        }
        for (int t = 0; t < T; t++) {
            const int *s = c.ids + ((size_t)l * T + t) * K;
            mass += c.mass[(size_t)l * T + t] / T;
            wsum += c.wsum[(size_t)l * T + t] / T;
            int used = 0;
            for (int g = 0; g < G; g++) {
                int any = 0;
                for (int j = 0; j < K; j++) any |= s[j] / gs == g;
                used += any;
            }
            groups += (double)used / T;
            if (used > gmax) gmax = used;
            if (t > 0) {
                int same = 0;
                for (int j = 0; j < K; j++) same += in_set(s - K, K, s[j]);
                ov += (double)same / K / (T - 1);
            }
        }
        routestats_layer m;
        routestats_layer_metrics(&rs, l, &m);
        assert_close(m.maxvio, mx / mean - 1, "MaxVio", l);
        assert_close(m.cv, sqrt(var) / mean, "CV", l);
        assert_close(m.entropy, ent / log(E), "entropy", l);
        assert_close(m.jain, (double)T * K * T * K / (E * sq), "Jain", l);
        assert_int_equal(m.unused, unused);
        assert_close(m.overlap, ov, "overlap", l);
        assert_close(m.mass, mass, "mass", l);
        assert_close(m.weight_sum, wsum, "weight sum", l);
        if (cfg.norm_topk_prob) assert_true(fabs(m.weight_sum - cfg.routed_scaling_factor) < 1e-5);
        assert_close(m.groups_mean, groups, "groups per token", l);
        assert_int_equal(m.groups_max, gmax);
        assert_true(m.n_hot > 0 && m.hot_count[0] == (int64_t)mx);
        for (int i = 1; i < m.n_hot; i++) assert_true(m.hot_count[i] <= m.hot_count[i - 1]);
        /* group-limited routing keeps exactly topk_group groups, and uses no others */
        if (G > 1 && cfg.topk_method != TOPK_GREEDY) {
            int64_t kept = 0;
            for (int g = 0; g < G; g++) kept += rs.group_kept[(size_t)l * G + g];
            assert_int_equal(kept, (int64_t)T * cfg.topk_group);
            assert_true(gmax <= cfg.topk_group);
        }
        if (l == coact) {
            for (int a = 0; a < E; a++) {
                assert_int_equal(rs.coact[(size_t)a * E + a], cnt[a]);
                for (int b = 0; b < E; b++) assert_int_equal(rs.coact[(size_t)a * E + b], rs.coact[(size_t)b * E + a]);
            }
            /* one pair directly */
            const int *s0 = c.ids + ((size_t)l * T) * K;
            int64_t both = 0;
            for (int t = 0; t < T; t++) {
                const int *s = c.ids + ((size_t)l * T + t) * K;
                both += in_set(s, K, s0[0]) && in_set(s, K, s0[1]);
            }
            assert_int_equal(rs.coact[(size_t)s0[0] * E + s0[1]], both);
        }
        free(cnt);
        checked++;
    }
    assert_true(checked > 0);
    /* reset clears everything */
    routestats_reset(&rs);
    for (int l = 0; l < c.Lt; l++) assert_int_equal(rs.tokens[l], 0);
    routestats_free(&rs);
    capture_free(&c);
}

static void test_stats_tiny_bf16(void **state) { (void)state; check_stats("tiny-bf16"); }
static void test_stats_v2lite_f32(void **state) { (void)state; check_stats("v2lite-f32"); }
static void test_stats_mix_f32(void **state) { (void)state; check_stats("mix-f32"); }

/* A balanced load by construction: every metric at its ideal value. */
static void test_metrics_uniform_and_skewed(void **state) {
    (void)state;
    int64_t even[8] = {5, 5, 5, 5, 5, 5, 5, 5}, one[8] = {40, 0, 0, 0, 0, 0, 0, 0};
    double maxvio, cv, ent, jain;
    int unused;
    routestats_load_metrics(even, 8, 2, &maxvio, &cv, &ent, &jain, &unused);
    assert_true(fabs(maxvio) < EPS && fabs(cv) < EPS && fabs(ent - 1) < EPS && fabs(jain - 1) < EPS && unused == 0);
    routestats_load_metrics(one, 8, 2, &maxvio, &cv, &ent, &jain, &unused);
    assert_true(fabs(maxvio - 7) < EPS && fabs(ent) < EPS && fabs(jain - 1.0 / 8) < EPS && unused == 7);
    assert_true(fabs(cv - sqrt(7.0)) < EPS);
}

/* ------------------------------------------------------------------ knobs */

static void test_knob_experts_per_token(void **state) {
    (void)state;
    router_options ro = { .experts_per_token = 4 };
    capture c;
    routestats rs;
    run_model("tiny-bf16", &ro, &c, &rs, -1);
    assert_int_equal(c.K, 4);               /* on_route asserts d->k == 4 for every decision */
    for (int l = 1; l < c.Lt; l++) {
        int64_t sum = 0;
        for (int e = 0; e < c.E; e++) sum += rs.counts[(size_t)l * c.E + e];
        assert_int_equal(sum, (int64_t)c.T * 4);
    }
    /* the 4 are the first 4 of the default 8 (same order: selection score descending) */
    capture d;
    run_model("tiny-bf16", NULL, &d, NULL, -1);
    for (int l = 1; l < c.Lt; l++)
        for (int t = 0; t < c.T; t++) {
            /* only layer 1 sees identical inputs (later layers differ because the FFN output differs) */
            if (l != 1) continue;
            for (int j = 0; j < 4; j++)
                assert_int_equal(c.ids[((size_t)l * c.T + t) * 4 + j], d.ids[((size_t)l * d.T + t) * 8 + j]);
        }
    routestats_free(&rs);
    capture_free(&c);
    capture_free(&d);
}

static void test_knob_no_group_limit(void **state) {
    (void)state;
    router_options ro = { .no_group_limit = 1 };
    capture c;
    routestats rs;
    run_model("tiny-bf16", &ro, &c, &rs, -1);
    int wider = 0;
    for (int l = 1; l < c.Lt; l++) {
        routestats_layer m;
        routestats_layer_metrics(&rs, l, &m);
        if (m.groups_max > 4) wider++;     /* topk_group = 4 */
        for (int t = 0; t < c.T; t++) assert_int_equal(c.kept[(size_t)l * c.T + t], 0);
    }
    assert_true(wider > 0);
    routestats_free(&rs);
    capture_free(&c);
}

static void test_knob_no_route_bias(void **state) {
    (void)state;
    router_options ro = { .no_route_bias = 1 };
    capture a, b;
    run_model("tiny-bf16", &ro, &a, NULL, -1);
    run_model("tiny-bf16", NULL, &b, NULL, -1);
    int differ = 0;
    for (int t = 0; t < a.T; t++)          /* layer 1: same inputs, so any difference is the bias */
        for (int j = 0; j < a.K; j++)
            differ += !in_set(b.ids + ((size_t)1 * b.T + t) * b.K, b.K, a.ids[((size_t)1 * a.T + t) * a.K + j]);
    assert_true(differ > 0);
    capture_free(&a);
    capture_free(&b);
}

/* ------------------------------------------------------------------ bad input */

static void test_bad_coact_layer(void **state) {
    (void)state;
    moe_config cfg;
    moe_error err = {{0}};
    assert_int_equal(config_load(&cfg, GOLDEN "tiny-bf16", &err), 0);
    routestats rs;
    assert_int_equal(routestats_init(&rs, &cfg, 8, 3, &err), MOE_FAIL);      /* layers 0..2 */
    assert_non_null(strstr(err.msg, "out of range"));
    assert_null(strchr(err.msg, '\n'));
    assert_int_equal(routestats_init(&rs, &cfg, 8, 0, &err), MOE_FAIL);      /* first_k_dense_replace = 1 */
    assert_non_null(strstr(err.msg, "dense"));
    assert_int_equal(routestats_init(&rs, &cfg, 8, 2, &err), MOE_OK);        /* the MTP block is MoE */
    routestats_free(&rs);
}

static void test_bad_k(void **state) {
    (void)state;
    moe_config cfg;
    moe_error err = {{0}};
    assert_int_equal(config_load(&cfg, GOLDEN "tiny-bf16", &err), 0);
    routestats rs;
    assert_int_equal(routestats_init(&rs, &cfg, 257, -1, &err), MOE_FAIL);
    assert_non_null(strstr(err.msg, "must be in [1, 256]"));
    moe_session m;
    model_options opt = { .routing = { .experts_per_token = 300 } };
    assert_int_equal(session_open(&m, GOLDEN "tiny-bf16", &opt, 1, &err), MOE_FAIL);
    assert_non_null(strstr(err.msg, "experts per token = 300"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stats_tiny_bf16),
        cmocka_unit_test(test_stats_v2lite_f32),
        cmocka_unit_test(test_stats_mix_f32),
        cmocka_unit_test(test_metrics_uniform_and_skewed),
        cmocka_unit_test(test_knob_experts_per_token),
        cmocka_unit_test(test_knob_no_group_limit),
        cmocka_unit_test(test_knob_no_route_bias),
        cmocka_unit_test(test_bad_coact_layer),
        cmocka_unit_test(test_bad_k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
