/* eplb.c - expert-parallel load balancing (see eplb.h for the legend and the algorithm).
 *
 * Legend (beyond eplb.h's)
 *   gs     experts per router group (E / G)       gpn  groups per node (G / Nn)
 *   En     experts per node (E / Nn)              Pn   slots per node (P / Nn)
 *   Nr     ranks per node (N / Nn)                ppr  slots per rank (P / N)
 *   mlog   a node-major renumbering of the experts (eplb.py's "mlog": experts of the
 *          groups packed onto node k are k*En .. (k+1)*En - 1)
 */
#include "eplb.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "json_util.h"
#include "numa_place.h"

/* ------------------------------------------------------------------ counts */

void eplb_counts_free(eplb_counts *c) {
    free(c->layer_id);
    free(c->count);
    memset(c, 0, sizeof *c);
}

typedef struct { int layer, expert, line; int64_t count; } csv_row;

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* one decimal field up to `sep` (',' or end of line); returns the position after it or NULL */
static const char *csv_field(const char *s, const char *end, char sep, int64_t max, int64_t *out) {
    if (s >= end || *s < '0' || *s > '9') return NULL;
    int64_t v = 0;
    while (s < end && *s >= '0' && *s <= '9') {
        v = v * 10 + (*s - '0');
        if (v > max) return NULL;
        s++;
    }
    if (sep == ',' ? (s >= end || *s != ',') : s != end) return NULL;
    *out = v;
    return sep == ',' ? s + 1 : s;
}

int eplb_counts_parse(eplb_counts *c, const char *text, size_t len, const char *name, moe_error *err) {
    memset(c, 0, sizeof *c);
    size_t cap = 0, n = 0;
    csv_row *rows = NULL;
    int line = 0, header = 0, rc = MOE_FAIL;
    int *ids = NULL, *first = NULL;
    for (size_t i = 0; i < len;) {
        size_t j = i;
        while (j < len && text[j] != '\n') j++;
        const char *s = text + i, *e = text + j;
        if (e > s && e[-1] == '\r') e--;
        line++;
        i = j + 1;
        if (e == s) continue;                                   /* blank line */
        if (!header) {
            static const char want[] = "layer_id,expert_id,count";
            if ((size_t)(e - s) != sizeof want - 1 || memcmp(s, want, sizeof want - 1)) {
                moe_error_set(err, "%s: line %d: want the header \"layer_id,expert_id,count\" (moe route -o PREFIX writes "
                                   "PREFIX.counts.csv)", name, line);
                goto out;
            }
            header = 1;
            continue;
        }
        int64_t l, x, k;
        const char *p = csv_field(s, e, ',', (1 << 20) - 1, &l);
        if (p) p = csv_field(p, e, ',', EPLB_MAX_EXPERTS - 1, &x);
        if (p) p = csv_field(p, e, 0, EPLB_MAX_COUNT, &k);
        if (!p) {
            moe_error_set(err, "%s: line %d: want layer_id,expert_id,count as non-negative integers (layer < 2^20, "
                               "expert < %d, count <= 2^53)", name, line, EPLB_MAX_EXPERTS);
            goto out;
        }
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 1024;
            csv_row *r = realloc(rows, nc * sizeof *r);
            if (!r) { moe_error_set(err, "%s: out of memory", name); goto out; }
            rows = r;
            cap = nc;
        }
        rows[n++] = (csv_row){ (int)l, (int)x, line, k };
    }
    if (!header) { moe_error_set(err, "%s: empty file: want the header \"layer_id,expert_id,count\"", name); goto out; }
    if (!n) { moe_error_set(err, "%s: no rows after the header", name); goto out; }
    /* the layers (sorted, distinct) and E */
    if (!(ids = malloc(n * sizeof *ids))) { moe_error_set(err, "%s: out of memory", name); goto out; }
    int E = 0;
    for (size_t r = 0; r < n; r++) {
        ids[r] = rows[r].layer;
        if (rows[r].expert + 1 > E) E = rows[r].expert + 1;
    }
    qsort(ids, n, sizeof *ids, cmp_int);
    int L = 0;
    for (size_t r = 0; r < n; r++)
        if (!L || ids[L - 1] != ids[r]) ids[L++] = ids[r];
    if (L > EPLB_MAX_LAYERS) { moe_error_set(err, "%s: %d layers, more than the limit of %d", name, L, EPLB_MAX_LAYERS); goto out; }
    size_t LE = (size_t)L * E;
    if (LE > 4 * n + 4096) {
        moe_error_set(err, "%s: %zu rows for %d layers x %d experts: every (layer, expert) must appear once", name, n, L, E);
        goto out;
    }
    c->n_layers = L;
    c->n_experts = E;
    c->layer_id = malloc(sizeof(int) * (size_t)L);
    c->count = calloc(LE, sizeof(int64_t));
    first = calloc(LE, sizeof(int));
    if (!c->layer_id || !c->count || !first) { moe_error_set(err, "%s: out of memory", name); goto out; }
    memcpy(c->layer_id, ids, sizeof(int) * (size_t)L);
    for (size_t r = 0; r < n; r++) {
        int *hit = bsearch(&rows[r].layer, c->layer_id, (size_t)L, sizeof(int), cmp_int);
        size_t at = (size_t)(hit - c->layer_id) * E + rows[r].expert;
        if (first[at]) {
            moe_error_set(err, "%s: line %d: layer %d expert %d is listed twice (first on line %d)", name, rows[r].line,
                          rows[r].layer, rows[r].expert, first[at]);
            goto out;
        }
        first[at] = rows[r].line;
        c->count[at] = rows[r].count;
    }
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++)
            if (!first[(size_t)l * E + e]) {
                moe_error_set(err, "%s: layer %d has no row for expert %d (every layer must list experts 0..%d)", name,
                              c->layer_id[l], e, E - 1);
                goto out;
            }
    rc = MOE_OK;
