/* ep_moe.c - ownership and exchange of routed-expert outputs across ranks (see ep_moe.h). */
#include "ep_moe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ep.h"

void ep_moe_free(ep_moe *x) {
    free(x->owner);
    free(x->own);
    free(x->n_hold);
    free(x->holders);
    free(x->replicated);
    free(x->range);
    free(x->contiguous);
    free(x->rows_of);
    free(x->row_of_slot);
    free(x->stage);
    memset(x, 0, sizeof *x);
}

int ep_moe_init(ep_moe *x, ep_comm *comm, const moe_model *m, const moe_ctx *c, const eplb_plan *plan, moe_error *err) {
    memset(x, 0, sizeof *x);
    const moe_config *cfg = &m->cfg;
    const int Lt = cfg->num_hidden_layers + cfg->num_nextn_predict_layers, E = cfg->n_routed_experts, N = comm->size;
    if (E < 1) return moe_error_set(err, "ep: a dense model has no experts to distribute");
    x->comm = comm;
    x->Lt = Lt;
    x->E = E;
    x->K = m->K;
    x->H = cfg->hidden_size;
    x->B = c->B;
    const char *chk = getenv("MOE_EP_CHECK");
    x->check = chk && *chk && strcmp(chk, "0");
    unsigned char *is_moe = calloc((size_t)Lt, 1);
    x->owner = malloc(sizeof(int) * (size_t)Lt * E);
    x->own = calloc((size_t)Lt * E, 1);
    x->n_hold = calloc((size_t)Lt * E, 1);
    x->holders = calloc((size_t)Lt * E * N, 1);
    x->replicated = calloc((size_t)Lt, 1);
    x->range = calloc((size_t)E * 2, sizeof(int));
    x->contiguous = calloc((size_t)Lt, 1);
    x->rows_of = calloc((size_t)N, sizeof(int));
    x->row_of_slot = malloc(sizeof(int) * (size_t)x->B * x->K);
    if (!is_moe || !x->owner || !x->own || !x->n_hold || !x->holders || !x->replicated || !x->range ||
        !x->contiguous || !x->rows_of || !x->row_of_slot) {
        free(is_moe);
        ep_moe_free(x);
        return moe_error_set(err, "ep: out of memory");
    }
    int n_moe = 0;
    for (int l = 0; l < Lt; l++) n_moe += is_moe[l] = (unsigned char)config_layer_is_moe(cfg, l);
    eplb_plan blocks = {0};
    const eplb_plan *p = plan;
    if (!p) {   /* the default: contiguous blocks, the same for every MoE layer */
        int *ids = malloc(sizeof(int) * (size_t)(n_moe ? n_moe : 1));
        for (int l = 0, k = 0; ids && l < Lt; l++) if (is_moe[l]) ids[k++] = l;
        eplb_counts cts = { n_moe, E, ids, NULL };
        int rc = !ids ? moe_error_set(err, "ep: out of memory") : eplb_plan_default(&blocks, &cts, N, cfg->n_group, err);
        free(ids);
        if (rc) { free(is_moe); ep_moe_free(x); return moe_error_prefix(err, "ep"); }
        p = &blocks;
    }
    int rc = eplb_plan_matches_model(p, is_moe, Lt, E, N, "plan", err);
    if (!rc && N > EPLB_MAX_RANKS) rc = moe_error_set(err, "ep: %d ranks, at most %d", N, EPLB_MAX_RANKS);
    if (rc) { free(is_moe); eplb_plan_free(&blocks); ep_moe_free(x); return MOE_FAIL; }
    int need_stage = 0;
    for (int l = 0; l < Lt; l++)
        for (int e = 0; e < E; e++) x->owner[(size_t)l * E + e] = -1;
    for (int k = 0; k < p->n_layers; k++) {
        int l = p->layer_id[k], mono = 1, ranks[EPLB_MAX_RANKS];
        for (int e = 0; e < E; e++) {
            size_t le = (size_t)l * E + e;
            int h = ep_holders(p, k, e, ranks);
            x->n_hold[le] = (unsigned char)h;
            for (int j = 0; j < h; j++) {
                x->holders[le * N + j] = (unsigned char)ranks[j];
                if (ranks[j] == comm->rank) x->own[le] = 1;
            }
            x->owner[le] = ranks[0];
            if (h > 1) x->replicated[l] = 1;
            if (e && ranks[0] < x->owner[le - 1]) mono = 0;
        }
        x->contiguous[l] = (unsigned char)(mono && !x->replicated[l]);
        need_stage |= !x->contiguous[l];
    }
    free(is_moe);
    eplb_plan_free(&blocks);
    if (need_stage && !(x->stage = malloc(sizeof(float) * (size_t)x->B * x->K * x->H))) {
        ep_moe_free(x);
        return moe_error_set(err, "ep: out of memory for the exchange buffer");
    }
    return MOE_OK;
}

const unsigned char *ep_moe_owned(void *ctx, int layer) {
    ep_moe *x = ctx;
    return x->own + (size_t)layer * x->E;
}

