/* test_generate.c - the sampler and the generation loop, including MTP
 * self-speculative decoding.
 *
 *   - sampler: greedy is the argmax; top-k 1 and a tiny top-p are greedy; min-p and
 *     top-k drop what they should; distributions sum to 1; the same seed gives the
 *     same draws and empirical frequencies follow the distribution;
 *   - generation: greedy decoding with --mtp emits exactly the tokens of plain greedy
 *     decoding, over many prompts and lengths (on a random checkpoint nearly every
 *     draft is rejected, so this exercises rejection); afterwards the KV cache
 *     gives the same logits as a fresh prefill of the same history;
 *   - a chat-style second prompt reuses the cached prefix and matches a fresh run;
 *   - --mtp auto's controller, on a virtual clock (mtp_vclock.h): with drafts that are never
 *     accepted it settles on plain steps even where an accepted draft would pay.
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
#include "sampler.h"

#define MODEL "tests/data/golden/tiny-bf16"

/* ------------------------------------------------------------------ sampler */

static void test_sampler_greedy_and_filters(void **state) {
    (void)state;
    float logits[6] = {0.1f, 2.0f, 1.9f, -1.0f, 2.0f, 0.5f};   /* tie 1/4 -> lower id */
    moe_error err;
    sampler s;
    sampler_params p = { .temperature = 0.0f, .top_p = 1.0f };
    assert_int_equal(sampler_init(&s, 6, &p, &err), 0);
    assert_int_equal(sampler_sample(&s, logits), 1);
    sampler_free(&s);
    /* top-k 1 and top-p tiny are greedy whatever the seed */
    for (int seed = 0; seed < 20; seed++) {
        sampler_params k1 = { .temperature = 1.0f, .top_k = 1, .top_p = 1.0f, .seed = (uint64_t)seed };
        assert_int_equal(sampler_init(&s, 6, &k1, &err), 0);
        assert_int_equal(sampler_sample(&s, logits), 1);
        sampler_free(&s);
        sampler_params p0 = { .temperature = 1.0f, .top_p = 1e-4f, .seed = (uint64_t)seed };
        assert_int_equal(sampler_init(&s, 6, &p0, &err), 0);
        assert_int_equal(sampler_sample(&s, logits), 1);
        sampler_free(&s);
    }
    /* min-p 0.5: keeps ids whose p >= 0.5 p_max: 1, 2, 4 (exp(-0.1) = 0.90) but not 5 (exp(-1.5)) */
    sampler_params mp = { .temperature = 1.0f, .top_p = 1.0f, .min_p = 0.5f };
    assert_int_equal(sampler_init(&s, 6, &mp, &err), 0);
    float probs[6];
    sampler_distribution(&s, logits, probs);
    double sum = 0;
    for (int i = 0; i < 6; i++) sum += probs[i];
    assert_true(fabs(sum - 1.0) < 1e-6);
    assert_true(probs[1] > 0 && probs[2] > 0 && probs[4] > 0);
    assert_true(probs[0] == 0 && probs[3] == 0 && probs[5] == 0);
    sampler_free(&s);
    /* top-k 2: ids 1 and 4 (the tie at 2.0), each 1/2 */
    sampler_params k2 = { .temperature = 1.0f, .top_k = 2, .top_p = 1.0f };
    assert_int_equal(sampler_init(&s, 6, &k2, &err), 0);
    sampler_distribution(&s, logits, probs);
    assert_true(fabs(probs[1] - 0.5f) < 1e-6 && fabs(probs[4] - 0.5f) < 1e-6);
    sampler_free(&s);
}

static void test_sampler_seed_and_frequencies(void **state) {
    (void)state;
    float logits[4] = {0.0f, 1.0f, 2.0f, -0.5f};
    moe_error err;
    sampler a, b;
    sampler_params p = { .temperature = 1.0f, .top_p = 1.0f, .seed = 42 };
    assert_int_equal(sampler_init(&a, 4, &p, &err), 0);
    assert_int_equal(sampler_init(&b, 4, &p, &err), 0);
    int count[4] = {0};
    const int N = 40000;
    for (int i = 0; i < N; i++) {
        int x = sampler_sample(&a, logits);
        assert_int_equal(x, sampler_sample(&b, logits));   /* same seed, same draws */
        count[x]++;
    }
    float probs[4];
    sampler_distribution(&a, logits, probs);
    for (int i = 0; i < 4; i++) {   /* 5 standard deviations */
        double sd = sqrt(N * probs[i] * (1 - probs[i]));
        if (fabs(count[i] - N * probs[i]) > 5 * sd + 1) fail_msg("id %d: %d draws, expected %.0f", i, count[i], N * probs[i]);
    }
    sampler_free(&a);
    sampler_free(&b);
    sampler_params bad = { .temperature = -1.0f, .top_p = 1.0f };
    assert_int_not_equal(sampler_init(&a, 4, &bad, &err), 0);
    assert_non_null(strstr(err.msg, "temperature"));
}