out:
    free(rows);
    free(ids);
    free(first);
    if (rc) eplb_counts_free(c);
    return rc;
}

int eplb_counts_load(eplb_counts *c, const char *path, moe_error *err) {
    char *text;
    size_t len;
    memset(c, 0, sizeof *c);
    if (file_read_all(path, (size_t)1 << 30, &text, &len, err)) return MOE_FAIL;
    int rc = eplb_counts_parse(c, text, len, path, err);
    free(text);
    return rc;
}

/* ------------------------------------------------------------------ plan basics */

void eplb_plan_free(eplb_plan *p) {
    free(p->layer_id);
    free(p->slot_expert);
    free(p->slot_replica);
    free(p->slot_rank);
    free(p->copies);
    free(p->kept_default);
    memset(p, 0, sizeof *p);
}

static int plan_alloc(eplb_plan *p, int L, int E, int N, int P, moe_error *err) {
    memset(p, 0, sizeof *p);
    p->n_layers = L;
    p->n_experts = E;
    p->n_ranks = N;
    p->n_slots = P;
    p->n_nodes = p->n_groups = 1;
    size_t LP = (size_t)L * P, LE = (size_t)L * E;
    p->layer_id = malloc(sizeof(int) * (size_t)L);
    p->slot_expert = malloc(sizeof(int) * LP);
    p->slot_replica = malloc(sizeof(int) * LP);
    p->slot_rank = malloc(sizeof(int) * LP);
    p->copies = calloc(LE, sizeof(int));
    p->kept_default = calloc((size_t)L, 1);
    if (!p->layer_id || !p->slot_expert || !p->slot_replica || !p->slot_rank || !p->copies || !p->kept_default) {
        eplb_plan_free(p);
        return moe_error_set(err, "eplb: out of memory for a plan of %d layers x %d slots", L, P);
    }
    return MOE_OK;
}

void eplb_rank_load(const eplb_plan *p, const eplb_counts *c, int l, double *load) {
    const int P = p->n_slots;
    for (int r = 0; r < p->n_ranks; r++) load[r] = 0;
    for (int s = 0; s < P; s++) {
        size_t at = (size_t)l * P + s;
        int e = p->slot_expert[at];
        load[p->slot_rank[at]] += (double)c->count[(size_t)l * c->n_experts + e] / p->copies[(size_t)l * p->n_experts + e];
    }
}

void eplb_layer_balance(const eplb_plan *p, const eplb_counts *c, int l, double *max, double *mean) {
    double load[EPLB_MAX_RANKS], sum = 0, mx = 0;
    eplb_rank_load(p, c, l, load);
    for (int r = 0; r < p->n_ranks; r++) {
        sum += load[r];
        if (load[r] > mx) mx = load[r];
    }
    *max = mx;
    *mean = sum / p->n_ranks;
}

int eplb_plan_matches_counts(const eplb_plan *p, const eplb_counts *c, const char *what, moe_error *err) {
    if (p->n_experts != c->n_experts)
        return moe_error_set(err, "%s: the plan has %d experts per layer but the counts have %d", what, p->n_experts,
                             c->n_experts);
    if (p->n_layers != c->n_layers)
        return moe_error_set(err, "%s: the plan has %d MoE layers but the counts have %d", what, p->n_layers, c->n_layers);
    for (int l = 0; l < p->n_layers; l++)
        if (p->layer_id[l] != c->layer_id[l])
            return moe_error_set(err, "%s: the plan's layer %d is layer %d in the counts", what, p->layer_id[l],
                                 c->layer_id[l]);
    return MOE_OK;
}

