/* ep_logits_check.c - the engine under expert parallelism gives the logits of one process, bit
 * for bit (tests/cli_ep.sh runs it alone and under mpirun -np 2, 3 as ep_logits_check_mpi).
 *
 *   ep_logits_check DIR [--shuffle] [--plan plan.json] [--batch N] [--threads N]
 *
 * Every rank loads the checkpoint and first runs it as one process (no hook: every expert
 * here): a 10-token prefill (all logits), 3 greedy decode steps, and the MTP head over the
 * prefill when the model has one. Then it installs the EP hook (engine/ep/ep_moe.h: only its
 * own experts run, the slot outputs are allgathered), clears the cache and runs the same
 * again. Every logit must be bitwise equal to the one-process run (memcmp), and the EP logits'
 * hash equal on every rank (ep_check_same).
 *   --shuffle   the default blocks with every layer's experts permuted (pseudo-random, the
 *               same on every rank), so a rank's experts are not adjacent: the exchange goes
 *               through the staging buffer
 *   --batch N   tokens per pass (default 4: the prefill runs in passes of 4 + 4 + 2)
 *   --plan FILE the placement of `moe eplb` (plan.json), replicas included: a replicated
 *               expert's slots are split between its holders (ep.h), staged exchange
 *   --no-exchange  the control: the hook skips the exchange, so with 2+ ranks the logits must
 *               differ (exit 1, "the EP logits differ from one process's")
 * Prints one line per rank: "ep_logits_check DIR: rank R of N: bit-identical ...".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ep.h"
#include "ep_moe.h"
#include "kv.h"
#include "sampler.h"
#include "session.h"

enum { T = 10, D = 3 };

typedef struct {
    float *pre;   /* [T, V] */
    float *dec;   /* [D, V] */
    float *mtp;   /* [T, V] or NULL */
} run_out;

static ep_comm C;

static void die(const char *what, const moe_error *err) {
    char line[1200];
    snprintf(line, sizeof line, "%s: %s", what, err->msg);
    ep_comm_abort(&C, 1, line);
}

static void run(moe_session *s, run_out *o, float *hidden) {
    moe_error err = {{0}};
    const int V = s->m.cfg.vocab_size;
    int tok[T + D];
    for (int i = 0; i < T; i++) tok[i] = (i * 37 + 5) % V;
    kv_clear(&s->kv, 0);
    if (model_forward_seq(&s->m, &s->c, &s->kv, 0, tok, T, 0, o->pre, 1, hidden, &err)) die("prefill", &err);
    if (o->mtp) {
        int next[T];
        for (int i = 0; i < T; i++) next[i] = i + 1 < T ? tok[i + 1] : sampler_argmax(o->pre + (size_t)i * V, V);
        if (model_forward_mtp_seq(&s->m, &s->c, &s->kv, 0, 0, hidden, next, T, 0, o->mtp, 1, NULL, &err))
            die("mtp", &err);
    }
    int t = sampler_argmax(o->pre + (size_t)(T - 1) * V, V);
    for (int d = 0; d < D; d++) {
        if (model_forward_seq(&s->m, &s->c, &s->kv, 0, &t, 1, T + d, o->dec + (size_t)d * V, 0, NULL, &err))
            die("decode", &err);
        t = sampler_argmax(o->dec + (size_t)d * V, V);
    }
}

/* the control: each rank runs only its experts but nobody sends the others their rows */
static void no_exchange(void *ctx, int layer, moe_ctx *c) { (void)ctx; (void)layer; (void)c; }

