/* test_numa.c - NUMA placement (engine/numa_place.h).
 *
 *   - the planner on simulated 2- and 4-node topologies: every routed expert of every
 *     layer on exactly one node that runs threads, contiguous blocks balanced to within
 *     one expert (group-aligned when the groups divide evenly), threads split across
 *     nodes in proportion to their CPUs, interleave mode, the one-node and off no-ops;
 *   - loading tests/data/golden/tiny-bf16 with every mode, on this machine's topology
 *     and on a simulated 2-node one (whose memory is all real node 0: the copies, the
 *     thread pinning and the per-node dispatch all run), gives bit-identical logits
 *     (main head and MTP) to --numa off, for zero-copy (auto) and converted (q8) weights.
 */
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <numaif.h>

#include "session.h"
#include "numa_place.h"

#define GIB ((size_t)1 << 30)

static numa_topology topo;   /* 17 KB: not on the stack of every test */

/* Checks the invariants of a partition plan and returns the number of nodes used. */
static int check_partition(const numa_plan *p, int n_layers, int n_experts, size_t eb) {
    int used = 0;
    size_t lo = (size_t)-1, hi = 0, total = 0;
    for (int l = 0; l < n_layers; l++) {
        int prev = -1;
        for (int e = 0; e < n_experts; e++) {
            int k = numa_expert_node(p, l, e);
            assert_true(k >= 0 && k < p->topo.n_nodes);
            assert_true(p->threads_on[k] > 0);        /* only nodes that run threads hold experts */
            assert_true(k >= prev);                    /* contiguous blocks, in node order */
            prev = k;
            if (l > 0) assert_int_equal(k, numa_expert_node(p, 0, e));   /* same blocks every layer */
        }
    }
    for (int k = 0; k < p->topo.n_nodes; k++) {
        total += p->bytes_on[k];
        if (p->threads_on[k] == 0) { assert_int_equal(p->bytes_on[k], 0); continue; }
        used++;
        if (p->bytes_on[k] < lo) lo = p->bytes_on[k];
        if (p->bytes_on[k] > hi) hi = p->bytes_on[k];
    }
    assert_int_equal(total, (size_t)n_layers * n_experts * eb);   /* every expert exactly once */
    assert_true(hi - lo <= (size_t)n_layers * eb);                /* within one expert per layer */
    return used;
}

static void test_two_nodes(void **state) {
    (void)state;
    numa_plan p;
    int cpus[2] = {4, 4};
    numa_topology_simulate(&topo, 2, cpus, 64 * GIB);
    assert_int_equal(numa_plan_make(&p, &topo, NUMA_PARTITION, 3, 3, 256, 8, 1000, 8, NULL), MOE_OK);
    assert_true(p.active);
    assert_int_equal(p.threads_on[0], 4);
    assert_int_equal(p.threads_on[1], 4);
    for (int t = 0; t < 8; t++) assert_int_equal(numa_thread_node(&p, t, 8), t < 4 ? 0 : 1);
    assert_int_equal(check_partition(&p, 3, 256, 1000), 2);
    assert_true(p.group_aligned);
    assert_int_equal(numa_expert_node(&p, 2, 127), 0);
    assert_int_equal(numa_expert_node(&p, 2, 128), 1);
    assert_int_equal(p.bytes_on[0], p.bytes_on[1]);
    /* a pool of another size (moe bench -t 1,3) still maps threads proportionally */
    assert_int_equal(numa_thread_node(&p, 0, 3), 0);
    assert_int_equal(numa_thread_node(&p, 2, 3), 1);
    char line[2048];
    numa_plan_describe(&p, line, sizeof line);
    assert_non_null(strstr(line, "2 simulated nodes"));
    assert_non_null(strstr(line, "group-aligned"));
    numa_plan_free(&p);
}