int eplb_plan_matches_model(const eplb_plan *p, const unsigned char *is_moe, int n_layers_total, int n_experts,
                            int n_ranks, const char *what, moe_error *err) {
    if (p->n_experts != n_experts)
        return moe_error_set(err, "%s: the plan has %d experts per layer but the model has %d", what, p->n_experts,
                             n_experts);
    if (n_ranks > 0 && p->n_ranks != n_ranks)
        return moe_error_set(err, "%s: the plan is for %d ranks but %d are running", what, p->n_ranks, n_ranks);
    int n_moe = 0;
    for (int l = 0; l < n_layers_total; l++) n_moe += is_moe[l] != 0;
    if (p->n_layers != n_moe)
        return moe_error_set(err, "%s: the plan has %d MoE layers but the model has %d (MTP included)", what,
                             p->n_layers, n_moe);
    for (int l = 0, k = 0; l < n_layers_total; l++) {
        if (!is_moe[l]) continue;
        if (p->layer_id[k] != l)
            return moe_error_set(err, "%s: the plan's layer %d is not the model's MoE layer %d", what, p->layer_id[k], l);
        k++;
    }
    return MOE_OK;
}

/* ------------------------------------------------------------------ default blocks */

int eplb_plan_default(eplb_plan *p, const eplb_counts *c, int n_ranks, int n_groups, moe_error *err) {
    const int L = c->n_layers, E = c->n_experts;
    if (n_ranks < 1 || n_ranks > EPLB_MAX_RANKS)
        return moe_error_set(err, "eplb: %d ranks: want 1..%d", n_ranks, EPLB_MAX_RANKS);
    if (n_ranks > E) return moe_error_set(err, "eplb: %d ranks but only %d experts per layer", n_ranks, E);
    if (plan_alloc(p, L, E, n_ranks, E, err)) return MOE_FAIL;
    p->n_groups = n_groups < 1 ? 1 : n_groups;
    memcpy(p->layer_id, c->layer_id, sizeof(int) * (size_t)L);
    /* numa_place.c's block planner over n_ranks simulated one-CPU nodes */
    numa_topology *t = malloc(sizeof *t);
    int cpus[NUMA_MAX_NODES];
    numa_plan np;
    memset(&np, 0, sizeof np);
    if (!t) { eplb_plan_free(p); return moe_error_set(err, "eplb: out of memory"); }
    for (int k = 0; k < n_ranks; k++) cpus[k] = 1;
    numa_topology_simulate(t, n_ranks, cpus, 0);
    int rc = numa_plan_make(&np, t, NUMA_PARTITION, L, L, E, p->n_groups, 0, n_ranks, err);
    free(t);
    if (rc) { eplb_plan_free(p); return MOE_FAIL; }
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) {
            size_t at = (size_t)l * E + e;
            int node = numa_expert_node(&np, l, e);          /* -1: one rank (the plan is inactive) */
            p->slot_expert[at] = e;
            p->slot_replica[at] = 0;
            p->slot_rank[at] = node < 0 ? 0 : node;
            p->copies[at] = 1;
        }
    numa_plan_free(&np);
    return MOE_OK;
}

/* ------------------------------------------------------------------ eplb.py */

typedef struct { const float *w; } by_weight;

static int cmp_desc(const void *a, const void *b, void *ctx) {
    const float *w = ((const by_weight *)ctx)->w;
    int x = *(const int *)a, y = *(const int *)b;
    if (w[x] > w[y]) return -1;
    if (w[x] < w[y]) return 1;
    return (x > y) - (x < y);                 /* ties: the lower index first (a stable sort) */
}

int eplb_balanced_packing(const float *w, int n, int m, int *pack, int *rank_in_pack, moe_error *err) {
    int per = n / m;
    if (per == 1) {
        for (int i = 0; i < n; i++) { pack[i] = i; rank_in_pack[i] = 0; }
        return MOE_OK;
    }
    int *order = malloc(sizeof(int) * (size_t)n), *items = calloc((size_t)m, sizeof(int));
    float *pw = calloc((size_t)m, sizeof(float));
    if (!order || !items || !pw) {
        free(order); free(items); free(pw);
        return moe_error_set(err, "eplb: out of memory");
    }
    for (int i = 0; i < n; i++) order[i] = i;
    by_weight ctx = { w };
    qsort_r(order, (size_t)n, sizeof(int), cmp_desc, &ctx);
    for (int i = 0; i < n; i++) {
        int g = order[i], best = -1;
        for (int k = 0; k < m; k++)               /* the lightest pack with room; the first on ties */
            if (items[k] < per && (best < 0 || pw[k] < pw[best])) best = k;
        pack[g] = best;
        rank_in_pack[g] = items[best];
        pw[best] += w[g];
        items[best]++;
    }
    free(order); free(items); free(pw);
    return MOE_OK;
}