/* ------------------------------------------------------------------ generation */

typedef struct { int ids[512]; int n; } collected;

static int collect(void *ctx, int id, const char *text, size_t len) {
    (void)text; (void)len;
    collected *c = ctx;
    if (id >= 0 && c->n < 512) c->ids[c->n++] = id;
    return 0;
}

/* draft: --draft N (chained drafts per speculative step) */
static void generate_ids_draft(moe_session *m, const int *prompt, int n_prompt, int max_new, int mtp, int draft,
                               sampler_params sp, collected *out, generator *keep) {
    moe_error err = {{0}};
    sampler s;
    generator g;
    assert_int_equal(sampler_init(&s, m->m.cfg.vocab_size, &sp, &err), 0);
    assert_int_equal(generator_init(&g, &m->m, &m->c, &m->kv, 0, NULL, &s, &err), 0);
    g.eos_id = -1;   /* random weights: never stop early */
    if (mtp) assert_int_equal(generator_enable_mtp(&g, (mtp_mode)mtp, NULL, &err), 0);
    if (mtp) assert_int_equal(generator_set_draft_len(&g, draft, &err), 0);
    assert_int_equal(generator_prompt(&g, prompt, n_prompt, &err), 0);
    memset(out, 0, sizeof *out);
    assert_int_equal(generator_run(&g, max_new, collect, out, &err), 0);
    assert_int_equal(out->n, max_new);
    if (mtp == MTP_ALWAYS && max_new > 1) {
        assert_true(g.n_drafted > 0);
        assert_true(g.n_steps > 0);
    }
    if (keep) *keep = g;
    else generator_free(&g);
    sampler_free(&s);
}

static void generate_ids(moe_session *m, const int *prompt, int n_prompt, int max_new, int mtp, sampler_params sp,
                         collected *out, generator *keep) {
    generate_ids_draft(m, prompt, n_prompt, max_new, mtp, 1, sp, out, keep);
}

static void test_mtp_greedy_identical(void **state) {
    (void)state;
    moe_session m;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 128 };
    assert_int_equal(session_open(&m, MODEL, &opt, 1, &err), 0);
    sampler_params greedy = { .temperature = 0.0f, .top_p = 1.0f };
    int lengths[] = {1, 2, 3, 7, 20, 50};
    for (int pi = 0; pi < 6; pi++) {
        int prompt[8];
        int np = 1 + pi % 5;
        for (int i = 0; i < np; i++) prompt[i] = (pi * 97 + i * 31 + 5) % m.m.cfg.vocab_size;
        for (int li = 0; li < 6; li++) {
            collected plain, spec;
            generate_ids(&m, prompt, np, lengths[li], 0, greedy, &plain, NULL);
            for (int dl = 1; dl <= MTP_DRAFT_MAX; dl++) {   /* --draft 1..4: chained drafts */
                generate_ids_draft(&m, prompt, np, lengths[li], MTP_ALWAYS, dl, greedy, &spec, NULL);
                for (int i = 0; i < plain.n; i++)
                    if (plain.ids[i] != spec.ids[i])
                        fail_msg("prompt %d, %d tokens, --draft %d: token %d differs (%d vs %d with --mtp)", pi, lengths[li],
                                 dl, i, plain.ids[i], spec.ids[i]);
            }
        }
    }
    session_close(&m);
}