static void test_four_nodes(void **state) {
    (void)state;
    numa_plan p;
    int cpus[4] = {8, 8, 4, 4};                  /* unequal nodes: threads follow the CPUs */
    numa_topology_simulate(&topo, 4, cpus, 32 * GIB);
    assert_int_equal(numa_plan_make(&p, &topo, NUMA_PARTITION, 2, 2, 64, 8, 4096, 12, NULL), MOE_OK);
    assert_int_equal(p.threads_on[0], 4);
    assert_int_equal(p.threads_on[1], 4);
    assert_int_equal(p.threads_on[2], 2);
    assert_int_equal(p.threads_on[3], 2);
    assert_int_equal(check_partition(&p, 2, 64, 4096), 4);
    assert_true(p.group_aligned);
    numa_plan_free(&p);
    /* experts that do not divide: blocks of 2 and 3, not group-aligned (no groups) */
    assert_int_equal(numa_plan_make(&p, &topo, NUMA_PARTITION, 5, 5, 10, 1, 100, 12, NULL), MOE_OK);
    assert_int_equal(check_partition(&p, 5, 10, 100), 4);
    assert_false(p.group_aligned);
    numa_plan_free(&p);
    /* 6 groups over 4 nodes: balanced expert blocks, not whole groups */
    assert_int_equal(numa_plan_make(&p, &topo, NUMA_PARTITION, 1, 1, 48, 6, 100, 12, NULL), MOE_OK);
    check_partition(&p, 1, 48, 100);
    assert_false(p.group_aligned);
    numa_plan_free(&p);
    /* fewer threads than nodes: experts only where threads run */
    int even[4] = {2, 2, 2, 2};
    numa_topology_simulate(&topo, 4, even, 32 * GIB);
    assert_int_equal(numa_plan_make(&p, &topo, NUMA_PARTITION, 2, 2, 64, 8, 10, 3, NULL), MOE_OK);
    assert_int_equal(p.threads_on[0] + p.threads_on[1] + p.threads_on[2] + p.threads_on[3], 3);
    assert_int_equal(p.threads_on[3], 0);
    assert_int_equal(check_partition(&p, 2, 64, 10), 3);
    numa_plan_free(&p);
}

static void test_split_threads(void **state) {
    (void)state;
    int on[NUMA_MAX_NODES];
    int cpus[3] = {2, 0, 2};                     /* a memory-only node gets no threads */
    numa_topology_simulate(&topo, 3, cpus, GIB);
    numa_split_threads(&topo, 16, on);          /* more threads than CPUs */
    assert_int_equal(on[0], 8);
    assert_int_equal(on[1], 0);
    assert_int_equal(on[2], 8);
    numa_split_threads(&topo, 3, on);
    assert_int_equal(on[0] + on[2], 3);
    assert_int_equal(on[1], 0);
    assert_true(on[0] >= 1 && on[2] >= 1);
    int skew[2] = {1, 7};                        /* every node with CPUs gets one */
    numa_topology_simulate(&topo, 2, skew, GIB);
    numa_split_threads(&topo, 2, on);
    assert_int_equal(on[0], 1);
    assert_int_equal(on[1], 1);
}

static void test_interleave_and_noops(void **state) {
    (void)state;
    numa_plan p;
    char line[2048];
    int cpus[2] = {2, 2};
    numa_topology_simulate(&topo, 2, cpus, GIB);
    assert_int_equal(numa_plan_make(&p, &topo, NUMA_INTERLEAVE, 3, 3, 256, 8, 1000, 4, NULL), MOE_OK);
    assert_true(p.active);
    assert_null(p.expert_node);                  /* interleave: no expert has a node */
    assert_int_equal(numa_expert_node(&p, 0, 0), -1);
    assert_int_equal(p.threads_on[0], 2);
    numa_plan_free(&p);
    assert_int_equal(numa_plan_make(&p, &topo, NUMA_OFF, 3, 3, 256, 8, 1000, 4, NULL), MOE_OK);
    assert_false(p.active);
    assert_null(p.expert_node);
    numa_plan_free(&p);
    int one[1] = {2};
    numa_topology_simulate(&topo, 1, one, 8 * GIB);
    assert_int_equal(numa_plan_make(&p, &topo, NUMA_PARTITION, 3, 3, 256, 8, 1000, 4, NULL), MOE_OK);
    assert_false(p.active);
    assert_null(p.expert_node);
    numa_plan_describe(&p, line, sizeof line);
    assert_string_equal(line, "numa: 1 node (node 0: 8.0 GiB), --numa partition is a no-op");
    numa_plan_free(&p);
    /* the real machine reads */
    assert_int_equal(numa_topology_read(&topo, NULL), MOE_OK);
    assert_true(topo.n_nodes >= 1 && topo.n_cpus[0] >= 1 && topo.mem_total[0] > 0);
    assert_int_equal(numa_mode_parse("partition"), NUMA_PARTITION);
    assert_int_equal(numa_mode_parse("interleave"), NUMA_INTERLEAVE);
    assert_int_equal(numa_mode_parse("off"), NUMA_OFF);
    assert_int_equal(numa_mode_parse("on"), -1);
}

/* ------------------------------------------------------------------ logits */

#define CKPT "tests/data/golden/tiny-bf16"
static const int tokens[] = {5, 17, 300, 2, 99, 411, 7, 64};
#define T ((int)(sizeof tokens / sizeof tokens[0]))

/* Logits of the main head and the MTP head for `tokens`, prefill (chunks of 3) then one
 * decoded token; the plan is copied to *plan_out (without its buffers) when non-NULL. */
