/* test_eplb.c - expert-parallel load balancing (engine/ep/eplb.h).
 *
 *   - DeepSeek's EPLB on the cases of tests/data/eplb/cases.txt, written by the numpy
 *     transliteration of eplb.py (tools/check/eplb_ref.py; the first case is eplb.py's
 *     README example, whose printed output that script checks): every slot's expert and
 *     replica, every expert's copies, equal;
 *   - two cases worked out by hand here (the packing and the replication steps);
 *   - invariants over skewed pseudo-random counts and many (N, R, G, Nn): every expert on
 *     a rank, E + R slots, (E + R) / N per rank, (expert, replica) pairs distinct and
 *     complete, the busiest rank never busier than with the default blocks (the guard
 *     case 6 5 1 4 4 4 on 2 ranks included), the plan.json round trip;
 *   - the default blocks equal numa_place.c's partition;
 *   - bad counts CSV and bad plan.json: one line naming the file and the problem.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "eplb.h"

/* ------------------------------------------------------------------ helpers */

static void counts_make(eplb_counts *c, int L, int E, const int64_t *w) {
    c->n_layers = L;
    c->n_experts = E;
    c->layer_id = malloc(sizeof(int) * (size_t)L);
    c->count = malloc(sizeof(int64_t) * (size_t)L * E);
    assert_non_null(c->layer_id);
    assert_non_null(c->count);
    for (int l = 0; l < L; l++) c->layer_id[l] = l + 1;
    memcpy(c->count, w, sizeof(int64_t) * (size_t)L * E);
}

static void assert_one_line(const moe_error *err, const char *want) {
    if (!strstr(err->msg, want)) fail_msg("error \"%s\" does not contain \"%s\"", err->msg, want);
    assert_null(strchr(err->msg, '\n'));
}

/* invariants of a plan made for (N, R) on counts c */
static void check_invariants(const eplb_plan *p, const eplb_counts *c, int N, int R) {
    const int E = c->n_experts, P = E + R;
    assert_int_equal(p->n_slots, P);
    assert_int_equal(p->n_ranks, N);
    int *per_rank = calloc((size_t)N, sizeof(int)), *seen = calloc((size_t)E * (R + 1), sizeof(int));
    eplb_plan def;
    moe_error err = {{0}};
    assert_int_equal(eplb_plan_default(&def, c, N, 1, &err), MOE_OK);
    for (int l = 0; l < c->n_layers; l++) {
        int total = 0;
        memset(per_rank, 0, sizeof(int) * (size_t)N);
        memset(seen, 0, sizeof(int) * (size_t)E * (R + 1));
        for (int e = 0; e < E; e++) {
            int n = p->copies[(size_t)l * E + e];
            assert_true(n >= 1 && n <= R + 1);       /* every expert on at least one rank */
            total += n;
        }
        assert_int_equal(total, P);
        for (int s = 0; s < P; s++) {
            size_t at = (size_t)l * P + s;
            int e = p->slot_expert[at], j = p->slot_replica[at], r = p->slot_rank[at];
            assert_true(e >= 0 && e < E);
            assert_true(j >= 0 && j < p->copies[(size_t)l * E + e]);
            assert_true(r >= 0 && r < N);
            if (s) assert_true(r >= p->slot_rank[at - 1]);
            assert_int_equal(seen[(size_t)e * (R + 1) + j]++, 0);   /* each (expert, replica) once */
            per_rank[r]++;
        }
        for (int r = 0; r < N; r++) assert_int_equal(per_rank[r], P / N);
        double pmax, pmean, dmax, dmean;
        eplb_layer_balance(p, c, l, &pmax, &pmean);
        eplb_layer_balance(&def, c, l, &dmax, &dmean);
        assert_true(pmax <= dmax);                   /* never worse than the default blocks */
        double load[EPLB_MAX_RANKS], sum = 0, want = 0;
        eplb_rank_load(p, c, l, load);
        for (int r = 0; r < N; r++) sum += load[r];
        for (int e = 0; e < E; e++) want += (double)c->count[(size_t)l * E + e];
        assert_true(sum > want - 1e-6 * (want + 1) && sum < want + 1e-6 * (want + 1));   /* the load is conserved */
    }
    eplb_plan_free(&def);
    free(per_rank);
    free(seen);
}