/* After MTP decoding with rejections, the cache must equal a fresh prefill. */
static void test_mtp_cache_consistent(void **state) {
    (void)state;
    moe_error err = {{0}};
    moe_session a, b;
    model_options opt = { .max_seq = 96 };
    assert_int_equal(session_open(&a, MODEL, &opt, 1, &err), 0);
    assert_int_equal(session_open(&b, MODEL, &opt, 1, &err), 0);
    int prompt[3] = {11, 200, 37};
    sampler_params sp = { .temperature = 0.9f, .top_p = 1.0f, .seed = 7 };   /* sampled: the rejection path */
    collected out;
    generator g;
    generate_ids(&a, prompt, 3, 40, MTP_ALWAYS, sp, &out, &g);
    assert_true(g.n_accepted < g.n_drafted);          /* some drafts were rejected */
    int n = g.n_history, V = a.m.cfg.vocab_size;
    assert_true(n >= 3 + 40 - 2);
    /* one more token through the speculative model's cache vs a fresh prefill of the history + it */
    int *hist = malloc(sizeof(int) * (size_t)(n + 1));
    memcpy(hist, g.history, sizeof(int) * (size_t)n);
    hist[n] = 123;
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    assert_int_equal(model_forward_seq(&a.m, &a.c, &a.kv, 0, &hist[n], 1, n, la, 0, NULL, &err), 0);
    assert_int_equal(model_forward_seq(&b.m, &b.c, &b.kv, 0, hist, n + 1, 0, lb, 0, NULL, &err), 0);
    double num = 0, den = 0;
    for (int i = 0; i < V; i++) { num = fmax(num, fabs(la[i] - lb[i])); den = fmax(den, fabs(lb[i])); }
    if (num / den > 1e-5) fail_msg("cache after MTP decoding differs from a fresh prefill: %.3e", num / den);
    free(hist); free(la); free(lb);
    generator_free(&g);
    session_close(&a);
    session_close(&b);
}

/* A second prompt that extends the first reuses the cache, and matches a fresh run. */
static void test_prompt_prefix_reuse(void **state) {
    (void)state;
    moe_error err = {{0}};
    moe_session m;
    model_options opt = { .max_seq = 64 };
    assert_int_equal(session_open(&m, MODEL, &opt, 1, &err), 0);
    sampler s;
    sampler_params greedy = { .temperature = 0.0f, .top_p = 1.0f };
    assert_int_equal(sampler_init(&s, m.m.cfg.vocab_size, &greedy, &err), 0);
    generator g;
    assert_int_equal(generator_init(&g, &m.m, &m.c, &m.kv, 0, NULL, &s, &err), 0);
    int turn1[4] = {1, 2, 3, 4}, turn2[7] = {1, 2, 3, 4, 9, 8, 7};
    assert_int_equal(generator_prompt(&g, turn1, 4, &err), 0);
    assert_int_equal(generator_prompt(&g, turn2, 7, &err), 0);
    assert_int_equal(g.n_prompt_computed, 3);          /* only the new tokens ran */
    int V = m.m.cfg.vocab_size;
    float *want = malloc(sizeof(float) * V);
    moe_session fresh;
    assert_int_equal(session_open(&fresh, MODEL, &opt, 1, &err), 0);
    assert_int_equal(model_forward_seq(&fresh.m, &fresh.c, &fresh.kv, 0, turn2, 7, 0, want, 0, NULL, &err), 0);
    for (int i = 0; i < V; i++) assert_true(fabsf(want[i] - g.logits[i]) <= 1e-5f * (1 + fabsf(want[i])));
    /* a diverging prompt rolls back to the common prefix */
    int other[5] = {1, 2, 5, 5, 5};
    assert_int_equal(generator_prompt(&g, other, 5, &err), 0);
    assert_int_equal(g.n_prompt_computed, 3);
    assert_int_equal(model_forward_seq(&fresh.m, &fresh.c, &fresh.kv, 0, other, 5, 0, want, 0, NULL, &err), 0);
    for (int i = 0; i < V; i++) assert_true(fabsf(want[i] - g.logits[i]) <= 1e-5f * (1 + fabsf(want[i])));
    /* a prompt longer than the context is an error that says the limit */
    int *big = calloc(65, sizeof(int));
    assert_int_not_equal(generator_prompt(&g, big, 65, &err), 0);
    assert_non_null(strstr(err.msg, "context holds 64"));
    free(big);
    free(want);
    generator_free(&g);
    sampler_free(&s);
    session_close(&m);
    session_close(&fresh);
}

/* --mtp auto: whatever it decides step by step (plain steps, drafts verified or skipped,
 * probes), greedy output equals plain greedy decoding. */
static void test_mtp_auto_greedy_identical(void **state) {
    (void)state;
    moe_session m;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 256 };
    assert_int_equal(session_open(&m, MODEL, &opt, 1, &err), 0);
    sampler_params greedy = { .temperature = 0.0f, .top_p = 1.0f };
    int lengths[] = {1, 2, 5, 40, 120};
    for (int pi = 0; pi < 4; pi++) {
        int prompt[8], np = 2 + pi;
        for (int i = 0; i < np; i++) prompt[i] = (pi * 53 + i * 17 + 3) % m.m.cfg.vocab_size;
        for (int li = 0; li < 5; li++) {
            collected plain, spec;
            generate_ids(&m, prompt, np, lengths[li], 0, greedy, &plain, NULL);
            generate_ids(&m, prompt, np, lengths[li], MTP_AUTO, greedy, &spec, NULL);
            for (int i = 0; i < plain.n; i++)
                if (plain.ids[i] != spec.ids[i])
                    fail_msg("prompt %d, %d tokens: token %d differs with --mtp auto", pi, lengths[li], i);
        }
    }
    session_close(&m);
}

