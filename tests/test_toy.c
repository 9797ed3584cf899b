/* test_toy.c - the shipped toy model (models/toy):
 *   - the engine computes the training code's logits: tests/data/toy_golden.safetensors
 *     holds the PyTorch model's logits and MTP logits (float32, on the exported bf16
 *     weights; tools/train/export.py) for held-out text; prefill and decode must match
 *     them to max|err| / max|logit| <= 1e-4;
 *   - MTP self-speculative greedy decoding emits exactly plain greedy decoding's
 *     tokens, and on a trained model drafts are accepted, so both the acceptance
 *     and the rejection paths run; the same with the MTP module loaded as q8 (--draft-dtype),
 *     and with --mtp auto (whatever it decides);
 *   - --mtp auto's controller on a virtual clock (mtp_vclock.h), where the toy's 65-75 %
 *     acceptance makes speculation pay, settles on speculating; where a verification costs
 *     two plain steps (so that even an accepted draft does not pay) it settles on plain steps.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "generate.h"
#include "mtp_vclock.h"
#include "session.h"
#include "safetensors.h"

#define TOY "models/toy"
#define GOLDEN "tests/data/toy_golden.safetensors"

static double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return num / den;
}

static void check_mode(int decode) {
    st_set g;
    moe_error err = {{0}};
    if (st_open_file(&g, GOLDEN, &err)) fail_msg("%s", err.msg);
    const st_tensor *tt = st_find(&g, "tokens"), *lt = st_find(&g, "logits"), *mt = st_find(&g, "mtp.logits");
    assert_non_null(tt);
    assert_non_null(lt);
    assert_non_null(mt);
    assert_int_equal(lt->dtype, ST_F32);
    int T = (int)tt->numel;
    const int *tokens = tt->data;
    moe_session m;
    model_options opt = { .max_seq = T };
    if (session_open(&m, TOY, &opt, 1, &err)) fail_msg("%s", err.msg);
    int V = m.m.cfg.vocab_size, H = m.m.cfg.hidden_size;
    assert_int_equal(lt->shape[1], V);
    float *logits = calloc((size_t)T * V, sizeof(float)), *mtp = calloc((size_t)T * V, sizeof(float));
    float *hidden = calloc((size_t)T * H, sizeof(float));
    int *next = calloc((size_t)T, sizeof(int));
    if (decode) {
        for (int t = 0; t < T; t++)
            assert_int_equal(model_forward_seq(&m.m, &m.c, &m.kv, 0, tokens + t, 1, t, logits + (size_t)t * V, 1, hidden + (size_t)t * H, &err), 0);
    } else {
        assert_int_equal(model_forward_seq(&m.m, &m.c, &m.kv, 0, tokens, T, 0, logits, 1, hidden, &err), 0);
    }
    for (int t = 0; t + 1 < T; t++) next[t] = tokens[t + 1];
    next[T - 1] = sampler_argmax(logits + (size_t)(T - 1) * V, V);
    assert_int_equal(model_forward_mtp_seq(&m.m, &m.c, &m.kv, 0, 0, hidden, next, T, 0, mtp, 1, NULL, &err), 0);
    double e1 = rel_err(logits, lt->data, (size_t)T * V), e2 = rel_err(mtp, mt->data, (size_t)T * V);
    if (e1 > 1e-4 || e2 > 1e-4) fail_msg("%s: logits rel.err %.3e, MTP logits %.3e (limit 1e-4)", decode ? "decode" : "prefill", e1, e2);
    free(logits); free(mtp); free(hidden); free(next);
    session_close(&m);
    st_close(&g);
}

static void test_toy_matches_training_prefill(void **state) { (void)state; check_mode(0); }
static void test_toy_matches_training_decode(void **state) { (void)state; check_mode(1); }

typedef struct { int ids[256]; int n; } collected;
static int collect(void *ctx, int id, const char *text, size_t len) {
    (void)text; (void)len;
    collected *c = ctx;
    if (id >= 0 && c->n < 256) c->ids[c->n++] = id;
    return 0;
}

static void toy_mtp_greedy(weights_dtype draft_dtype) {
    st_set g;
    moe_error err = {{0}};
    if (st_open_file(&g, GOLDEN, &err)) fail_msg("%s", err.msg);
    const int *text = st_find(&g, "tokens")->data;
    int T = (int)st_find(&g, "tokens")->numel;
    moe_session m;
    model_options opt = { .max_seq = 256, .draft_dtype = draft_dtype };
    assert_int_equal(session_open(&m, TOY, &opt, 1, &err), 0);
    sampler_params greedy = { .temperature = 0.0f, .top_p = 1.0f };
    sampler s;
    assert_int_equal(sampler_init(&s, m.m.cfg.vocab_size, &greedy, &err), 0);
    long accepted = 0, drafted = 0, accepted3 = 0, drafted3 = 0;
    for (int start = 0; start + 8 <= T; start += 8) {
        collected out[4];
        for (int arm = 0; arm < 4; arm++) {   /* plain, --mtp-mode always, --mtp auto, always with --draft 3 */
            generator gen;
            assert_int_equal(generator_init(&gen, &m.m, &m.c, &m.kv, 0, NULL, &s, &err), 0);
            gen.eos_id = -1;
            if (arm) assert_int_equal(generator_enable_mtp(&gen, arm == 2 ? MTP_AUTO : MTP_ALWAYS, NULL, &err), 0);
            if (arm == 3) assert_int_equal(generator_set_draft_len(&gen, 3, &err), 0);
            assert_int_equal(generator_prompt(&gen, text + start, 8, &err), 0);
            memset(&out[arm], 0, sizeof out[arm]);
            assert_int_equal(generator_run(&gen, 48, collect, &out[arm], &err), 0);
            if (arm == 1) { accepted += gen.n_accepted; drafted += gen.n_drafted; }
            if (arm == 3) { accepted3 += gen.n_accepted; drafted3 += gen.n_drafted; }
            generator_free(&gen);
        }
        for (int arm = 1; arm < 4; arm++) {
            assert_int_equal(out[0].n, out[arm].n);
            for (int i = 0; i < out[0].n; i++)
                if (out[0].ids[i] != out[arm].ids[i])
                    fail_msg("prompt at %d: token %d differs with --mtp%s", start, i,
                             arm == 1 ? "-mode always" : arm == 2 ? " auto" : "-mode always --draft 3");
        }
    }
    assert_true(accepted > 0);            /* the acceptance path ran */
    assert_true(accepted < drafted);      /* and the rejection path */
    assert_true(accepted3 > 0 && accepted3 < drafted3);
    print_message("toy --mtp (draft dtype %d): %ld of %ld drafts accepted; --draft 3: %ld of %ld\n", (int)draft_dtype, accepted,
                  drafted, accepted3, drafted3);
    sampler_free(&s);
    session_close(&m);
    st_close(&g);
}

