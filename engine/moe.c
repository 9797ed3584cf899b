/* moe.c - dense SwiGLU MLP and the MoE block (spec section 4).
 *
 * Notation: H hidden, E experts, K experts per token, Im expert width,
 * Ns shared multiplier (ONE shared MLP of width Im*Ns), n tokens in the pass (of any
 * sequences: the grouping by expert does not care whose a token is),
 * P worker shares of the thread pool.
 *
 *   y_t = sum_{j<K} w_tj Expert_{id_tj}(x_t) + SharedExpert(x_t)
 *
 * Dispatch, the same for one decoded token and for a prefill chunk:
 *   1. route every token (router.c);
 *   2. lay the n*K (token, weight) pairs out grouped by expert: slot s of expert e
 *      is expert_start[e] + i;
 *   3. work items = the active experts (+ the shared expert), largest first; the
 *      pool's shares claim items one at a time, and each item runs its expert once
 *      over its gathered tokens (a small matrix product, not K matrix-vector
 *      products per token), writing unweighted outputs to its own slots;
 *   4. reduce: y_t = sum over t's slots in slot order of w * out + shared, so the
 *      result does not depend on the number of threads or who ran what.
 *
 * --numa partition (numa_place.h): the routed items are grouped by the node holding the
 * expert, each group with its own counter; a thread takes the shared expert if still
 * free, then its own node's items, then helps the other nodes in turn (an idle node's
 * threads reading remote memory beat waiting for the busiest node). Step 4 is unchanged.
 *
 * Expert parallelism (moe_ctx.ep, engine/ep/ep.h): step 3 runs only this rank's items, an
 * item being [lo, hi) of an expert's slots (the whole expert, or a replicated expert's
 * share), and the exchange fills the other ranks' slots before step 4.
 */
#include "moe.h"

#include <stdatomic.h>
#include <string.h>

#include "kernels.h"
#include "linear.h"
#include "numa_place.h"

/* ------------------------------------------------------------------ SwiGLU */

void mlp_forward(moe_ctx *c, const mlp_weights *w, int width, const float *x, int n, float *out) {
    linear(c->pool, &w->gate, x, n, c->gate);
    linear(c->pool, &w->up, x, n, c->up);
    silu_mul(c->gate, c->up, n * width);
    linear(c->pool, &w->down, c->gate, n, out);
}

/* One thread's SwiGLU over n tokens, with the caller's scratch gate/up [n, width]. */
static void mlp_local(const mlp_weights *w, int width, const float *x, int n, float *out, float *gate, float *up) {
    if (n == 1) {
        matvec_rows(&w->gate, x, gate, 0, width);
        matvec_rows(&w->up, x, up, 0, width);
        silu_mul(gate, up, width);
        matvec_rows(&w->down, gate, out, 0, w->down.rows);
    } else {
        matmul_rows(&w->gate, x, n, gate, width, 0, width);
        matmul_rows(&w->up, x, n, up, width, 0, width);
        silu_mul(gate, up, n * width);
        matmul_rows(&w->down, gate, n, out, w->down.rows, 0, w->down.rows);
    }
}

/* ------------------------------------------------------------------ expert work items */

typedef struct {
    const moe_model *m;
    moe_ctx *c;
    const layer_weights *lw;
    const float *xn;          /* [n, H] */
    int n;
    const int *range;         /* [E][2] slots [lo, hi) of each expert run here (EP replicas), or NULL: all */
    int n_items;
    atomic_int next;          /* next unclaimed item */
    /* --numa partition: routed items of node g are [group_start[g], group_start[g+1]) */
    int n_groups;             /* 0 = no grouping (one counter, `next`) */
    int group_start[NUMA_MAX_NODES + 1];
    atomic_int group_next[NUMA_MAX_NODES];
    atomic_int shared_taken;
} expert_job;

/* Item i: expert s->expert_item[i] over its tokens, or the shared expert (-1) over all n. */
static void run_item(expert_job *job, int item, int share) {
    const moe_model *m = job->m;
    moe_ctx *s = job->c;
    const moe_config *c = &m->cfg;
    int H = c->hidden_size, e = s->expert_item[item];
    size_t scratch = (size_t)s->B * s->ffn_width;
    float *gate = s->share_gate + share * scratch, *up = s->share_up + share * scratch;
    if (e < 0) {
        mlp_local(&job->lw->shared, c->moe_intermediate_size * c->n_shared_experts, job->xn, job->n, s->shared_out,
                  gate, up);
        return;
    }
    int lo = job->range ? job->range[2 * e] : 0, hi = job->range ? job->range[2 * e + 1] : s->expert_count[e];
    int cnt = hi - lo, first = s->expert_start[e] + lo;
    float *xe = s->share_x + (size_t)share * s->B * H;
    for (int i = 0; i < cnt; i++)
        memcpy(xe + (size_t)i * H, job->xn + (size_t)s->expert_tok[first + i] * H, sizeof(float) * (size_t)H);
    mlp_local(&job->lw->experts[e], c->moe_intermediate_size, xe, cnt, s->slot_out + (size_t)first * H, gate, up);
}

/* Partition: the shared expert (item 0) if free, then this thread's node, then the others. */
static void expert_share_by_node(expert_job *job, int share) {
    const moe_model *m = job->m;
    int home = numa_thread_node(&m->numa, threadpool_self(), threadpool_threads(job->c->pool));
    if (job->lw->has_shared && !atomic_exchange(&job->shared_taken, 1)) run_item(job, 0, share);
    for (int d = 0; d < job->n_groups; d++) {
        int g = (home + d) % job->n_groups;
        for (;;) {
            int item = job->group_start[g] + atomic_fetch_add(&job->group_next[g], 1);
            if (item >= job->group_start[g + 1]) break;
            run_item(job, item, share);
        }
    }
}