/* plan -> plan.json text -> plan: the same arrays */
static void check_round_trip(const eplb_plan *p, const eplb_counts *c) {
    char *buf = NULL;
    size_t len = 0;
    moe_error err = {{0}};
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    assert_int_equal(eplb_plan_write_stream(p, c, NULL, f, &err), MOE_OK);
    fclose(f);
    eplb_plan q;
    if (eplb_plan_parse(&q, buf, len, "plan.json", &err)) fail_msg("round trip: %s", err.msg);
    assert_int_equal(q.n_layers, p->n_layers);
    assert_int_equal(q.n_slots, p->n_slots);
    assert_int_equal(q.n_ranks, p->n_ranks);
    assert_int_equal(q.n_nodes, p->n_nodes);
    assert_int_equal(q.n_groups, p->n_groups);
    size_t LP = (size_t)p->n_layers * p->n_slots, LE = (size_t)p->n_layers * p->n_experts;
    assert_memory_equal(q.layer_id, p->layer_id, sizeof(int) * (size_t)p->n_layers);
    assert_memory_equal(q.slot_expert, p->slot_expert, sizeof(int) * LP);
    assert_memory_equal(q.slot_replica, p->slot_replica, sizeof(int) * LP);
    assert_memory_equal(q.slot_rank, p->slot_rank, sizeof(int) * LP);
    assert_memory_equal(q.copies, p->copies, sizeof(int) * LE);
    eplb_plan_free(&q);
    free(buf);
}

/* ------------------------------------------------------------------ against eplb.py */

static int read_row(FILE *f, const char *tag, int n, int64_t *out) {
    char t[32];
    if (fscanf(f, "%31s", t) != 1 || strcmp(t, tag)) return 0;
    for (int i = 0; i < n; i++) {
        long long v;
        if (fscanf(f, "%lld", &v) != 1) return 0;
        out[i] = v;
    }
    return 1;
}

static void test_reference_cases(void **state) {
    (void)state;
    FILE *f = fopen("tests/data/eplb/cases.txt", "r");
    assert_non_null(f);
    char line[256];
    int n_cases = 0, readme = 0;
    while (fscanf(f, "%255s", line) == 1) {
        if (line[0] == '#') { if (!fgets(line, sizeof line, f)) break; continue; }
        assert_string_equal(line, "case");
        char name[128];
        int L, E, N, R, G, Nn;
        assert_int_equal(fscanf(f, "%127s %d %d %d %d %d %d", name, &L, &E, &N, &R, &G, &Nn), 7);
        const int P = E + R;
        int64_t *w = malloc(sizeof(int64_t) * (size_t)L * E), *phy2log = malloc(sizeof(int64_t) * (size_t)L * P);
        int64_t *rank = malloc(sizeof(int64_t) * (size_t)L * P), *logcnt = malloc(sizeof(int64_t) * (size_t)L * E);
        for (int l = 0; l < L; l++) assert_true(read_row(f, "w", E, w + (size_t)l * E));
        for (int l = 0; l < L; l++) assert_true(read_row(f, "phy2log", P, phy2log + (size_t)l * P));
        for (int l = 0; l < L; l++) assert_true(read_row(f, "rank", P, rank + (size_t)l * P));
        for (int l = 0; l < L; l++) assert_true(read_row(f, "logcnt", E, logcnt + (size_t)l * E));
        eplb_counts c;
        counts_make(&c, L, E, w);
        eplb_plan p;
        moe_error err = {{0}};
        if (eplb_rebalance(&p, &c, N, R, G, Nn, &err)) fail_msg("case %s: %s", name, err.msg);
        for (int l = 0; l < L; l++) {
            if (p.kept_default[l]) {   /* the guard replaced EPLB's answer: compare nothing, say so */
                print_message("  case %s layer %d: the default blocks were kept (EPLB's packing was worse)\n", name, l);
                continue;
            }
            for (int s = 0; s < P; s++) {
                size_t at = (size_t)l * P + s;
                if (p.slot_expert[at] != phy2log[at] || p.slot_replica[at] != rank[at])
                    fail_msg("case %s layer %d slot %d: expert %d replica %d, eplb.py %lld %lld", name, l, s,
                             p.slot_expert[at], p.slot_replica[at], (long long)phy2log[at], (long long)rank[at]);
                assert_int_equal(p.slot_rank[at], s / (P / N));
            }
            for (int e = 0; e < E; e++) assert_int_equal(p.copies[(size_t)l * E + e], logcnt[(size_t)l * E + e]);
        }
        check_invariants(&p, &c, N, R);
        check_round_trip(&p, &c);
        readme += !strcmp(name, "readme");
        eplb_plan_free(&p);
        eplb_counts_free(&c);
        free(w); free(phy2log); free(rank); free(logcnt);
        n_cases++;
    }
    fclose(f);
    assert_int_equal(readme, 1);
    assert_true(n_cases >= 10);
    print_message("  %d cases from tools/check/eplb_ref.py agree\n", n_cases);
}