/* generator_mtp_adopt: a second sequence that starts from what the first learned (drafts never
 * accepted, speculation costs 1.2 plain steps) pays almost none of the cold start's probes:
 * it stays plain, with at most the re-measurements its interval (grown by the first) asks for,
 * and its counters start at 0. A cold second sequence pays the probes again. */
static void test_mtp_auto_adopt_skips_relearning(void **state) {
    (void)state;
    moe_session m;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 512 };
    assert_int_equal(session_open(&m, MODEL, &opt, 1, &err), 0);
    sampler_params greedy = { .temperature = 0.0f, .top_p = 1.0f };
    sampler s;
    assert_int_equal(sampler_init(&s, m.m.cfg.vocab_size, &greedy, &err), 0);
    mtp_auto learned;
    long spec[3] = {0}, plain[3] = {0};
    for (int k = 0; k < 3; k++) {   /* 0: cold, 1: adopting 0's state, 2: cold again */
        generator g;
        mtp_vclock v;
        assert_int_equal(generator_init(&g, &m.m, &m.c, &m.kv, 0, NULL, &s, &err), 0);
        g.eos_id = -1;
        assert_int_equal(generator_enable_mtp(&g, MTP_AUTO, NULL, &err), 0);
        if (k == 1) generator_mtp_adopt(&g, &learned);
        if (k == 1) assert_int_equal(g.ctl.n_spec_steps + g.ctl.n_plain_steps + g.ctl.n_remeasure, 0);
        mtp_vclock_install(&v, &m.c, &g, m.m.cfg.num_hidden_layers, 1.0, 0.05, 0.1);
        int prompt[4] = {3 + k, 17, 101, 7};
        assert_int_equal(generator_prompt(&g, prompt, 4, &err), 0);
        assert_int_equal(generator_run(&g, 120, NULL, NULL, &err), 0);
        spec[k] = g.ctl.n_spec_steps;
        plain[k] = g.ctl.n_plain_steps;
        assert_int_equal(g.ctl.spec, 0);
        if (k == 0) learned = g.ctl;
        m.c.on_route = NULL;
        generator_free(&g);
    }
    print_message("auto, never accepted, 120 tokens: cold %ld speculative / %ld plain steps, adopting %ld / %ld, cold "
                  "again %ld / %ld\n", spec[0], plain[0], spec[1], plain[1], spec[2], plain[2]);
    assert_true(spec[0] >= 3 && spec[2] >= 3);   /* a cold start measures speculation a few times */
    assert_true(spec[1] <= 1);                   /* one re-measurement at most: the interval is long already */
    sampler_free(&s);
    session_close(&m);
}

/* --mtp auto settles: drafts never accepted, speculation 1.2 plain steps (as the adopt test),
 * sequences of 300 tokens each adopting the previous one's state. Once speculation has lost
 * by a wide margin at MTP_SETTLE re-measurements in a row, auto runs
 * MTP_QUIET steps without the MTP module: the next sequences draft nothing, check nothing,
 * and not even their prompts' MTP cache rows are computed (mtp_valid stays 0). Before that,
 * it does re-measure (the settling is earned, not the start). */
