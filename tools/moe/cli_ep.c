/* cli_ep.c - `--ep` for the model commands (see cli_ep.h).
 *
 * Legend
 *   N, r     ranks, this rank;  expert-layers  (MoE layer, routed expert) pairs of the model
 */
#include "cli_ep.h"

#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "ep.h"
#include "ep_moe.h"
#include "json_util.h"
#include "kv.h"
#include "model.h"

/* ------------------------------------------------------------------ state (one per process) */

static struct {
    int on;                 /* --ep given */
    const char *plan_path;  /* --ep-plan FILE or NULL */
    int started, attached;
    ep_comm comm;
    ep_moe x;
    ep_hook hook;
    eplb_plan plan;
    int E;                  /* routed experts (0 until cli_ep_load_options) */
    unsigned char *holds;   /* [layers][E] 1: this rank loads the expert (weights_options.holds) */
} G;

int cli_ep_on(void) { return G.on; }
int cli_ep_rank(void) { return G.started ? G.comm.rank : 0; }
int cli_ep_size(void) { return G.started ? G.comm.size : 1; }

static void cli_ep_end(void) {
    if (G.attached) ep_moe_free(&G.x);
    eplb_plan_free(&G.plan);
    free(G.holds);
    G.holds = NULL;
    if (G.started) ep_comm_free(&G.comm);
    G.started = G.attached = 0;
}

int cli_ep_option(int argc, char **argv, int *i, const char *cmd) {
    const char *a = argv[*i];
    if (!strcmp(a, "--ep")) { G.on = 1; return 1; }
    if (!strcmp(a, "--ep-plan")) {
        if (*i + 1 >= argc) { fprintf(stderr, "moe %s: option --ep-plan needs a value\n", cmd); return -1; }
        G.plan_path = argv[++*i];
        G.on = 1;
        return 1;
    }
    return 0;
}

void cli_ep_usage(FILE *f) {
    fprintf(f, "  --ep                 expert parallelism under mpirun: each rank runs its block of experts (docs/ep.md)\n"
               "  --ep-plan FILE       --ep with the placement of `moe eplb` (plan.json)\n");
}

/* ------------------------------------------------------------------ start, attach */

void cli_ep_fail(const char *cmd, const char *msg) {
    char line[1400];
    snprintf(line, sizeof line, "moe %s: %s", cmd, msg);
    if (G.started) ep_comm_abort(&G.comm, 1, line);
    fprintf(stderr, "%s\n", line);
    exit(1);
}

void cli_ep_start(const char *cmd) {
    if (!G.on || G.started) return;
    moe_error err = {{0}};
    if (ep_comm_init(&G.comm, EP_COMM_AUTO, NULL, NULL, &err)) {
        fprintf(stderr, "moe %s: --ep: %s\n", cmd, err.msg);
        exit(1);
    }
    G.started = 1;
    atexit(cli_ep_end);
    if (G.comm.rank > 0 && !freopen("/dev/null", "w", stdout)) cli_ep_fail(cmd, "--ep: cannot silence stdout");
    if (G.comm.size == 1)
        fprintf(stderr, "moe %s: --ep with one rank (%s): every expert runs here\n", cmd,
                ep_comm_have_mpi() ? "not started by mpirun" : "this moe was built without MPI: make MPI=1");
}

void cli_ep_bcast_u64(uint64_t *v, const char *what) {
    if (!G.on) return;
    cli_ep_start(what);
    moe_error err = {{0}};
    if (ep_bcast(&G.comm, v, sizeof *v, what, &err)) cli_ep_fail(what, err.msg);
}

static double resident_mib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atof(line + 6);
    if (f) fclose(f);
    return kb / 1024.0;
}

static int holds_expert(void *ctx, int layer, int e) {
    (void)ctx;
    return G.holds[(size_t)layer * G.E + e];
}