/* ------------------------------------------------------------------ by hand */

static void test_hand_cases(void **state) {
    (void)state;
    moe_error err = {{0}};
    /* 4 experts with loads 10 40 20 30 on 2 ranks, no replicas: heaviest first into the
     * lightest rank with room: 40 -> r0, 30 -> r1, 20 -> r1 (30 < 40), 10 -> r0; so
     * r0 = {1, 0}, r1 = {3, 2}, both 50 (blocks: {0,1} 50, {2,3} 50). */
    {
        const int64_t w[] = {10, 40, 20, 30};
        eplb_counts c;
        counts_make(&c, 1, 4, w);
        eplb_plan p;
        assert_int_equal(eplb_rebalance(&p, &c, 2, 0, 1, 1, &err), MOE_OK);
        const int want[] = {1, 0, 3, 2};
        assert_memory_equal(p.slot_expert, want, sizeof want);
        double load[2];
        eplb_rank_load(&p, &c, 0, load);
        assert_true(load[0] == 50 && load[1] == 50);
        eplb_plan_free(&p);
        eplb_counts_free(&c);
    }
    /* loads 90 10 30 30, 2 ranks, 2 redundant: replication gives expert 0 two more copies
     * (90 > 30 then 45 > 30), each 30; the 6 slots 30 10 30 30 30 30 packed 3 a rank:
     * phy 0 -> r0, 2 -> r1, 3 -> r0 (tie: the first), 4 -> r1, 5 -> r0, 1 -> r1:
     * r0 = (0,0) (3,0) (0,2) = 90, r1 = (2,0) (0,1) (1,0) = 70. Rank 0 holds expert 0 twice. */
    {
        const int64_t w[] = {90, 10, 30, 30};
        eplb_counts c;
        counts_make(&c, 1, 4, w);
        eplb_plan p;
        assert_int_equal(eplb_rebalance(&p, &c, 2, 2, 1, 1, &err), MOE_OK);
        const int we[] = {0, 3, 0, 2, 0, 1}, wr[] = {0, 0, 2, 0, 1, 0}, wc[] = {3, 1, 1, 1};
        assert_memory_equal(p.slot_expert, we, sizeof we);
        assert_memory_equal(p.slot_replica, wr, sizeof wr);
        assert_memory_equal(p.copies, wc, sizeof wc);
        double load[2];
        eplb_rank_load(&p, &c, 0, load);
        assert_true(load[0] == 90 && load[1] == 70);
        eplb_plan_free(&p);
        eplb_counts_free(&c);
    }
    /* the building blocks alone */
    {
        const float w[] = {1, 7, 3, 5, 2, 6};
        int pack[6], rip[6];
        assert_int_equal(eplb_balanced_packing(w, 6, 2, pack, rip, &err), MOE_OK);
        /* 7 -> p0, 6 -> p1, 5 -> p1 (6 < 7), 3 -> p0 (7 < 11), 2 -> p0 (10 < 11; now full), 1 -> p1 */
        const int wp[] = {1, 0, 0, 1, 0, 1}, wrip[] = {2, 0, 1, 1, 2, 0};
        assert_memory_equal(pack, wp, sizeof wp);
        assert_memory_equal(rip, wrip, sizeof wrip);
        int phy2log[5], rank[5], cnt[3];
        const float v[] = {4, 9, 5};
        eplb_replicate(v, 3, 5, phy2log, rank, cnt);   /* 9 -> 4.5 -> then 5 is the largest */
        const int wl[] = {0, 1, 2, 1, 2}, wk[] = {0, 0, 0, 1, 1}, wn[] = {1, 2, 2};
        assert_memory_equal(phy2log, wl, sizeof wl);
        assert_memory_equal(rank, wk, sizeof wk);
        assert_memory_equal(cnt, wn, sizeof wn);
    }
}

