/* test_perplexity.c - perplexity_eval (moe ppl) against a direct computation.
 *
 *   - one window covering the text = the summed log-softmax of one full forward pass;
 *   - short windows (overlapping by one token) with a small forward chunk = the same sum
 *     computed window by window from fresh full passes; every token after the first is
 *     predicted exactly once;
 *   - a routing knob changes the result; bad input (1 token, window too long) fails
 *     with one line.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "session.h"
#include "perplexity.h"

#define DIR "tests/data/golden/tiny-bf16"
#define T 21

static void make_tokens(int *tok, int V) {
    unsigned x = 777;
    for (int t = 0; t < T; t++) { x = x * 1103515245u + 12345u; tok[t] = (int)((x >> 8) % (unsigned)V); }
    tok[0] = 0;   /* BOS */
}

/* nll of tokens[a..b) predicted inside one window starting at a, by one full forward pass. */
static double direct_window(moe_session *m, const int *tok, int a, int b) {
    int V = m->m.cfg.vocab_size, n = b - a;
    float *logits = malloc(sizeof(float) * (size_t)n * V);
    moe_error err = {{0}};
    assert_int_equal(model_forward_seq(&m->m, &m->c, &m->kv, 0, tok + a, n, 0, logits, 1, NULL, &err), 0);
    double nll = 0;
    for (int t = 0; t + 1 < n; t++) {
        const float *l = logits + (size_t)t * V;
        double mx = -INFINITY, z = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, l[v]);
        for (int v = 0; v < V; v++) z += exp(l[v] - mx);
        nll -= l[tok[a + t + 1]] - mx - log(z);
    }
    free(logits);
    return nll;
}

static void load(moe_session *m, int batch, const router_options *ro) {
    model_options opt = { .max_seq = T, .batch_max = batch };
    if (ro) opt.routing = *ro;
    moe_error err = {{0}};
    if (session_open(m, DIR, &opt, 1, &err)) fail_msg("%s", err.msg);
}

static void test_one_window(void **state) {
    (void)state;
    moe_session m;
    load(&m, 64, NULL);
    int tok[T];
    make_tokens(tok, m.m.cfg.vocab_size);
    perplexity_result r;
    moe_error err = {{0}};
    assert_int_equal(perplexity_eval(&m.m, &m.c, &m.kv, 0, tok, T, T, &r, &err), 0);
    assert_int_equal(r.predicted, T - 1);
    assert_int_equal(r.windows, 1);
    double d = direct_window(&m, tok, 0, T);
    assert_true(fabs(r.nll - d) <= 1e-9 * fabs(d));
    session_close(&m);
}

static void test_windows_and_chunks(void **state) {
    (void)state;
    moe_session m, ref;
    load(&m, 4, NULL);        /* chunks of 4 inside windows of 6 */
    load(&ref, 64, NULL);
    int tok[T];
    make_tokens(tok, m.m.cfg.vocab_size);
    perplexity_result r;
    moe_error err = {{0}};
    assert_int_equal(perplexity_eval(&m.m, &m.c, &m.kv, 0, tok, T, 6, &r, &err), 0);
    assert_int_equal(r.predicted, T - 1);
    double d = 0;
    int windows = 0;
    for (int a = 0; a + 1 < T; a += 5) {
        int b = a + 6 < T ? a + 6 : T;
        d += direct_window(&ref, tok, a, b);
        windows++;
    }
    assert_int_equal(r.windows, windows);
    assert_true(fabs(r.nll - d) <= 1e-5 * fabs(d));   /* chunked vs one pass: float rounding only */
    session_close(&m);
    session_close(&ref);
}

static void test_knob_changes_result(void **state) {
    (void)state;
    moe_session a, b;
    router_options ro = { .experts_per_token = 2 };
    load(&a, 64, NULL);
    load(&b, 64, &ro);
    int tok[T];
    make_tokens(tok, a.m.cfg.vocab_size);
    perplexity_result ra, rb;
    moe_error err = {{0}};
    assert_int_equal(perplexity_eval(&a.m, &a.c, &a.kv, 0, tok, T, T, &ra, &err), 0);
    assert_int_equal(perplexity_eval(&b.m, &b.c, &b.kv, 0, tok, T, T, &rb, &err), 0);
    assert_true(fabs(ra.nll - rb.nll) > 1e-6);
    session_close(&a);
    session_close(&b);
}

static void test_bad_input(void **state) {
    (void)state;
    moe_session m;
    load(&m, 64, NULL);
    int tok[T];
    make_tokens(tok, m.m.cfg.vocab_size);
    perplexity_result r;
    moe_error err = {{0}};
    assert_int_equal(perplexity_eval(&m.m, &m.c, &m.kv, 0, tok, 1, T, &r, &err), MOE_FAIL);
    assert_non_null(strstr(err.msg, "nothing to predict"));
    assert_int_equal(perplexity_eval(&m.m, &m.c, &m.kv, 0, tok, T, T + 1, &r, &err), MOE_FAIL);
    assert_non_null(strstr(err.msg, "window"));
    assert_null(strchr(err.msg, '\n'));
    tok[3] = 99999;
    assert_int_equal(perplexity_eval(&m.m, &m.c, &m.kv, 0, tok, T, T, &r, &err), MOE_FAIL);
    assert_non_null(strstr(err.msg, "token id 99999"));
    session_close(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_window),
        cmocka_unit_test(test_windows_and_chunks),
        cmocka_unit_test(test_knob_changes_result),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