void cli_ep_load_options(model_options *o, const char *dir, const char *cmd) {
    if (!G.on) return;
    cli_ep_start(cmd);
    moe_error err = {{0}};
    moe_config cfg;
    if (model_config_load(&cfg, dir, &err)) cli_ep_fail(cmd, err.msg);
    const int Lt = cfg.num_hidden_layers + cfg.num_nextn_predict_layers, E = cfg.n_routed_experts;
    if (E < 1) return;   /* ep_moe_init says it */
    if (G.plan_path && !G.plan.n_layers && eplb_plan_load(&G.plan, G.plan_path, &err)) ep_comm_exit_all(&G.comm, 2, err.msg);
    unsigned char *is_moe = calloc((size_t)Lt, 1);
    int *ids = malloc(sizeof(int) * (size_t)Lt), n_moe = 0;
    G.holds = calloc((size_t)Lt * E, 1);
    if (!is_moe || !ids || !G.holds) cli_ep_fail(cmd, "out of memory");
    for (int l = 0; l < Lt; l++)
        if ((is_moe[l] = (unsigned char)config_layer_is_moe(&cfg, l))) ids[n_moe++] = l;
    eplb_plan blocks = {0};
    const eplb_plan *p = G.plan_path ? &G.plan : &blocks;
    eplb_counts cts = { n_moe, E, ids, NULL };
    if (!G.plan_path && eplb_plan_default(&blocks, &cts, G.comm.size, cfg.n_group, &err)) ep_comm_exit_all(&G.comm, 2, err.msg);
    if (eplb_plan_matches_model(p, is_moe, Lt, E, G.comm.size, "plan", &err)) ep_comm_exit_all(&G.comm, 2, err.msg);
    for (int k = 0; k < p->n_layers; k++)
        for (int s = 0; s < p->n_slots; s++) {
            size_t at = (size_t)k * p->n_slots + s;
            if (p->slot_rank[at] == G.comm.rank) G.holds[(size_t)p->layer_id[k] * E + p->slot_expert[at]] = 1;
        }
    eplb_plan_free(&blocks);
    free(is_moe);
    free(ids);
    G.E = E;
    o->holds = holds_expert;
    o->holds_ctx = NULL;
}

void cli_ep_attach(moe_session *e, const char *dir, const char *cmd) {
    if (!G.on) return;
    cli_ep_start(cmd);
    moe_error err = {{0}};
    /* the same checkpoint, kernels and routing on every rank: config.json + tensor table */
    char path[4096], extra[256], *cfg_text = NULL;
    size_t cfg_len = 0;
    snprintf(path, sizeof path, "%s/config.json", dir);
    moe_error ignore = {{0}};
    if (file_read_all(path, (size_t)1 << 24, &cfg_text, &cfg_len, &ignore)) cfg_text = NULL, cfg_len = 0;
    const router_options *ro = &e->m.opt.routing;
    snprintf(extra, sizeof extra, "%s|%s|K%d|g%d|b%d", cpu_kernel_name(), weights_dtype_name(e->m.opt.dtype), e->m.K,
             ro->no_group_limit, ro->no_route_bias);
    uint64_t h = ep_hash_checkpoint(cfg_text, cfg_len, &e->m.w.files, extra);
    free(cfg_text);
    if (ep_check_same(&G.comm, h, "config + tensor table hash", &err)) ep_comm_exit_all(&G.comm, 3, err.msg);
    if (G.plan_path && !G.plan.n_layers && eplb_plan_load(&G.plan, G.plan_path, &err)) ep_comm_exit_all(&G.comm, 2, err.msg);
    if (ep_moe_init(&G.x, &G.comm, &e->m, &e->c, G.plan_path ? &G.plan : NULL, &err)) ep_comm_exit_all(&G.comm, 2, err.msg);
    G.attached = 1;
    G.hook = (ep_hook){ ep_moe_owned, ep_moe_exchange, &G.x, ep_moe_ranges };
    e->c.ep = &G.hook;
    int mine = 0, all = 0, shared = 0;
    for (int l = 0; l < G.x.Lt; l++)
        for (int k = 0; k < G.x.E; k++) {
            all += G.x.owner[(size_t)l * G.x.E + k] >= 0;
            mine += G.x.own[(size_t)l * G.x.E + k];
            shared += G.x.own[(size_t)l * G.x.E + k] && G.x.n_hold[(size_t)l * G.x.E + k] > 1;
        }
    fprintf(stderr, "ep: rank %d of %d (%s): %d of %d expert-layers here, %d replicated (%s), weights %.1f MiB loaded (%.1f mapped + "
                    "%.1f converted), resident %.1f MiB\n", G.comm.rank, G.comm.size, G.comm.ops->name, mine, all, shared,
            G.plan_path ? G.plan_path : "default blocks", (e->m.w.bytes_mapped + e->m.w.bytes_converted) / 1048576.0,
            e->m.w.bytes_mapped / 1048576.0, e->m.w.bytes_converted / 1048576.0, resident_mib());
}

