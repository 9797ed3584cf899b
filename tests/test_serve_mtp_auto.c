/* test_serve_mtp_auto.c - the server's --mtp auto controller (engine/serve/serve_mtp_auto.h),
 * on made-up step costs (no model, no clock):
 *   - speculation that costs more per token than plain steps: mostly plain, re-measured at
 *     growing intervals, then settled (no drafting for SMA_QUIET steps);
 *   - speculation that pays: chosen after its confirmations, and kept;
 *   - a gain that depends on the number of decoding slots: measured per n, so the choice at
 *     n = 1 does not follow from the figures at n = 8;
 *   - steps that are not clean (a prompt chunk, an MTP catch-up) are not samples.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>

#include "serve_mtp_auto.h"

/* Runs `steps` steps at n slots where a plain step costs `plain` seconds per token and a
 * speculative one `spec`; counts the speculative steps. */
static long run(serve_mtp_auto *a, int steps, int n, double plain, double spec) {
    long k = 0;
    for (int i = 0; i < steps; i++) {
        int s = sma_decide(a, n);
        k += s;
        sma_record(a, s, n, (s ? spec : plain) * n, n, 1);
    }
    return k;
}

static void test_costly_speculation_settles_plain(void **state) {
    (void)state;
    serve_mtp_auto a;
    sma_init(&a);
    long spec = run(&a, 1000, 4, 1e-3, 1.3e-3);
    print_message("speculation 1.3x: %ld of 1000 steps drafted, %llu re-measurements, settled %llu\n", spec,
                  a.n_remeasure, a.n_quiet);
    assert_int_equal(a.spec, 0);
    assert_true(spec >= SMA_PROBE && spec <= 20);   /* the first measurement and a few re-measurements */
    assert_int_equal(a.n_quiet, 1);
    assert_true(a.quiet_left > 0);
    assert_int_equal(run(&a, 2000, 4, 1e-3, 1.3e-3), 0);   /* settled: no draft at all */
}

static void test_paying_speculation_is_chosen(void **state) {
    (void)state;
    serve_mtp_auto a;
    sma_init(&a);
    long spec = run(&a, 1000, 2, 1e-3, 0.7e-3);
    print_message("speculation 0.7x: %ld of 1000 steps drafted, %llu switches\n", spec, a.n_switch);
    assert_int_equal(a.spec, 1);
    assert_int_equal(a.n_switch, 1);
    assert_true(spec >= 950);
    assert_int_equal(a.n_quiet, 0);
}

static void test_choice_per_slot_count(void **state) {
    (void)state;
    serve_mtp_auto a;
    sma_init(&a);
    /* 1 slot: speculation pays (0.7x); 8 slots: it costs (1.5x); the steps alternate */
    long spec1 = 0, spec8 = 0;
    for (int i = 0; i < 600; i++) {
        int n = i % 2 ? 8 : 1, s = sma_decide(&a, n);
        if (n == 1) spec1 += s;
        else spec8 += s;
        sma_record(&a, s, n, (s ? (n == 1 ? 0.7e-3 : 1.5e-3) : 1e-3) * n, n, 1);
    }
    print_message("per n: 1 slot %.3f / 8 slots %.3f ms per token drafting, vs plain %.3f / %.3f\n", a.t[1][1] * 1e3,
                  a.t[1][8] * 1e3, a.t[0][1] * 1e3, a.t[0][8] * 1e3);
    assert_true(a.t[1][1] < a.t[0][1] && a.t[1][8] > a.t[0][8]);   /* each n keeps its own figures */
    assert_true(spec1 + spec8 > 0);
}

static void test_unclean_steps_are_not_samples(void **state) {
    (void)state;
    serve_mtp_auto a;
    sma_init(&a);
    sma_record(&a, 0, 3, 5.0, 3, 0);   /* a step with a prompt chunk */
    assert_true(a.t[0][3] == 0);
    sma_record(&a, 0, 3, 3e-3, 3, 1);
    assert_true(a.t[0][3] > 0.99e-3 && a.t[0][3] < 1.01e-3);
    sma_record(&a, 1, 3, 9.0, 3, 0);   /* a catch-up after plain steps */
    assert_true(a.t[1][3] == 0);
    assert_int_equal(a.n_spec_steps + a.n_plain_steps, 3);   /* all steps are counted, samples or not */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_costly_speculation_settles_plain),
        cmocka_unit_test(test_paying_speculation_is_chosen),
        cmocka_unit_test(test_choice_per_slot_count),
        cmocka_unit_test(test_unclean_steps_are_not_samples),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