static void test_mtp_auto_settles_quiet(void **state) {
    (void)state;
    moe_session m;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 512 };
    assert_int_equal(session_open(&m, MODEL, &opt, 1, &err), 0);
    sampler_params greedy = { .temperature = 0.0f, .top_p = 1.0f };
    sampler s;
    assert_int_equal(sampler_init(&s, m.m.cfg.vocab_size, &greedy, &err), 0);
    mtp_auto learned;
    int settled_at = -1;
    long remeasured_before = 0;
    for (int k = 0; k < 12; k++) {
        generator g;
        mtp_vclock v;
        assert_int_equal(generator_init(&g, &m.m, &m.c, &m.kv, 0, NULL, &s, &err), 0);
        g.eos_id = -1;
        assert_int_equal(generator_enable_mtp(&g, MTP_AUTO, NULL, &err), 0);
        if (k) generator_mtp_adopt(&g, &learned);
        int was_quiet = g.ctl.quiet_left > 0;
        mtp_vclock_install(&v, &m.c, &g, m.m.cfg.num_hidden_layers, 1.0, 0.05, 0.1);
        int prompt[4] = {3 + k, 17, 101, 7};
        assert_int_equal(generator_prompt(&g, prompt, 4, &err), 0);
        if (was_quiet) assert_int_equal(g.mtp_valid, 0);   /* the prompt skipped the MTP module */
        assert_int_equal(generator_run(&g, 300, NULL, NULL, &err), 0);
        assert_int_equal(g.ctl.spec, 0);
        if (was_quiet) {
            assert_int_equal(g.ctl.n_spec_steps + g.ctl.n_shadow + g.ctl.n_remeasure + g.n_drafted, 0);
            assert_int_equal(g.mtp_valid, 0);
            assert_true(g.ctl.quiet_left > 0);
            assert_int_equal(g.ctl.n_settled_steps, g.ctl.n_plain_steps);   /* every step ran as plain decoding's */
            /* and emitted plain greedy decoding's tokens */
            int n = g.n_history, *toks = malloc(sizeof(int) * (size_t)n);
            assert_non_null(toks);
            memcpy(toks, g.history, sizeof(int) * (size_t)n);
            learned = g.ctl;
            m.c.on_route = NULL;
            generator_free(&g);
            assert_int_equal(generator_init(&g, &m.m, &m.c, &m.kv, 0, NULL, &s, &err), 0);
            g.eos_id = -1;
            assert_int_equal(generator_prompt(&g, prompt, 4, &err), 0);
            assert_int_equal(generator_run(&g, 300, NULL, NULL, &err), 0);
            assert_int_equal(g.n_history, n);
            assert_memory_equal(g.history, toks, sizeof(int) * (size_t)n);
            free(toks);
            generator_free(&g);
            continue;
        } else if (g.ctl.quiet_left > 0 && settled_at < 0) {
            settled_at = k;
            assert_int_equal(g.ctl.n_quiet, 1);
        }
        if (settled_at < 0) remeasured_before += g.ctl.n_remeasure;
        learned = g.ctl;
        m.c.on_route = NULL;
        generator_free(&g);
    }
    print_message("auto, never accepted: settled plain in sequence %d of 12 (300 tokens each) after %ld re-measurements\n",
                  settled_at + 1, remeasured_before);
    /* the acceptance's prior (one in two) makes the first re-measurements' losses small; they
     * pass 5 % after ~10 drafts, at intervals of 256 steps: ~1,800 steps here */
    assert_true(settled_at >= 1 && settled_at <= 8);
    assert_true(remeasured_before >= MTP_SETTLE);
    sampler_free(&s);
    session_close(&m);
}

/* --mtp auto, drafts (nearly) never accepted (random weights), on a virtual clock where a
 * speculative step costs 1.2 plain steps: an accepted draft would pay, a rejected one does
 * not. The controller must settle on plain decoding: after its first measurements only its
 * re-measurements (every 8 steps and more) draft, and it ends plain. The same on two turns
 * (the controller's state is kept across generator_run calls). */