int main(int argc, char **argv) {
    moe_error err = {{0}};
    if (ep_comm_init(&C, EP_COMM_AUTO, &argc, &argv, &err)) { fprintf(stderr, "ep_logits_check: %s\n", err.msg); return 1; }
    const char *dir = NULL;
    int shuffle = 0, threads = 1, control = 0, batch = 4;
    const char *plan_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--shuffle")) shuffle = 1;
        else if (!strcmp(argv[i], "--no-exchange")) control = 1;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--plan") && i + 1 < argc) plan_path = argv[++i];
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else dir = argv[i];
    }
    if (!dir) ep_comm_abort(&C, 2, "usage: ep_logits_check DIR [--shuffle] [--plan plan.json] [--batch N] [--threads N]");
    model_options opt = {0};
    opt.n_threads = threads;
    opt.batch_max = batch;        /* 4: the prefill runs in passes of 4 + 4 + 2 */
    opt.max_seq = 32;
    moe_session s;
    if (session_open(&s, dir, &opt, 1, &err)) die(dir, &err);
    const int V = s.m.cfg.vocab_size, H = s.m.cfg.hidden_size, E = s.m.cfg.n_routed_experts;
    int has_mtp = s.m.cfg.num_nextn_predict_layers > 0;
    run_out one = { malloc(sizeof(float) * T * V), malloc(sizeof(float) * D * V), has_mtp ? malloc(sizeof(float) * T * V) : NULL };
    run_out ep = { malloc(sizeof(float) * T * V), malloc(sizeof(float) * D * V), has_mtp ? malloc(sizeof(float) * T * V) : NULL };
    float *hidden = malloc(sizeof(float) * T * H);
    if (!one.pre || !one.dec || !ep.pre || !ep.dec || !hidden || (has_mtp && (!one.mtp || !ep.mtp)))
        ep_comm_abort(&C, 1, "out of memory");
    run(&s, &one, hidden);

    /* the placement: the default blocks, or an EPLB plan whose ranks hold scattered experts */
    eplb_plan plan = {0};
    if (shuffle) {   /* the default blocks with the experts of every layer permuted */
        int Lt = s.m.cfg.num_hidden_layers + s.m.cfg.num_nextn_predict_layers, L = 0;
        int *ids = malloc(sizeof(int) * (size_t)Lt);
        for (int l = 0; l < Lt; l++) if (config_layer_is_moe(&s.m.cfg, l)) ids[L++] = l;
        eplb_counts cts = { L, E, ids, NULL };
        if (eplb_plan_default(&plan, &cts, C.size, 1, &err)) die("plan", &err);
        uint64_t x = 88172645463325252ull;
        for (int l = 0; l < L; l++) {
            int *se = plan.slot_expert + (size_t)l * plan.n_slots;
            for (int i = E - 1; i > 0; i--) {   /* Fisher-Yates, the same on every rank */
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                int j = (int)(x % (uint64_t)(i + 1)), t = se[i];
                se[i] = se[j];
                se[j] = t;
            }
        }
        free(ids);
    }
    if (plan_path && eplb_plan_load(&plan, plan_path, &err)) die("plan", &err);
    ep_moe x;
    if (ep_moe_init(&x, &C, &s.m, &s.c, shuffle || plan_path ? &plan : NULL, &err)) die("ep", &err);
    ep_hook hook = { ep_moe_owned, control ? no_exchange : ep_moe_exchange, &x, ep_moe_ranges };
    s.c.ep = &hook;
    run(&s, &ep, hidden);

    int same = !memcmp(one.pre, ep.pre, sizeof(float) * T * V) && !memcmp(one.dec, ep.dec, sizeof(float) * D * V) &&
               (!has_mtp || !memcmp(one.mtp, ep.mtp, sizeof(float) * T * V));
    if (!same) {
        double md = 0;
        for (int i = 0; i < T * V; i++) {
            double d = (double)one.pre[i] - ep.pre[i];
            if (d < 0) d = -d;
            if (d > md) md = d;
        }
        char line[256];
        snprintf(line, sizeof line, "%s: the EP logits differ from one process's (prefill max |diff| %.3g)", dir, md);
        ep_comm_exit_all(&C, 1, line);
    }
    uint64_t h = ep_hash(EP_HASH_INIT, ep.pre, sizeof(float) * T * V);
    h = ep_hash(h, ep.dec, sizeof(float) * D * V);
    if (has_mtp) h = ep_hash(h, ep.mtp, sizeof(float) * T * V);
    if (ep_check_same(&C, h, "the EP logits", &err)) ep_comm_exit_all(&C, 1, err.msg);
    int mine = 0, shared = 0, Lt = x.Lt;
    for (int l = 0; l < Lt; l++)
        for (int e = 0; e < E; e++) {
            mine += x.own[(size_t)l * E + e];
            shared += x.own[(size_t)l * E + e] && x.n_hold[(size_t)l * E + e] > 1;
        }
    printf("ep_logits_check %s%s%s: rank %d of %d: bit-identical to one process (prefill %d, decode %d%s; %llu "
           "exchanges, %d of this model's expert-layers here, %d of them replicated; %llu experts split, %llu moved)\n",
           dir, shuffle ? " --shuffle" : "", plan_path ? " --plan" : "", C.rank, C.size, T, D, has_mtp ? ", MTP" : "",
           (unsigned long long)x.n_exchanges, mine, shared, (unsigned long long)x.n_split,
           (unsigned long long)x.n_moved);
    fflush(stdout);
    ep_moe_free(&x);
    eplb_plan_free(&plan);
    s.c.ep = NULL;
    free(one.pre); free(one.dec); free(one.mtp); free(ep.pre); free(ep.dec); free(ep.mtp); free(hidden);
    session_close(&s);
    ep_comm_free(&C);
    return 0;
}