static float *run(numa_mode mode, const numa_topology *sim, int threads, weights_dtype dtype, numa_plan *plan_out) {
    cpu_set_t saved;
    sched_getaffinity(0, sizeof saved, &saved);   /* the pool pins the calling thread too */
    int policy_before = -1, policy_after = -2;
    get_mempolicy(&policy_before, NULL, 0, NULL, 0);
    moe_session m;
    moe_error err = {{0}};
    model_options opt = { .max_seq = T + 1, .batch_max = 3, .n_threads = threads, .dtype = dtype, .numa = mode,
                          .numa_topo = sim };
    if (session_open(&m, CKPT, &opt, 1, &err)) fail_msg("load: %s", err.msg);
    get_mempolicy(&policy_after, NULL, 0, NULL, 0);
    assert_int_equal(policy_after, policy_before);    /* the load's interleave policy is undone */
    int V = m.m.cfg.vocab_size, H = m.m.cfg.hidden_size;
    float *out = calloc((size_t)(2 * T + 1) * V, sizeof(float));
    float *hidden = calloc((size_t)T * H, sizeof(float));
    int next[T];
    assert_int_equal(model_forward_seq(&m.m, &m.c, &m.kv, 0, tokens, T - 1, 0, out, 1, hidden, &err), MOE_OK);
    assert_int_equal(model_forward_seq(&m.m, &m.c, &m.kv, 0, tokens + T - 1, 1, T - 1, out + (size_t)(T - 1) * V, 1,
                                   hidden + (size_t)(T - 1) * H, &err), MOE_OK);
    for (int t = 0; t < T; t++) next[t] = tokens[(t + 1) % T];
    assert_int_equal(model_forward_mtp_seq(&m.m, &m.c, &m.kv, 0, 0, hidden, next, T, 0, out + (size_t)T * V, 1, NULL, &err), MOE_OK);
    if (plan_out) {
        *plan_out = m.m.numa;
        plan_out->bufs = NULL;
        plan_out->buf_bytes = NULL;
        plan_out->expert_node = NULL;
        int freed = 0;
        for (int i = 0; i < m.m.w.n_owned; i++) freed += m.m.w.owned[i] == NULL;
        plan_out->n_bufs = freed;     /* reused: owned buffers freed by the copy */
    }
    free(hidden);
    session_close(&m);
    sched_setaffinity(0, sizeof saved, &saved);
    return out;
}

static void test_logits_identical(void **state) {
    (void)state;
    size_t n = 0;
    {
        moe_session m;
        moe_error err = {{0}};
        model_options opt = {0};
        if (session_open(&m, CKPT, &opt, 1, &err)) fail_msg("load: %s", err.msg);
        n = (size_t)(2 * T + 1) * m.m.cfg.vocab_size * sizeof(float);
        session_close(&m);
    }
    int cpus[2] = {1, 1};
    numa_topology_simulate(&topo, 2, cpus, GIB);
    weights_dtype dtypes[2] = {WEIGHTS_AUTO, WEIGHTS_Q8};
    for (int d = 0; d < 2; d++) {
        float *ref = run(NUMA_OFF, NULL, 1, dtypes[d], NULL);
        struct { numa_mode mode; const numa_topology *sim; int threads; } cases[] = {
            {NUMA_OFF, NULL, 2}, {NUMA_INTERLEAVE, NULL, 2}, {NUMA_PARTITION, NULL, 2},
            {NUMA_INTERLEAVE, &topo, 2}, {NUMA_PARTITION, &topo, 2}, {NUMA_PARTITION, &topo, 1},
            {NUMA_PARTITION, &topo, 3},
        };
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            numa_plan p;
            float *got = run(cases[c].mode, cases[c].sim, cases[c].threads, dtypes[d], &p);
            if (memcmp(got, ref, n) != 0)
                fail_msg("dtype %s, --numa %s%s, %d threads: logits differ from --numa off", weights_dtype_name(dtypes[d]),
                         numa_mode_name(cases[c].mode), cases[c].sim ? " (simulated 2 nodes)" : "", cases[c].threads);
            if (cases[c].sim && cases[c].mode == NUMA_PARTITION) {
                size_t experts = (size_t)2 * 256 * p.expert_bytes;   /* layer 1 and the MTP layer */
                assert_int_equal(p.bytes_copied, experts);
                assert_int_equal(p.bytes_on[0] + p.bytes_on[1], experts);            /* planned = done */
                assert_int_equal(p.bytes_from_map, dtypes[d] == WEIGHTS_AUTO ? experts : 0);
                assert_int_equal(p.n_bufs, dtypes[d] == WEIGHTS_AUTO ? 0 : 2 * 256 * 3);   /* converted originals freed */
                if (p.bind_failed || p.mbind_failed)
                    print_message("note: %d threads not pinned, %d mbind ranges refused\n", p.bind_failed, p.mbind_failed);
            }
            free(got);
        }
        free(ref);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_nodes),
        cmocka_unit_test(test_four_nodes),
        cmocka_unit_test(test_split_threads),
        cmocka_unit_test(test_interleave_and_noops),
        cmocka_unit_test(test_logits_identical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