static void test_mtp_auto_settles_plain_when_rejected(void **state) {
    (void)state;
    moe_session m;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 512 };
    assert_int_equal(session_open(&m, MODEL, &opt, 1, &err), 0);
    sampler_params greedy = { .temperature = 0.0f, .top_p = 1.0f };
    for (int pi = 0; pi < 3; pi++) {
        sampler s;
        generator g;
        mtp_vclock v;
        assert_int_equal(sampler_init(&s, m.m.cfg.vocab_size, &greedy, &err), 0);
        assert_int_equal(generator_init(&g, &m.m, &m.c, &m.kv, 0, NULL, &s, &err), 0);
        g.eos_id = -1;
        assert_int_equal(generator_enable_mtp(&g, MTP_AUTO, NULL, &err), 0);
        /* plain step 1.0 + 0.05 (one MoE layer), verification 1.1, draft 0.1 */
        mtp_vclock_install(&v, &m.c, &g, m.m.cfg.num_hidden_layers, 1.0, 0.05, 0.1);
        int prompt[4] = {3 + pi, 17, 101 + pi, 7};
        assert_int_equal(generator_prompt(&g, prompt, 4, &err), 0);
        assert_int_equal(generator_run(&g, 200, NULL, NULL, &err), 0);
        long spec1 = g.ctl.n_spec_steps, plain1 = g.ctl.n_plain_steps;
        long accepted = g.n_accepted;
        assert_int_equal(generator_run(&g, 200, NULL, NULL, &err), 0);   /* a second turn */
        long spec2 = g.ctl.n_spec_steps - spec1, plain2 = g.ctl.n_plain_steps - plain1;
        accepted += g.n_accepted;
        print_message("auto, never accepted: turn 1 %ld speculative / %ld plain steps, turn 2 %ld / %ld (%ld accepted), "
                      "%ld switches\n", spec1, plain1, spec2, plain2, accepted, g.ctl.n_switch);
        assert_true(accepted <= 2);
        assert_int_equal(g.ctl.spec, 0);
        assert_true(spec1 <= 10);          /* the first measurement, its confirmation, re-measurements at 8, 40, ... */
        assert_true(spec2 <= 3);           /* re-measurements only, at intervals up to 256 */
        assert_true(plain1 + plain2 >= 380);
        m.c.on_route = NULL;
        generator_free(&g);
        sampler_free(&s);
    }
    /* a draft costing 0.57 plain steps: the drafts checked against the next plain step show
     * that even a free verification would not pay, so no speculative step is ever run */
    {
        sampler s;
        generator g;
        mtp_vclock v;
        assert_int_equal(sampler_init(&s, m.m.cfg.vocab_size, &greedy, &err), 0);
        assert_int_equal(generator_init(&g, &m.m, &m.c, &m.kv, 0, NULL, &s, &err), 0);
        g.eos_id = -1;
        assert_int_equal(generator_enable_mtp(&g, MTP_AUTO, NULL, &err), 0);
        mtp_vclock_install(&v, &m.c, &g, m.m.cfg.num_hidden_layers, 1.0, 0.05, 0.6);
        int prompt[3] = {11, 5, 230};
        assert_int_equal(generator_prompt(&g, prompt, 3, &err), 0);
        assert_int_equal(generator_run(&g, 300, NULL, NULL, &err), 0);
        print_message("auto, costly drafts never accepted: %ld speculative, %ld plain steps, %ld drafts checked\n",
                      g.ctl.n_spec_steps, g.ctl.n_plain_steps, g.ctl.n_shadow);
        assert_int_equal(g.ctl.n_spec_steps, 0);
        assert_true(g.ctl.n_shadow >= 2 && g.ctl.n_shadow <= 6);   /* at 1, then every 8, 32, 128, 256 steps */
        m.c.on_route = NULL;
        generator_free(&g);
        sampler_free(&s);
    }
    session_close(&m);
}

/* Chi-square of n draws counted in cnt [V] against probabilities p [V]. */
static double chi_square(const long *cnt, const float *p, int V, long n) {
    double x = 0;
    for (int i = 0; i < V; i++) {
        double e = (double)n * p[i];
        if (e > 0) x += ((double)cnt[i] - e) * ((double)cnt[i] - e) / e;
        else if (cnt[i]) return INFINITY;
    }
    return x;
}

/* The speculative-sampling rule keeps the target distribution: a draft drawn from q and
 * resolved against p (speculative_resolve) is distributed as p, for several (p, q) on a
 * 6-token vocabulary, 200,000 trials each (chi-square with 5 degrees of freedom below 25,
 * p-value ~1e-4). The control: taking the draft as it is (distributed as q) fails it. */
static void test_speculative_rule_distribution(void **state) {
    (void)state;
    enum { V = 6, N = 200000 };
    static const float P[3][V] = {{.05f, .4f, .1f, .2f, .05f, .2f}, {.5f, .1f, .1f, .1f, .1f, .1f}, {0, 0, .3f, .3f, .4f, 0}};
    static const float Q[3][V] = {{.3f, .1f, .1f, .1f, .3f, .1f}, {.1f, .5f, .1f, .1f, .1f, .1f}, {.2f, .2f, .2f, .2f, .1f, .1f}};
    moe_error err = {{0}};
    sampler s;
    sampler_params sp = { .temperature = 1.0f, .top_p = 1.0f, .seed = 12345 };
    assert_int_equal(sampler_init(&s, V, &sp, &err), 0);
    for (int c = 0; c < 3; c++) {
        long cnt[V] = {0}, raw[V] = {0};
        long accepted = 0;
        for (int t = 0; t < N; t++) {
            float p[V];
            memcpy(p, P[c], sizeof p);
            int d = sampler_draw(&s, Q[c]);
            int r = speculative_resolve(&s, p, Q[c], d, V);
            cnt[r < 0 ? d : r]++;
            raw[d]++;
            accepted += r < 0;
        }
        double x = chi_square(cnt, P[c], V, N), xc = chi_square(raw, P[c], V, N);
        double want_accept = 0;   /* sum_i min(p_i, q_i) */
        for (int i = 0; i < V; i++) want_accept += P[c][i] < Q[c][i] ? P[c][i] : Q[c][i];
        print_message("case %d: chi-square %.1f (control %.0f), acceptance %.4f (expected %.4f)\n", c, x, xc,
                      (double)accepted / N, want_accept);
        assert_true(x < 25.0);
        assert_true(xc > 1000.0);
        assert_true(fabs((double)accepted / N - want_accept) < 0.01);
    }
    sampler_free(&s);
}