/* the greedy packing loses to the blocks here: 6 5 1 | 4 4 4 is 12/12, greedy 13/11 */
static void test_guard_keeps_default(void **state) {
    (void)state;
    moe_error err = {{0}};
    for (int R = 0; R <= 2; R += 2) {
        const int64_t w[] = {6, 5, 1, 4, 4, 4};
        eplb_counts c;
        counts_make(&c, 1, 6, w);
        eplb_plan p;
        assert_int_equal(eplb_rebalance(&p, &c, 2, R, 1, 1, &err), MOE_OK);
        double load[2];
        eplb_rank_load(&p, &c, 0, load);
        if (R == 0) {
            assert_int_equal(p.kept_default[0], 1);
            assert_true(load[0] == 12 && load[1] == 12);
        }
        check_invariants(&p, &c, 2, R);
        check_round_trip(&p, &c);
        eplb_plan_free(&p);
        eplb_counts_free(&c);
    }
}

/* skewed pseudo-random counts, many shapes: the invariants and the round trip */
static void test_invariants_random(void **state) {
    (void)state;
    uint64_t s = 0x9e3779b97f4a7c15ull;
    const struct { int E, N, R, G, Nn; } shapes[] = {
        {256, 4, 0, 8, 1}, {256, 8, 0, 8, 1}, {256, 8, 8, 8, 2}, {256, 16, 16, 8, 4}, {256, 8, 24, 8, 8},
        {64, 4, 4, 1, 1}, {64, 6, 2, 4, 3}, {60, 7, 3, 5, 1}, {16, 16, 0, 4, 2}, {8, 1, 0, 1, 1}, {12, 8, 4, 4, 2},
    };
    int n_kept = 0, n_layers = 0;
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const int L = 5, E = shapes[k].E;
        int64_t *w = malloc(sizeof(int64_t) * (size_t)L * E);
        for (int i = 0; i < L * E; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            double u = (double)(s >> 11) / 9007199254740992.0;
            /* a heavy tail: a few experts get far more than the rest; some layers have zeros */
            w[i] = (int64_t)(1000.0 * u * u * u * u) + (i % 7 == 0 ? 0 : 1);
        }
        eplb_counts c;
        counts_make(&c, L, E, w);
        eplb_plan p;
        moe_error err = {{0}};
        if (eplb_rebalance(&p, &c, shapes[k].N, shapes[k].R, shapes[k].G, shapes[k].Nn, &err))
            fail_msg("shape %zu: %s", k, err.msg);
        check_invariants(&p, &c, shapes[k].N, shapes[k].R);
        check_round_trip(&p, &c);
        for (int l = 0; l < L; l++) n_kept += p.kept_default[l];
        n_layers += L;
        eplb_plan_free(&p);
        eplb_counts_free(&c);
        free(w);
    }
    print_message("  %d shapes x 5 layers: invariants hold; the default was kept in %d of %d layers\n",
                  (int)(sizeof shapes / sizeof shapes[0]), n_kept, n_layers);
}