static void expert_share(void *arg, int share, int n_shares) {
    (void)n_shares;
    expert_job *job = arg;
    if (job->n_groups) { expert_share_by_node(job, share); return; }
    for (;;) {
        int item = atomic_fetch_add(&job->next, 1);
        if (item >= job->n_items) break;
        run_item(job, item, share);
    }
}

/* ------------------------------------------------------------------ MoE */

void moe_forward(const moe_model *m, moe_ctx *s, int layer, const float *xn, float *out) {
    const moe_config *c = &m->cfg;
    const layer_weights *lw = &m->w.layers[layer];
    int H = c->hidden_size, E = c->n_routed_experts, K = m->K, n = s->n;

    uint64_t t0 = profile_start(s);
    /* 1. route every token */
    linear(s->pool, &lw->router, xn, n, s->logits_b);          /* [n, E] gate logits */
    for (int t = 0; t < n; t++) {
        route_decision d;
        router_select(c, &m->opt.routing, s->logits_b + (size_t)t * E, lw->router_bias, &s->router, &d);
        memcpy(s->route_ids + (size_t)t * K, d.ids, sizeof(int) * (size_t)K);
        memcpy(s->route_w + (size_t)t * K, d.weights, sizeof(float) * (size_t)K);
        if (s->on_route) s->on_route(s->on_route_ctx, layer, s->seq[t], s->pos[t], &d);
    }
    /* 2. group (token, weight) pairs by expert; remember each pair's slot */
    memset(s->expert_count, 0, sizeof(int) * (size_t)E);
    for (int i = 0; i < n * K; i++) s->expert_count[s->route_ids[i]]++;
    s->expert_start[0] = 0;
    for (int e = 0; e < E; e++) s->expert_start[e + 1] = s->expert_start[e] + s->expert_count[e];
    memset(s->expert_count, 0, sizeof(int) * (size_t)E);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < K; j++) {
            int e = s->route_ids[t * K + j], slot = s->expert_start[e] + s->expert_count[e]++;
            s->expert_tok[slot] = t;
            s->expert_w[slot] = s->route_w[t * K + j];
            s->token_slot[t * K + j] = slot;
        }
    t0 = profile_mark(s, PHASE_ROUTER, t0);
    /* 3. the work items, the biggest first (shared expert, then experts by token count);
     *    with --numa partition, the experts grouped by node, each group biggest first */
    expert_job job = { .m = m, .c = s, .lw = lw, .xn = xn, .n = n };
    int by_node = m->numa.expert_node != NULL, n_groups = by_node ? m->numa.topo.n_nodes : 1;
    int n_items = 0;
    /* expert parallelism: this rank's experts, or its parts of them (replicas) */
    const int *rg = s->ep && s->ep->ranges ? s->ep->ranges(s->ep->ctx, layer, s) : NULL;
    const unsigned char *own = s->ep && !rg ? s->ep->owned(s->ep->ctx, layer) : NULL;
    job.range = rg;
    if (lw->has_shared) s->expert_item[n_items++] = -1;
    for (int g = 0; g < n_groups; g++) {
        int lo = n_items;
        job.group_start[g] = lo;
        for (int e = 0; e < E; e++)
            if (s->expert_count[e] && (rg ? rg[2 * e + 1] > rg[2 * e] : !own || own[e]) &&
                (!by_node || numa_expert_node(&m->numa, layer, e) == g))
                s->expert_item[n_items++] = e;
#define ITEM_SIZE(e) (rg ? rg[2 * (e) + 1] - rg[2 * (e)] : s->expert_count[e])
        for (int i = lo; i < n_items; i++)   /* insertion sort: few items, nearly sorted */
            for (int j = i; j > lo && ITEM_SIZE(s->expert_item[j]) > ITEM_SIZE(s->expert_item[j - 1]); j--) {
                int tmp = s->expert_item[j];
                s->expert_item[j] = s->expert_item[j - 1];
                s->expert_item[j - 1] = tmp;
            }
#undef ITEM_SIZE
    }
    job.group_start[n_groups] = n_items;
    job.n_items = n_items;
    job.n_groups = by_node ? n_groups : 0;
    if (s->pool && threadpool_threads(s->pool) > 1 && n_items > 1) threadpool_run(s->pool, expert_share, &job);
    else expert_share(&job, 0, 1);
    if (s->ep) s->ep->exchange(s->ep->ctx, layer, s);   /* the other ranks' slots of slot_out */
    t0 = profile_mark(s, PHASE_EXPERTS, t0);   /* routed and shared experts run as one pool job */
    /* 4. reduce in a fixed order: each token's routed experts by expert id, then the shared one */
    for (int t = 0; t < n; t++) {
        float *y = out + (size_t)t * H;
        memset(y, 0, sizeof(float) * (size_t)H);
        /* the token's slots in ascending order = its experts in ascending id */
        int *slots = s->token_slot + (size_t)t * K;
        for (int a = 1; a < K; a++)
            for (int b = a; b > 0 && slots[b] < slots[b - 1]; b--) { int x = slots[b]; slots[b] = slots[b - 1]; slots[b - 1] = x; }
        for (int j = 0; j < K; j++) vec_axpy(y, s->expert_w[slots[j]], s->slot_out + (size_t)slots[j] * H, H);
        if (lw->has_shared) vec_axpy(y, 1.0f, s->shared_out + (size_t)t * H, H);
    }
    profile_mark(s, PHASE_EXPERTS, t0);
}