/* A catch-up over several MTP positions computes only the cache rows of all but the last
 * (model_forward_mtp_cache_seq): the last position's MTP logits must equal those of a full
 * MTP pass over every position, and so must a later position's, which attends to the rows. */
static void test_mtp_cache_only_catch_up(void **state) {
    (void)state;
    moe_session m;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 64 };
    assert_int_equal(session_open(&m, MODEL, &opt, 1, &err), 0);
    int V = m.m.cfg.vocab_size, H = m.m.cfg.hidden_size, lens[] = {2, 3, 9, 17};
    float *hidden = malloc(sizeof(float) * 40 * H), *full = malloc(sizeof(float) * 40 * V), *part = malloc(sizeof(float) * V);
    assert_non_null(hidden); assert_non_null(full); assert_non_null(part);
    for (int li = 0; li < 4; li++) {
        int n = lens[li], toks[40];
        for (int i = 0; i <= n + 1; i++) toks[i] = (li * 31 + i * 7 + 5) % V;
        kv_clear(&m.kv, 0);
        assert_int_equal(model_forward_seq(&m.m, &m.c, &m.kv, 0, toks, n + 1, 0, NULL, 0, hidden, &err), 0);
        /* reference: every MTP position whole, logits of all */
        assert_int_equal(model_forward_mtp_seq(&m.m, &m.c, &m.kv, 0, 0, hidden, toks + 1, n + 1, 0, full, 1, NULL, &err), 0);
        for (int split = 1; split < n; split++) {   /* [0, split) cache only, split whole; then the rest whole */
            m.kv.mtp_len[0] = 0;
            assert_int_equal(model_forward_mtp_cache_seq(&m.m, &m.c, &m.kv, 0, 0, hidden, toks + 1, split, 0, &err), 0);
            assert_int_equal(m.kv.mtp_len[0], split);
            for (int p = split; p <= n; p++) {
                assert_int_equal(model_forward_mtp_seq(&m.m, &m.c, &m.kv, 0, 0, hidden + (size_t)p * H, toks + 1 + p, 1, p,
                                                       part, 0, NULL, &err), 0);
                double e = 0, mx = 0;
                for (int i = 0; i < V; i++) {
                    double d = fabs((double)part[i] - full[(size_t)p * V + i]), a = fabs((double)full[(size_t)p * V + i]);
                    if (d > e) e = d;
                    if (a > mx) mx = a;
                }
                if (e > 1e-5 * mx) fail_msg("%d positions, %d cache-only: MTP logits at %d differ by %.3e of %.3e", n + 1, split, p, e, mx);
            }
        }
    }
    free(hidden); free(full); free(part);
    session_close(&m);
}

/* End to end, sampled: with --mtp always the generated tokens keep plain sampling's joint
 * distribution. Top-k 3 at temperature 1 makes 27 outcomes of the first three tokens; their
 * exact probabilities come from the model's logits (sampler_distribution over the prefixes);
 * 12,000 runs with different seeds (token 1 is drawn plainly, token 2 through the draft
 * rule, token 3 as the bonus after an acceptance or after a rejection's redraw): chi-square
 * with 26 degrees of freedom below 70 (p-value ~1e-5). Random weights: drafts are both
 * accepted and rejected, asserted. */