/* ------------------------------------------------------------------ statistics (moe bench --ep) */

void cli_ep_stats(double *comm_s, uint64_t *bytes_sent, uint64_t *exchanges) {
    *comm_s = G.attached ? G.x.comm_s : 0;
    *bytes_sent = G.attached ? G.x.bytes_sent : 0;
    *exchanges = G.attached ? G.x.n_exchanges : 0;
}

void cli_ep_report(const char *what, const char *unit, double comm_s, uint64_t bytes, uint64_t exchanges, double units) {
    if (!G.attached || units <= 0) return;
    fprintf(stderr, "ep: rank %d of %d: %s: %.1f us in communication, %.0f bytes sent, %.1f exchanges per %s\n",
            G.comm.rank, G.comm.size, what, comm_s / units * 1e6, bytes / units, exchanges / units, unit);
}

/* ------------------------------------------------------------------ chat --ep */

void cli_ep_bcast_line(char **line, size_t *cap, ssize_t *got) {
    if (!G.on || !G.started || G.comm.size == 1) return;
    moe_error err = {{0}};
    int64_t n = G.comm.rank == 0 ? (int64_t)*got : 0;
    double t = G.comm.timeout_s;
    G.comm.timeout_s = 0;   /* the user may take a while */
    int rc = ep_bcast(&G.comm, &n, sizeof n, "chat input length", &err);
    G.comm.timeout_s = t;
    if (rc) cli_ep_fail("chat", err.msg);
    if (n < 0) { *got = -1; return; }
    if (n > ((int64_t)1 << 30)) cli_ep_fail("chat", "an input line longer than 1 GiB");
    if (G.comm.rank > 0 && (size_t)n + 1 > *cap) {
        char *p = realloc(*line, (size_t)n + 1);
        if (!p) cli_ep_fail("chat", "out of memory for an input line");
        *line = p;
        *cap = (size_t)n + 1;
    }
    if (n > 0 && ep_bcast(&G.comm, *line, (size_t)n, "chat input", &err)) cli_ep_fail("chat", err.msg);
    (*line)[n] = 0;
    *got = (ssize_t)n;
}

/* ------------------------------------------------------------------ serve --ep */

enum { MSG_FORWARD = 1, MSG_KV_CLEAR, MSG_KV_KEEP, MSG_KV_COPY, MSG_STOP };

static const char *msg_name(int op) {
    static const char *names[] = { "?", "forward", "kv clear", "kv keep", "kv copy", "stop" };
    return op >= 1 && op <= MSG_STOP ? names[op] : names[0];
}

static void send_msg(int op, int a, int b, int c) {
    moe_error err = {{0}};
    int m[4] = { op, a, b, c };
    if (ep_bcast(&G.comm, m, sizeof m, "serve message", &err)) cli_ep_fail("serve", err.msg);
}

static void leader_kv(void *ctx, int op, int slot, int a, int b) {
    (void)ctx;
    send_msg(op == SCHED_KV_CLEAR ? MSG_KV_CLEAR : op == SCHED_KV_KEEP ? MSG_KV_KEEP : MSG_KV_COPY, slot, a, b);
}

static int leader_forward(void *ctx, const moe_batch *b, moe_error *err) {
    (void)ctx;
    send_msg(MSG_FORWARD, b->n, 0, 0);
    ep_batch eb = { b->n, b->cap, b->token, b->pos, b->seq, b->want };
    if (ep_bcast_batch(&G.comm, &eb, err)) cli_ep_fail("serve", err->msg);   /* the followers are lost: end all */
    return MOE_OK;
}