void eplb_replicate(const float *w, int n, int P, int *phy2log, int *rank, int *logcnt) {
    for (int e = 0; e < n; e++) { phy2log[e] = e; rank[e] = 0; logcnt[e] = 1; }
    for (int p = n; p < P; p++) {
        int best = 0;
        float bv = w[0] / (float)logcnt[0];
        for (int e = 1; e < n; e++) {             /* the first maximum of w / logcnt */
            float v = w[e] / (float)logcnt[e];
            if (v > bv) { bv = v; best = e; }
        }
        phy2log[p] = best;
        rank[p] = logcnt[best];
        logcnt[best]++;
    }
}

/* rebalance_experts_hierarchical for one layer: w[E] -> the plan's rows of layer l */
static int hierarchical_layer(const float *w, int E, int P, int G, int Nn, int N, eplb_plan *p, int l, moe_error *err) {
    const int gs = E / G, gpn = G / Nn, ppr = P / N, En = E / Nn, Pn = P / Nn, Nr = N / Nn;
    float *tpg = calloc((size_t)G, sizeof(float)), *tpm = malloc(sizeof(float) * (size_t)En);
    float *tpp = malloc(sizeof(float) * (size_t)Pn);
    int *gpack = malloc(sizeof(int) * (size_t)G), *grank = malloc(sizeof(int) * (size_t)G);
    int *log2mlog = malloc(sizeof(int) * (size_t)E), *mlog2log = malloc(sizeof(int) * (size_t)E);
    int *mlogcnt = malloc(sizeof(int) * (size_t)E);
    int *phy2mlog = malloc(sizeof(int) * (size_t)Pn), *phyrank = malloc(sizeof(int) * (size_t)Pn);
    int *pk = malloc(sizeof(int) * (size_t)Pn), *rip = malloc(sizeof(int) * (size_t)Pn);
    int *pphy2phy = malloc(sizeof(int) * (size_t)Pn);
    int rc = MOE_FAIL;
    if (!tpg || !tpm || !tpp || !gpack || !grank || !log2mlog || !mlog2log || !mlogcnt || !phy2mlog || !phyrank || !pk ||
        !rip || !pphy2phy) {
        moe_error_set(err, "eplb: out of memory");
        goto out;
    }
    /* step 1: groups onto nodes */
    for (int e = 0; e < E; e++) tpg[e / gs] += w[e];
    if (eplb_balanced_packing(tpg, G, Nn, gpack, grank, err)) goto out;
    for (int e = 0; e < E; e++) {
        int g = e / gs;
        log2mlog[e] = (gpack[g] * gpn + grank[g]) * gs + e % gs;
    }
    for (int e = 0; e < E; e++) mlog2log[log2mlog[e]] = e;
    for (int k = 0; k < Nn; k++) {
        /* step 2: replicas within node k */
        for (int i = 0; i < En; i++) tpm[i] = w[mlog2log[k * En + i]];
        eplb_replicate(tpm, En, Pn, phy2mlog, phyrank, mlogcnt + (size_t)k * En);
        /* step 3: node k's slots onto its ranks */
        for (int q = 0; q < Pn; q++) tpp[q] = tpm[phy2mlog[q]] / (float)mlogcnt[(size_t)k * En + phy2mlog[q]];
        if (eplb_balanced_packing(tpp, Pn, Nr, pk, rip, err)) goto out;
        for (int q = 0; q < Pn; q++) pphy2phy[pk[q] * ppr + rip[q]] = q;
        for (int qq = 0; qq < Pn; qq++) {
            int q = pphy2phy[qq], slot = k * Pn + qq;
            size_t at = (size_t)l * P + slot;
            p->slot_expert[at] = mlog2log[phy2mlog[q] + k * En];
            p->slot_replica[at] = phyrank[q];
            p->slot_rank[at] = slot / ppr;
        }
    }
    for (int e = 0; e < E; e++) p->copies[(size_t)l * E + e] = mlogcnt[log2mlog[e]];
    rc = MOE_OK;
out:
    free(tpg); free(tpm); free(tpp); free(gpack); free(grank); free(log2mlog); free(mlog2log); free(mlogcnt);
    free(phy2mlog); free(phyrank); free(pk); free(rip); free(pphy2phy);
    return rc;
}