/* Holder j of expert e of the layer: its share [lo, hi) of the expert's slots in this pass. */
static void share_of(const ep_moe *x, int layer, const moe_ctx *c, int e, int j, int *lo, int *hi) {
    size_t le = (size_t)layer * x->E + e;
    int n_e = c->expert_start[e + 1] - c->expert_start[e], h = x->n_hold[le];
    if (h <= 1 || n_e == 0) { *lo = 0; *hi = n_e; return; }
    ep_share_range(n_e, h, ep_rotation(c->pos[c->expert_tok[c->expert_start[e]]], e), j, lo, hi);
}

const int *ep_moe_ranges(void *ctx, int layer, const moe_ctx *c) {
    ep_moe *x = ctx;
    if (!x->replicated[layer]) return NULL;
    const int E = x->E, N = x->comm->size, me = x->comm->rank;
    for (int e = 0; e < E; e++) {
        size_t le = (size_t)layer * E + e;
        int j = -1, lo = 0, hi = 0;
        for (int q = 0; q < x->n_hold[le]; q++) if (x->holders[le * N + q] == me) j = q;
        if (j >= 0) share_of(x, layer, c, e, j, &lo, &hi);
        x->range[2 * e] = lo;
        x->range[2 * e + 1] = hi;
    }
    return x->range;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void fail(ep_moe *x, const moe_error *err) { ep_comm_abort(x->comm, 1, err->msg); }

void ep_moe_exchange(void *ctx, int layer, moe_ctx *c) {
    ep_moe *x = ctx;
    ep_comm *comm = x->comm;
    const int E = x->E, H = x->H, N = comm->size, n_slots = c->n * x->K;
    const int *start = c->expert_start;
    moe_error err = {{0}};
    char what[64];
    snprintf(what, sizeof what, "layer %d expert outputs", layer);
    if (x->check) {   /* every rank must have routed the same way: compare the routing's hash */
        char w2[64];
        snprintf(w2, sizeof w2, "layer %d routing", layer);
        uint64_t h = ep_hash_route(EP_HASH_INIT, layer, c->route_ids, c->route_w, n_slots);
        if (ep_check_same(comm, h, w2, &err)) ep_comm_exit_all(comm, 1, err.msg);
    }
    const unsigned char *nh = x->n_hold + (size_t)layer * E, *hold = x->holders + (size_t)layer * E * N;
    for (int r = 0; r < N; r++) x->rows_of[r] = 0;
    for (int e = 0; e < E; e++) {
        int busy = 0, last = -1;
        for (int j = 0, lo, hi; j < nh[e]; j++) {
            share_of(x, layer, c, e, j, &lo, &hi);
            if (hi > lo) x->rows_of[hold[(size_t)e * N + j]] += hi - lo, busy++, last = j;
        }
        x->n_split += busy > 1;
        x->n_moved += busy == 1 && last > 0;
    }
    x->n_exchanges++;
    if (N == 1) return;
    x->bytes_sent += (uint64_t)x->rows_of[comm->rank] * H * sizeof(float) * (uint64_t)(N - 1);
    if (x->contiguous[layer]) {
        /* rank-major = slot order: in place on slot_out */
        int first = 0;
        for (int r = 0; r < comm->rank; r++) first += x->rows_of[r];
        double t0 = now_s();
        if (ep_allgatherv_rows(comm, c->slot_out + (size_t)first * H, x->rows_of, H, c->slot_out, what, &err)) fail(x, &err);
        x->comm_s += now_s() - t0;
        return;
    }
    /* staged: rank 0's rows first (its experts' shares by ascending expert, slot order), then
     * rank 1's ... (each rank computed its rows_of from the same routing) */
    int first_row[EPLB_MAX_RANKS], cursor[EPLB_MAX_RANKS];
    for (int r = 0, o = 0; r < N; r++) { first_row[r] = cursor[r] = o; o += x->rows_of[r]; }
    for (int e = 0; e < E; e++)
        for (int j = 0, lo, hi; j < nh[e]; j++) {
            int r = hold[(size_t)e * N + j];
            share_of(x, layer, c, e, j, &lo, &hi);
            for (int s = start[e] + lo; s < start[e] + hi; s++) {
                x->row_of_slot[s] = cursor[r]++;
                if (r == comm->rank)
                    memcpy(x->stage + (size_t)x->row_of_slot[s] * H, c->slot_out + (size_t)s * H, sizeof(float) * (size_t)H);
            }
        }
    double t0 = now_s();
    if (ep_allgatherv_rows(comm, x->stage + (size_t)first_row[comm->rank] * H, x->rows_of, H, x->stage, what, &err))
        fail(x, &err);
    x->comm_s += now_s() - t0;
    for (int s = 0; s < n_slots; s++)
        memcpy(c->slot_out + (size_t)s * H, x->stage + (size_t)x->row_of_slot[s] * H, sizeof(float) * (size_t)H);
}