static void test_toy_mtp_greedy_identical_with_acceptance(void **state) { (void)state; toy_mtp_greedy(WEIGHTS_AUTO); }
/* --draft-dtype q8: drafts from the MTP module in q8 are still mostly accepted, output unchanged */
static void test_toy_mtp_q8_drafts(void **state) { (void)state; toy_mtp_greedy(WEIGHTS_Q8); }

/* --mtp auto on the virtual clock, greedy, 160 tokens after each of several held-out
 * prompts (a fresh controller each). Returns the speculative and plain steps summed, and
 * how many runs ended speculating. */
static void toy_auto_virtual(double pass, double tok, double mtp, long *spec, long *plain, int *ended_spec, int *runs,
                             long *shadow, double *acceptance) {
    st_set g;
    moe_error err = {{0}};
    if (st_open_file(&g, GOLDEN, &err)) fail_msg("%s", err.msg);
    const int *text = st_find(&g, "tokens")->data;
    int T = (int)st_find(&g, "tokens")->numel;
    moe_session m;
    model_options opt = { .max_seq = 256 };
    assert_int_equal(session_open(&m, TOY, &opt, 1, &err), 0);
    sampler_params greedy = { .temperature = 0.0f, .top_p = 1.0f };
    sampler s;
    assert_int_equal(sampler_init(&s, m.m.cfg.vocab_size, &greedy, &err), 0);
    *spec = *plain = 0;
    *ended_spec = *runs = 0;
    *shadow = 0;
    long drafted = 0;
    double accepted = 0;
    for (int start = 0; start + 8 <= T && *runs < 4; start += 16) {
        generator gen;
        mtp_vclock v;
        assert_int_equal(generator_init(&gen, &m.m, &m.c, &m.kv, 0, NULL, &s, &err), 0);
        gen.eos_id = -1;
        assert_int_equal(generator_enable_mtp(&gen, MTP_AUTO, NULL, &err), 0);
        mtp_vclock_install(&v, &m.c, &gen, m.m.cfg.num_hidden_layers, pass, tok, mtp);
        assert_int_equal(generator_prompt(&gen, text + start, 8, &err), 0);
        assert_int_equal(generator_run(&gen, 160, NULL, NULL, &err), 0);
        *spec += gen.ctl.n_spec_steps;
        *plain += gen.ctl.n_plain_steps;
        *ended_spec += gen.ctl.spec;
        *shadow += gen.ctl.n_shadow;
        for (int b = 0; b < MTP_CONF_BUCKETS; b++) { drafted += gen.ctl.drafted[b]; accepted += gen.ctl.accepted[b]; }
        (*runs)++;
        m.c.on_route = NULL;
        generator_free(&gen);
    }
    *acceptance = drafted ? accepted / drafted : 0;
    sampler_free(&s);
    session_close(&m);
    st_close(&g);
}