static void test_mtp_sampled_joint_distribution(void **state) {
    (void)state;
    enum { K = 3, N = 12000, NP = 3 };
    moe_session m;
    moe_error err = {{0}};
    model_options opt = { .max_seq = 32 };
    assert_int_equal(session_open(&m, MODEL, &opt, 1, &err), 0);
    int V = m.m.cfg.vocab_size;
    int prompt[NP] = {5, 77, 140};
    sampler_params sp = { .temperature = 1.0f, .top_k = K, .top_p = 1.0f, .seed = 1 };
    sampler s;
    assert_int_equal(sampler_init(&s, V, &sp, &err), 0);
    float *lg = malloc(sizeof(float) * V), *pr = malloc(sizeof(float) * V);
    assert_non_null(lg); assert_non_null(pr);
    /* exact: P(a) P(b | a) P(c | a, b) over the top-3 of each prefix */
    int ids1[K], ids2[K][K], ids3[K][K][K];
    double P[K][K][K];
    int seq[NP + 3];
    memcpy(seq, prompt, sizeof prompt);
    kv_clear(&m.kv, 0);
    assert_int_equal(model_forward_seq(&m.m, &m.c, &m.kv, 0, seq, NP, 0, lg, 0, NULL, &err), 0);
    sampler_distribution(&s, lg, pr);
    float p1[K];
    for (int i = 0, k = 0; i < V && k < K; i++) if (pr[i] > 0) { ids1[k] = i; p1[k++] = pr[i]; }
    for (int a = 0; a < K; a++) {
        seq[NP] = ids1[a];
        assert_int_equal(model_forward_seq(&m.m, &m.c, &m.kv, 0, seq + NP, 1, NP, lg, 0, NULL, &err), 0);
        sampler_distribution(&s, lg, pr);
        float p2[K];
        for (int i = 0, k = 0; i < V && k < K; i++) if (pr[i] > 0) { ids2[a][k] = i; p2[k++] = pr[i]; }
        for (int b = 0; b < K; b++) {
            seq[NP + 1] = ids2[a][b];
            assert_int_equal(model_forward_seq(&m.m, &m.c, &m.kv, 0, seq + NP + 1, 1, NP + 1, lg, 0, NULL, &err), 0);
            sampler_distribution(&s, lg, pr);
            for (int i = 0, k = 0; i < V && k < K; i++) if (pr[i] > 0) { ids3[a][b][k] = i; P[a][b][k] = (double)p1[a] * p2[b] * pr[i]; k++; }
        }
    }
    sampler_free(&s);
    for (int dl = 1; dl <= 3; dl += 2) {   /* one draft per step, and chains of three */
    long cnt[K][K][K] = {{{0}}}, drafted = 0, accepted = 0, other = 0;
    for (int t = 0; t < N; t++) {
        sp.seed = 1000 + (uint64_t)t;
        collected out;
        generator g;
        assert_int_equal(sampler_init(&s, V, &sp, &err), 0);
        assert_int_equal(generator_init(&g, &m.m, &m.c, &m.kv, 0, NULL, &s, &err), 0);
        g.eos_id = -1;
        assert_int_equal(generator_enable_mtp(&g, MTP_ALWAYS, NULL, &err), 0);
        assert_int_equal(generator_set_draft_len(&g, dl, &err), 0);
        assert_int_equal(generator_prompt(&g, prompt, NP, &err), 0);
        memset(&out, 0, sizeof out);
        assert_int_equal(generator_run(&g, 3, collect, &out, &err), 0);
        assert_int_equal(out.n, 3);
        drafted += g.n_drafted;
        accepted += g.n_accepted;
        int a = -1, b = -1, c = -1;
        for (int k = 0; k < K; k++) if (ids1[k] == out.ids[0]) a = k;
        for (int k = 0; a >= 0 && k < K; k++) if (ids2[a][k] == out.ids[1]) b = k;
        for (int k = 0; b >= 0 && k < K; k++) if (ids3[a][b][k] == out.ids[2]) c = k;
        if (c < 0) other++;
        else cnt[a][b][c]++;
        generator_free(&g);
        sampler_free(&s);
    }
    double x = 0;
    for (int a = 0; a < K; a++)
        for (int b = 0; b < K; b++)
            for (int c = 0; c < K; c++) {
                double e = N * P[a][b][c];
                x += (cnt[a][b][c] - e) * (cnt[a][b][c] - e) / e;
            }
    print_message("sampled --mtp --draft %d: chi-square %.1f over 27 outcomes, %ld drafts, %ld accepted\n", dl, x, drafted,
                  accepted);
    assert_int_equal(other, 0);           /* nothing outside each prefix's top 3 */
    assert_true(x < 70.0);
    assert_true(accepted > 0 && accepted < drafted);
    }
    free(lg); free(pr);
    session_close(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sampler_greedy_and_filters),
        cmocka_unit_test(test_sampler_seed_and_frequencies),
        cmocka_unit_test(test_mtp_greedy_identical),
        cmocka_unit_test(test_mtp_auto_greedy_identical),
        cmocka_unit_test(test_mtp_auto_settles_plain_when_rejected),
        cmocka_unit_test(test_mtp_auto_adopt_skips_relearning),
        cmocka_unit_test(test_mtp_auto_settles_quiet),
        cmocka_unit_test(test_speculative_rule_distribution),
        cmocka_unit_test(test_mtp_cache_consistent),
        cmocka_unit_test(test_mtp_cache_only_catch_up),
        cmocka_unit_test(test_mtp_sampled_joint_distribution),
        cmocka_unit_test(test_prompt_prefix_reuse),
    };
    return cmocka_run_group_tests_name("generate", tests, NULL, NULL);
}