/* default blocks = numa_place.c's partition: [E*r/N, E*(r+1)/N) */
static void test_default_blocks(void **state) {
    (void)state;
    int64_t w[10];
    for (int i = 0; i < 10; i++) w[i] = i + 1;
    eplb_counts c;
    counts_make(&c, 1, 10, w);
    eplb_plan p;
    moe_error err = {{0}};
    assert_int_equal(eplb_plan_default(&p, &c, 4, 1, &err), MOE_OK);
    const int want[] = {0, 0, 1, 1, 1, 2, 2, 3, 3, 3};   /* 10*r/4: 0, 2, 5, 7, 10 */
    assert_memory_equal(p.slot_rank, want, sizeof want);
    double load[4];
    eplb_rank_load(&p, &c, 0, load);
    assert_true(load[0] == 3 && load[1] == 12 && load[2] == 13 && load[3] == 27);
    eplb_plan_free(&p);
    assert_int_equal(eplb_plan_default(&p, &c, 1, 1, &err), MOE_OK);   /* one rank: everything on 0 */
    for (int e = 0; e < 10; e++) assert_int_equal(p.slot_rank[e], 0);
    eplb_plan_free(&p);
    assert_int_equal(eplb_plan_default(&p, &c, 11, 1, &err), MOE_FAIL);
    assert_one_line(&err, "11 ranks but only 10 experts");
    eplb_counts_free(&c);
}

/* ------------------------------------------------------------------ bad input */