/* Layer l of p becomes the default blocks of `def` (one copy each), the spare slots of each
 * rank filled with extra copies of its own experts, hottest first, round robin. */
static void keep_default_layer(eplb_plan *p, const eplb_plan *def, const eplb_counts *c, int l) {
    const int E = p->n_experts, P = p->n_slots, ppr = P / p->n_ranks;
    const int *dr = def->slot_rank + (size_t)l * E;          /* default: slot e holds expert e */
    const int64_t *w = c->count + (size_t)l * E;
    int *cp = p->copies + (size_t)l * E;
    for (int e = 0; e < E; e++) cp[e] = 0;
    for (int r = 0, e0 = 0; r < p->n_ranks; r++) {
        int e1 = e0;
        while (e1 < E && dr[e1] == r) e1++;
        int s = r * ppr;
        for (int e = e0; e < e1; e++, s++) {
            size_t at = (size_t)l * P + s;
            p->slot_expert[at] = e;
            p->slot_replica[at] = cp[e]++;
            p->slot_rank[at] = r;
        }
        for (int k = 0; s < (r + 1) * ppr; s++, k++) {
            /* the k-th hottest of the block (k modulo its size): a selection by count, ties to the lower id */
            int n = e1 - e0, want = k % n, pick = e0;
            for (int e = e0; e < e1; e++) {
                int before = 0;
                for (int x = e0; x < e1; x++) before += w[x] > w[e] || (w[x] == w[e] && x < e);
                if (before == want) { pick = e; break; }
            }
            size_t at = (size_t)l * P + s;
            p->slot_expert[at] = pick;
            p->slot_replica[at] = cp[pick]++;
            p->slot_rank[at] = r;
        }
        e0 = e1;
    }
    p->kept_default[l] = 1;
}

int eplb_rebalance(eplb_plan *p, const eplb_counts *c, int n_ranks, int n_redundant, int n_groups, int n_nodes,
                   moe_error *err) {
    const int L = c->n_layers, E = c->n_experts;
    memset(p, 0, sizeof *p);
    if (n_ranks < 1 || n_ranks > EPLB_MAX_RANKS)
        return moe_error_set(err, "eplb: --ranks %d: want 1..%d", n_ranks, EPLB_MAX_RANKS);
    if (n_redundant < 0 || n_redundant > EPLB_MAX_EXPERTS)
        return moe_error_set(err, "eplb: --redundant %d: want 0..%d", n_redundant, EPLB_MAX_EXPERTS);
    if (n_nodes < 1 || n_ranks % n_nodes)
        return moe_error_set(err, "eplb: --nodes %d must divide --ranks %d (ranks per node are equal)", n_nodes, n_ranks);
    if (n_groups < 1 || E % n_groups)
        return moe_error_set(err, "eplb: --groups %d must divide the %d experts", n_groups, E);
    int P = E + n_redundant;
    if (P % n_ranks)
        return moe_error_set(err,
                             "eplb: %d experts + %d redundant = %d slots do not divide over %d ranks (pick --redundant "
                             "so that E + R is a multiple of the ranks, e.g. %d)",
                             E, n_redundant, P, n_ranks, n_redundant + (n_ranks - P % n_ranks));
    if (P / n_ranks < 1) return moe_error_set(err, "eplb: fewer slots than ranks");
    /* eplb.py rebalance_experts: hierarchical when the nodes divide the groups, else global */
    int G = n_groups, Nn = n_nodes;
    if (G % Nn) G = Nn = 1;
    if (plan_alloc(p, L, E, n_ranks, P, err)) return MOE_FAIL;
    p->n_groups = G;
    p->n_nodes = Nn;
    memcpy(p->layer_id, c->layer_id, sizeof(int) * (size_t)L);
    float *w = malloc(sizeof(float) * (size_t)E);
    eplb_plan def;
    if (!w || eplb_plan_default(&def, c, n_ranks, n_groups, err)) {
        free(w);
        eplb_plan_free(p);
        return w ? MOE_FAIL : moe_error_set(err, "eplb: out of memory");
    }
    for (int l = 0; l < L; l++) {
        for (int e = 0; e < E; e++) w[e] = (float)c->count[(size_t)l * E + e];
        if (hierarchical_layer(w, E, P, G, Nn, n_ranks, p, l, err)) {
            free(w);
            eplb_plan_free(&def);
            eplb_plan_free(p);
            return MOE_FAIL;
        }
        double pmax, pmean, dmax, dmean;
        eplb_layer_balance(p, c, l, &pmax, &pmean);
        eplb_layer_balance(&def, c, l, &dmax, &dmean);
        if (pmax > dmax) keep_default_layer(p, &def, c, l);
    }
    free(w);
    eplb_plan_free(&def);
    return MOE_OK;
}