/* A plain step costs 1.03 (pass 1 + 3 MoE layers x 0.01), a verification 1.06, a draft 0.05:
 * a speculative step (1.11) pays at any acceptance above 10 % (the toy's: 30-90 % along its
 * texts), by more than auto's 15 % margin above ~30 %: auto speculates. */
static void test_toy_mtp_auto_settles_on_mtp(void **state) {
    (void)state;
    long spec, plain, shadow;
    int ended, runs;
    double acc;
    toy_auto_virtual(1.0, 0.01, 0.05, &spec, &plain, &ended, &runs, &shadow, &acc);
    print_message("auto where drafting pays: %ld speculative, %ld plain steps; %d of %d runs ended speculating\n", spec,
                  plain, ended, runs);
    assert_int_equal(ended, runs);
    assert_true(plain * 10 <= spec);   /* plain steps: the yardstick, re-measurements */
}

/* A plain step costs 3 (3 MoE layers x 1), a verification 6, a draft 0.5: speculating never
 * pays, whatever the acceptance: auto settles on plain steps. After the first measurement
 * its re-measurements only draft (a verification cannot pay) and check the draft against the
 * next plain step: that acceptance is the toy's, 60-80 %. */
static void test_toy_mtp_auto_settles_on_plain(void **state) {
    (void)state;
    long spec, plain, shadow;
    int ended, runs;
    double acc;
    toy_auto_virtual(0.0, 1.0, 0.5, &spec, &plain, &ended, &runs, &shadow, &acc);
    print_message("auto where drafting does not pay: %ld speculative, %ld plain steps, %ld drafts checked without "
                  "verifying; acceptance %.2f; %d of %d runs ended speculating\n", spec, plain, shadow, acc, ended, runs);
    assert_int_equal(ended, 0);
    assert_true(spec <= 8L * runs);   /* the first measurement and re-measurements at 8, 40, 168 */
    assert_true(shadow >= runs);
    assert_true(acc > 0.4 && acc < 0.95);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_toy_matches_training_prefill),
        cmocka_unit_test(test_toy_matches_training_decode),
        cmocka_unit_test(test_toy_mtp_greedy_identical_with_acceptance),
        cmocka_unit_test(test_toy_mtp_q8_drafts),
        cmocka_unit_test(test_toy_mtp_auto_settles_on_mtp),
        cmocka_unit_test(test_toy_mtp_auto_settles_on_plain),
    };
    return cmocka_run_group_tests_name("toy model", tests, NULL, NULL);
}