static void test_bad_csv(void **state) {
    (void)state;
    static const struct { const char *text, *want; } cases[] = {
        {"", "empty file"},
        {"layer,expert,count\n1,0,5\n", "line 1: want the header"},
        {"layer_id,expert_id,count\n", "no rows"},
        {"layer_id,expert_id,count\n1,0,5\n1,x,5\n", "line 3: want layer_id,expert_id,count"},
        {"layer_id,expert_id,count\n1,0,-5\n", "line 2: want layer_id"},
        {"layer_id,expert_id,count\n1,0,5,7\n", "line 2: want layer_id"},
        {"layer_id,expert_id,count\n1,0\n", "line 2:"},
        {"layer_id,expert_id,count\n1,0,99999999999999999999\n", "count <= 2^53"},
        {"layer_id,expert_id,count\n1,70000,1\n", "expert < 65536"},
        {"layer_id,expert_id,count\n1,0,5\n1,1,5\n1,0,6\n", "line 4: layer 1 expert 0 is listed twice (first on line 2)"},
        {"layer_id,expert_id,count\n1,0,5\n1,1,5\n2,0,6\n", "layer 2 has no row for expert 1"},
        {"layer_id,expert_id,count\n1,60000,5\n", "every (layer, expert) must appear once"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        eplb_counts c;
        moe_error err = {{0}};
        assert_int_equal(eplb_counts_parse(&c, cases[i].text, strlen(cases[i].text), "x.counts.csv", &err), MOE_FAIL);
        assert_one_line(&err, "x.counts.csv: ");
        assert_one_line(&err, cases[i].want);
    }
    /* CRLF, blank lines, rows in any order: accepted */
    const char *ok = "layer_id,expert_id,count\r\n\r\n3,1,7\r\n1,1,2\r\n1,0,5\r\n3,0,0\r\n";
    eplb_counts c;
    moe_error err = {{0}};
    assert_int_equal(eplb_counts_parse(&c, ok, strlen(ok), "ok.csv", &err), MOE_OK);
    assert_int_equal(c.n_layers, 2);
    assert_int_equal(c.n_experts, 2);
    assert_int_equal(c.layer_id[0], 1);
    assert_int_equal(c.layer_id[1], 3);
    assert_true(c.count[0] == 5 && c.count[1] == 2 && c.count[2] == 0 && c.count[3] == 7);
    eplb_counts_free(&c);
    assert_int_equal(eplb_counts_load(&c, "/nonexistent/x.csv", &err), MOE_FAIL);
    assert_one_line(&err, "/nonexistent/x.csv: cannot open");
}

static void test_bad_rebalance_args(void **state) {
    (void)state;
    int64_t w[12] = {0};
    eplb_counts c;
    counts_make(&c, 1, 12, w);
    eplb_plan p;
    moe_error err = {{0}};
    assert_int_equal(eplb_rebalance(&p, &c, 5, 0, 1, 1, &err), MOE_FAIL);
    assert_one_line(&err, "12 experts + 0 redundant = 12 slots do not divide over 5 ranks");
    assert_one_line(&err, "e.g. 3");
    assert_int_equal(eplb_rebalance(&p, &c, 4, 0, 5, 1, &err), MOE_FAIL);
    assert_one_line(&err, "--groups 5 must divide the 12 experts");
    assert_int_equal(eplb_rebalance(&p, &c, 4, 0, 1, 3, &err), MOE_FAIL);
    assert_one_line(&err, "--nodes 3 must divide --ranks 4");
    assert_int_equal(eplb_rebalance(&p, &c, 65, 0, 1, 1, &err), MOE_FAIL);
    assert_one_line(&err, "want 1..64");
    eplb_counts_free(&c);
}

#define HEAD "{\"format\":\"moe-eplb-plan\",\"version\":1,\"n_ranks\":2,\"n_experts\":2,\"n_redundant\":1,\"layers\":["

static void test_bad_plan(void **state) {
    (void)state;
    static const struct { const char *text, *want; } cases[] = {
        {"[1]", "not a JSON object"},
        {"{", "invalid JSON"},
        {"{\"format\":\"other\"}", "\"format\" is \"other\""},
        {"{\"format\":\"moe-eplb-plan\",\"version\":2}", "\"version\" = 2 is out of range"},
        {"{\"format\":\"moe-eplb-plan\",\"version\":1,\"n_ranks\":0}", "\"n_ranks\" = 0 is out of range"},
        {HEAD "]}", "\"layers\" must be a non-empty array"},
        {HEAD "{\"layer\":-1}]}", "layers[0]: \"layer\" must be a layer id"},
        {HEAD "{\"layer\":1,\"ranks\":[[[0,0]]],\"experts\":[[0],[1]]}]}", "\"ranks\" must be an array of 2 lists"},
        {HEAD "{\"layer\":1,\"ranks\":[[[0,0],[0,1]],[[1,0]]],\"experts\":[[0,0]]}]}",
         "\"experts\" must be an array of 2 lists"},
        {HEAD "{\"layer\":1,\"ranks\":[[[0,0],[0,1]],[[1,0]]],\"experts\":[[0,0],[]]}]}", "expert 1 is on no rank"},
        {HEAD "{\"layer\":1,\"ranks\":[[[0,0],[0,1]],[[1,0]]],\"experts\":[[0,0],[1,1]]}]}",
         "\"experts\" lists 4 replicas in all, want n_experts + n_redundant = 3"},
        {HEAD "{\"layer\":1,\"ranks\":[[[0,0],[5,0]],[[1,0]]],\"experts\":[[0,0],[1]]}]}",
         "ranks[0][1] must be [expert in 0..1, replica in 0..1]"},
        {HEAD "{\"layer\":1,\"ranks\":[[[0,0],[0,0]],[[1,0]]],\"experts\":[[0,0],[1]]}]}",
         "expert 0 replica 0 is on rank 0 and again on rank 0"},
        {HEAD "{\"layer\":1,\"ranks\":[[[0,0],[1,1]],[[1,0]]],\"experts\":[[0,0],[1]]}]}",
         "ranks[0][1]: expert 1 replica 1, but experts[1] lists 1 replica(s)"},
        {HEAD "{\"layer\":1,\"ranks\":[[[0,0],[0,1]],[[1,0]]],\"experts\":[[0,1],[1]]}]}",
         "experts[0] puts replica 1 on rank 1, but rank 0 holds it"},
        {HEAD "{\"layer\":1,\"ranks\":[[[0,0],[0,1]],[[1,0]]],\"experts\":[[0,0],[7]]}]}",
         "experts[1][0] must be a rank in 0..1"},
        {"{\"format\":\"moe-eplb-plan\",\"version\":1,\"n_ranks\":2,\"n_experts\":65536,\"layers\":[{}]}",
         "1 layers x (65536 experts + 0 redundant) slots cannot fit"},
        {HEAD "{\"layer\":2,\"ranks\":[[[0,0],[0,1]],[[1,0]]],\"experts\":[[0,0],[1]]},"
              "{\"layer\":2,\"ranks\":[[[0,0],[0,1]],[[1,0]]],\"experts\":[[0,0],[1]]}]}",
         "layers[1]: layer 2 does not follow layer 2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        eplb_plan p;
        moe_error err = {{0}};
        if (eplb_plan_parse(&p, cases[i].text, strlen(cases[i].text), "plan.json", &err) != MOE_FAIL)
            fail_msg("case %zu accepted: %s", i, cases[i].text);
        assert_one_line(&err, "plan.json: ");
        assert_one_line(&err, cases[i].want);
    }
    /* a small valid one, then checks against a model and counts */
    const char *ok = HEAD "{\"layer\":1,\"ranks\":[[[0,0],[0,1]],[[1,0],[0,2]]],\"experts\":[[0,0,1],[1]]}]}";
    /* (n_redundant 1 but 4 slots: rejected, the sum must be 3) */
    eplb_plan p;
    moe_error err = {{0}};
    assert_int_equal(eplb_plan_parse(&p, ok, strlen(ok), "plan.json", &err), MOE_FAIL);
    const char *good = "{\"format\":\"moe-eplb-plan\",\"version\":1,\"n_ranks\":2,\"n_experts\":2,\"n_redundant\":2,"
                       "\"layers\":[{\"layer\":1,\"ranks\":[[[0,0],[0,1]],[[1,0],[0,2]]],\"experts\":[[0,0,1],[1]],"
                       "\"load\":{\"ignored\":true}}]}";
    if (eplb_plan_parse(&p, good, strlen(good), "plan.json", &err)) fail_msg("%s", err.msg);
    assert_int_equal(p.n_slots, 4);
    assert_int_equal(p.copies[0], 3);
    const unsigned char is_moe[] = {0, 1}, is_moe2[] = {0, 1, 1};
    assert_int_equal(eplb_plan_matches_model(&p, is_moe, 2, 2, 2, "plan.json", &err), MOE_OK);
    assert_int_equal(eplb_plan_matches_model(&p, is_moe2, 3, 2, 0, "plan.json", &err), MOE_FAIL);
    assert_one_line(&err, "plan.json: the plan has 1 MoE layers but the model has 2");
    assert_int_equal(eplb_plan_matches_model(&p, is_moe, 2, 4, 0, "plan.json", &err), MOE_FAIL);
    assert_one_line(&err, "2 experts per layer but the model has 4");
    assert_int_equal(eplb_plan_matches_model(&p, is_moe, 2, 2, 3, "plan.json", &err), MOE_FAIL);
    assert_one_line(&err, "the plan is for 2 ranks but 3 are running");
    int64_t w[4] = {1, 2, 3, 4};
    eplb_counts c;
    counts_make(&c, 2, 2, w);
    assert_int_equal(eplb_plan_matches_counts(&p, &c, "plan.json", &err), MOE_FAIL);
    assert_one_line(&err, "the plan has 1 MoE layers but the counts have 2");
    eplb_counts_free(&c);
    eplb_plan_free(&p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_cases),  cmocka_unit_test(test_hand_cases),
        cmocka_unit_test(test_guard_keeps_default), cmocka_unit_test(test_invariants_random),
        cmocka_unit_test(test_default_blocks),   cmocka_unit_test(test_bad_csv),
        cmocka_unit_test(test_bad_rebalance_args), cmocka_unit_test(test_bad_plan),
    };
    return cmocka_run_group_tests_name("eplb", tests, NULL, NULL);
}