static sched_follow leader_hook = { leader_kv, leader_forward, NULL };

const sched_follow *cli_ep_serve_leader(int batch_cap) {
    if (!G.on || !G.attached) return NULL;
    moe_error err = {{0}};
    if (ep_comm_reserve(&G.comm, batch_cap, &err)) cli_ep_fail("serve", err.msg);
    return &leader_hook;
}

void cli_ep_serve_stop(void) {
    if (G.on && G.attached && G.comm.rank == 0) send_msg(MSG_STOP, 0, 0, 0);
}

int cli_ep_serve_follow(moe_session *e, int batch_cap) {
    moe_error err = {{0}};
    moe_batch b;
    const int V = e->m.cfg.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)(batch_cap > 0 ? batch_cap : 1) * V);
    if (!logits || batch_init(&b, batch_cap, &err)) cli_ep_fail("serve", logits ? err.msg : "out of memory");
    if (ep_comm_reserve(&G.comm, batch_cap, &err)) cli_ep_fail("serve", err.msg);
    fprintf(stderr, "moe serve: rank %d of %d follows rank 0's passes\n", G.comm.rank, G.comm.size);
    unsigned long passes = 0;
    for (;;) {
        int m[4] = { 0 };
        double t = G.comm.timeout_s;
        G.comm.timeout_s = 0;   /* idle between requests: no timeout */
        int rc = ep_bcast(&G.comm, m, sizeof m, "serve message", &err);
        G.comm.timeout_s = t;
        if (rc) cli_ep_fail("serve", err.msg);
        const int n_slots = e->kv.n_slots;
        char line[160];
        switch (m[0]) {
        case MSG_STOP:
            fprintf(stderr, "moe serve: rank %d of %d: stopped by rank 0 after %lu passes\n", G.comm.rank, G.comm.size,
                    passes);
            batch_free(&b);
            free(logits);
            return 0;
        case MSG_KV_CLEAR:
        case MSG_KV_KEEP:
        case MSG_KV_COPY:
            if (m[1] < 0 || m[1] >= n_slots || (m[0] == MSG_KV_COPY && (m[2] < 0 || m[2] >= n_slots)) ||
                (m[0] != MSG_KV_CLEAR && (m[m[0] == MSG_KV_COPY ? 3 : 2] < 0))) {
                snprintf(line, sizeof line, "rank 0 sent %s %d %d %d for a cache of %d slots", msg_name(m[0]), m[1],
                         m[2], m[3], n_slots);
                cli_ep_fail("serve", line);
            }
            if (m[0] == MSG_KV_CLEAR) kv_clear(&e->kv, m[1]);
            else if (m[0] == MSG_KV_KEEP) kv_keep(&e->kv, m[1], m[2]);
            else kv_copy_prefix(&e->kv, m[1], m[2], m[3]);
            break;
        case MSG_FORWARD: {
            ep_batch eb = { 0, b.cap, b.token, b.pos, b.seq, b.want };
            if (ep_bcast_batch(&G.comm, &eb, &err)) cli_ep_fail("serve", err.msg);
            if (eb.n != m[1]) {
                snprintf(line, sizeof line, "rank 0 announced %d tokens and sent %d", m[1], eb.n);
                cli_ep_fail("serve", line);
            }
            b.n = eb.n;
            for (int i = 0; i < b.n; i++)
                if (b.seq[i] < 0 || b.seq[i] >= n_slots || b.pos[i] < 0 || b.pos[i] >= e->kv.S) {
                    snprintf(line, sizeof line, "rank 0's batch puts token %d at slot %d position %d (cache: %d x %d)", i,
                             b.seq[i], b.pos[i], n_slots, e->kv.S);
                    cli_ep_fail("serve", line);
                }
            if (model_forward(&e->m, &e->c, &e->kv, &b, logits, NULL, &err)) cli_ep_fail("serve", err.msg);
            passes++;
            break;
        }
        default:
            snprintf(line, sizeof line, "rank 0 sent an unknown message %d", m[0]);
            cli_ep_fail("serve", line);
        }
    }
}