/* ------------------------------------------------------------------ plan.json writer */

int eplb_plan_write_stream(const eplb_plan *p, const eplb_counts *c, const eplb_plan *before, FILE *f, moe_error *err) {
    const int P = p->n_slots, E = p->n_experts;
    /* per expert the rank of each replica: rk[off[e] + j] (sum of copies = P) */
    int *off = malloc(sizeof(int) * ((size_t)E + 1)), *rk = malloc(sizeof(int) * (size_t)P);
    if (!off || !rk) {
        free(off);
        free(rk);
        return moe_error_set(err, "eplb: out of memory writing the plan");
    }
    fprintf(f,
            "{\n  \"format\": \"moe-eplb-plan\",\n  \"version\": 1,\n  \"n_ranks\": %d,\n  \"n_nodes\": %d,\n"
            "  \"n_groups\": %d,\n  \"n_experts\": %d,\n  \"n_redundant\": %d,\n  \"layers\": [\n",
            p->n_ranks, p->n_nodes, p->n_groups, E, P - E);
    for (int l = 0; l < p->n_layers; l++) {
        const int *cp = p->copies + (size_t)l * E;
        const size_t base = (size_t)l * P;
        off[0] = 0;
        for (int e = 0; e < E; e++) off[e + 1] = off[e] + cp[e];
        for (int s = 0; s < P; s++) rk[off[p->slot_expert[base + s]] + p->slot_replica[base + s]] = p->slot_rank[base + s];
        fprintf(f, "    {\"layer\": %d,\n     \"ranks\": [", p->layer_id[l]);
        for (int r = 0, s = 0; r < p->n_ranks; r++) {
            fprintf(f, "%s\n       [", r ? "," : "");
            for (int k = 0; s < P && p->slot_rank[base + s] == r; s++, k++)
                fprintf(f, "%s[%d,%d]", k ? "," : "", p->slot_expert[base + s], p->slot_replica[base + s]);
            fprintf(f, "]");
        }
        fprintf(f, "\n     ],\n     \"experts\": [");
        for (int e = 0; e < E; e++) {
            fprintf(f, "%s[", e ? "," : "");
            for (int j = 0; j < cp[e]; j++) fprintf(f, j ? ",%d" : "%d", rk[off[e] + j]);
            fprintf(f, "]");
        }
        fprintf(f, "]");
        if (c) {
            double mx, mean, bmx = 0, bmean = 0;
            eplb_layer_balance(p, c, l, &mx, &mean);
            if (before) eplb_layer_balance(before, c, l, &bmx, &bmean);
            fprintf(f, ",\n     \"load\": {\"tokens\": %.0f, \"max_over_mean\": %.6f", mean * p->n_ranks,
                    mean > 0 ? mx / mean : 1.0);
            if (before) fprintf(f, ", \"default_max_over_mean\": %.6f", bmean > 0 ? bmx / bmean : 1.0);
            if (p->kept_default && p->kept_default[l]) fprintf(f, ", \"kept_default\": true");
            fprintf(f, "}");
        }
        fprintf(f, "}%s\n", l + 1 < p->n_layers ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    free(off);
    free(rk);
    return MOE_OK;
}

int eplb_plan_write_json(const eplb_plan *p, const eplb_counts *c, const eplb_plan *before, const char *path,
                         moe_error *err) {
    FILE *f = fopen(path, "w");
    if (!f) return moe_error_set(err, "%s: cannot write: %s", path, strerror(errno));
    if (eplb_plan_write_stream(p, c, before, f, err)) { fclose(f); return MOE_FAIL; }
    int bad = ferror(f);
    if (fclose(f) || bad) return moe_error_set(err, "%s: write failed: %s", path, strerror(errno));
    return MOE_OK;
}

/* ------------------------------------------------------------------ plan.json parser */

static int get_int(const json_t *v, long long lo, long long hi, long long *out) {
    if (!json_is_integer(v)) return 0;
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return 0;
    *out = x;
    return 1;
}

int eplb_plan_parse(eplb_plan *p, const char *text, size_t len, const char *name, moe_error *err) {
    memset(p, 0, sizeof *p);
    json_t *root = json_parse_text(text, len, name, err);
    if (!root) return MOE_FAIL;
    int rc = MOE_FAIL;
    int *seen = NULL;                 /* [P]: seen[off[e] + j] = 1 + rank holding (e, j), 0 = none yet */
    int *off = NULL;                  /* [E + 1] prefix sums of the copies */
    char fmt[64];
    long long N, E, R, Nn, G, ver;
    if (!json_is_object(root)) { moe_error_set(err, "%s: not a JSON object (want a plan from moe eplb)", name); goto out; }
    if (json_get_string(root, "format", 1, "", fmt, sizeof fmt, name, err)) goto out;
    if (strcmp(fmt, "moe-eplb-plan")) {
        moe_error_set(err, "%s: \"format\" is \"%s\", want \"moe-eplb-plan\"", name, fmt);
        goto out;
    }
    if (json_get_int(root, "version", 1, 1, 1, 1, &ver, name, err) ||
        json_get_int(root, "n_ranks", 1, 1, 1, EPLB_MAX_RANKS, &N, name, err) ||
        json_get_int(root, "n_experts", 1, 1, 1, EPLB_MAX_EXPERTS, &E, name, err) ||
        json_get_int(root, "n_redundant", 0, 0, 0, EPLB_MAX_EXPERTS, &R, name, err) ||
        json_get_int(root, "n_nodes", 0, 1, 1, N, &Nn, name, err) ||
        json_get_int(root, "n_groups", 0, 1, 1, E, &G, name, err))
        goto out;
    const json_t *layers = json_object_get(root, "layers");
    if (!json_is_array(layers) || json_array_size(layers) < 1) {
        moe_error_set(err, "%s: \"layers\" must be a non-empty array (one entry per MoE layer)", name);
        goto out;
    }
    int L = (int)(json_array_size(layers) < EPLB_MAX_LAYERS + 1 ? json_array_size(layers) : EPLB_MAX_LAYERS + 1);
    if (L > EPLB_MAX_LAYERS) { moe_error_set(err, "%s: more than %d layers", name, EPLB_MAX_LAYERS); goto out; }
    int P = (int)(E + R);
    /* each slot takes at least 6 bytes ("[0,0],") per layer: a bound on what the file can hold */
    if ((double)L * P * 6 > (double)len + 64) {
        moe_error_set(err, "%s: %d layers x (%lld experts + %lld redundant) slots cannot fit in %zu bytes", name, L, E, R,
                      len);
        goto out;
    }
    if (plan_alloc(p, L, (int)E, (int)N, P, err)) goto out;
    p->n_nodes = (int)Nn;
    p->n_groups = (int)G;
    seen = malloc(sizeof(int) * (size_t)P);
    off = malloc(sizeof(int) * ((size_t)E + 1));
    if (!seen || !off) { moe_error_set(err, "%s: out of memory", name); goto out; }
    for (int l = 0; l < L; l++) {
        const json_t *ly = json_array_get(layers, (size_t)l);
        long long id;
        if (!json_is_object(ly)) { moe_error_set(err, "%s: layers[%d] is not an object", name, l); goto out; }
        if (!get_int(json_object_get(ly, "layer"), 0, (1 << 20) - 1, &id)) {
            moe_error_set(err, "%s: layers[%d]: \"layer\" must be a layer id in [0, 2^20)", name, l);
            goto out;
        }
        if (l && id <= p->layer_id[l - 1]) {
            moe_error_set(err, "%s: layers[%d]: layer %lld does not follow layer %d (ascending, distinct)", name, l, id,
                          p->layer_id[l - 1]);
            goto out;
        }
        p->layer_id[l] = (int)id;
        const json_t *ranks = json_object_get(ly, "ranks"), *experts = json_object_get(ly, "experts");
        if (!json_is_array(ranks) || json_array_size(ranks) != (size_t)N) {
            moe_error_set(err, "%s: layers[%d] (layer %lld): \"ranks\" must be an array of %lld lists (one per rank)",
                          name, l, id, N);
            goto out;
        }
        if (!json_is_array(experts) || json_array_size(experts) != (size_t)E) {
            moe_error_set(err, "%s: layers[%d] (layer %lld): \"experts\" must be an array of %lld lists (one per expert)",
                          name, l, id, E);
            goto out;
        }
        int *cp = p->copies + (size_t)l * E;
        for (int e = 0; e < E; e++) {
            const json_t *x = json_array_get(experts, (size_t)e);
            if (!json_is_array(x)) {
                moe_error_set(err, "%s: layers[%d] (layer %lld): experts[%d] must be a list of ranks", name, l, id, e);
                goto out;
            }
            if (json_array_size(x) == 0) {
                moe_error_set(err, "%s: layers[%d] (layer %lld): expert %d is on no rank (every expert needs at least one)",
                              name, l, id, e);
                goto out;
            }
            if (json_array_size(x) > (size_t)R + 1) {
                moe_error_set(err, "%s: layers[%d] (layer %lld): expert %d has %zu replicas, more than 1 + n_redundant = %lld",
                              name, l, id, e, json_array_size(x), R + 1);
                goto out;
            }
            cp[e] = (int)json_array_size(x);
        }
        off[0] = 0;
        for (int e = 0; e < E; e++) off[e + 1] = off[e] + cp[e];
        if (off[E] != P) {
            moe_error_set(err, "%s: layers[%d] (layer %lld): \"experts\" lists %d replicas in all, want n_experts + "
                               "n_redundant = %d", name, l, id, off[E], P);
            goto out;
        }
        memset(seen, 0, sizeof(int) * (size_t)P);
        int s = 0;
        for (int r = 0; r < N; r++) {
            const json_t *list = json_array_get(ranks, (size_t)r);
            if (!json_is_array(list)) {
                moe_error_set(err, "%s: layers[%d] (layer %lld): ranks[%d] must be a list of [expert, replica]", name, l, id, r);
                goto out;
            }
            for (size_t k = 0; k < json_array_size(list); k++) {
                const json_t *pr = json_array_get(list, k);
                long long e, j;
                if (!json_is_array(pr) || json_array_size(pr) != 2 || !get_int(json_array_get(pr, 0), 0, E - 1, &e) ||
                    !get_int(json_array_get(pr, 1), 0, R, &j)) {
                    moe_error_set(err, "%s: layers[%d] (layer %lld): ranks[%d][%zu] must be [expert in 0..%lld, replica in 0..%lld]",
                                  name, l, id, r, k, E - 1, R);
                    goto out;
                }
                if (j >= cp[e]) {
                    moe_error_set(err, "%s: layers[%d] (layer %lld): ranks[%d][%zu]: expert %lld replica %lld, but experts[%lld] "
                                       "lists %d replica(s)", name, l, id, r, k, e, j, e, cp[e]);
                    goto out;
                }
                int *sn = &seen[off[e] + j];
                if (*sn) {
                    moe_error_set(err, "%s: layers[%d] (layer %lld): expert %lld replica %lld is on rank %d and again on rank %d",
                                  name, l, id, e, j, *sn - 1, r);
                    goto out;
                }
                *sn = r + 1;
                if (s >= P) {
                    moe_error_set(err, "%s: layers[%d] (layer %lld): more than n_experts + n_redundant = %d slots", name, l,
                                  id, P);
                    goto out;
                }
                size_t at = (size_t)l * P + s++;
                p->slot_expert[at] = (int)e;
                p->slot_replica[at] = (int)j;
                p->slot_rank[at] = r;
            }
        }
        if (s != P) {
            moe_error_set(err, "%s: layers[%d] (layer %lld): %d slots on the ranks, want n_experts + n_redundant = %d",
                          name, l, id, s, P);
            goto out;
        }
        for (int e = 0; e < E; e++) {
            const json_t *x = json_array_get(experts, (size_t)e);
            for (int j = 0; j < cp[e]; j++) {
                long long r;
                if (!get_int(json_array_get(x, (size_t)j), 0, N - 1, &r)) {
                    moe_error_set(err, "%s: layers[%d] (layer %lld): experts[%d][%d] must be a rank in 0..%lld", name, l,
                                  id, e, j, N - 1);
                    goto out;
                }
                int at = seen[off[e] + j] - 1;
                if (at != r) {
                    if (at < 0)
                        moe_error_set(err, "%s: layers[%d] (layer %lld): experts[%d] puts replica %d on rank %lld, but no "
                                           "rank lists [%d,%d]", name, l, id, e, j, r, e, j);
                    else
                        moe_error_set(err, "%s: layers[%d] (layer %lld): experts[%d] puts replica %d on rank %lld, but rank "
                                           "%d holds it", name, l, id, e, j, r, at);
                    goto out;
                }
            }
        }
    }
    rc = MOE_OK;
out:
    free(seen);
    free(off);
    json_decref(root);
    if (rc) eplb_plan_free(p);
    return rc;
}

int eplb_plan_load(eplb_plan *p, const char *path, moe_error *err) {
    char *text;
    size_t len;
    memset(p, 0, sizeof *p);
    if (file_read_all(path, (size_t)1 << 30, &text, &len, err)) return MOE_FAIL;
    int rc = eplb_plan_parse(p, text, len, path, err);
    free(text);
    return rc;
}
