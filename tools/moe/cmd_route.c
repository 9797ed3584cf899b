/* cmd_route.c - `moe route`: run a text through the model and show what the router did.
 *
 *   moe route -m DIR (-p TEXT | -f FILE | --tokens LIST) [-o PREFIX] [--coact-layer L]
 *             [--trace] [--explain POS] [--experts-per-token K] [--no-group-limit] [--no-route-bias]
 *
 * Legend:
 *   prefill   the tokens go through the model in chunks of --batch (default 64) inside
 *             windows of --ctx positions (default: the whole text, at most 4096); the MTP
 *             block sees (hidden_t, token t+1), the text's last position the greedy token
 *   PREFIX.counts.csv    layer_id,expert_id,count  (SGLang's dump, DeepSeek EPLB's input)
 *   PREFIX.summary.json  per layer metrics (engine/analysis/routestats.h), counts, group counts
 *   PREFIX.coact.csv     co-activation counts of --coact-layer (default: first MoE layer)
 *   PREFIX.load.svg      heat map layers x experts;   PREFIX.coact.svg  the co-activation matrix
 *   PREFIX.trace.jsonl   (--trace) one line per token and layer; the compact form goes to stderr
 *   --explain POS        everything about the token at position POS, on stdout
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attention.h"
#include "cli.h"
#include "commands.h"
#include "model.h"
#include "routeplot.h"
#include "routestats.h"
#include "tokenizer.h"
#include "sampler.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe route -m DIR (-p TEXT | -f FILE | --tokens LIST) [options]\n"
            "\n"
            "Runs the text through the model (prefill) and reports the routing of every MoE layer\n"
            "(the MTP block included): a table on stdout and the files\n"
            "  PREFIX.counts.csv     layer_id,expert_id,count (the format SGLang dumps and EPLB reads)\n"
            "  PREFIX.summary.json   per layer: tokens, MaxVio, CV, entropy, Jain's index, unused experts,\n"
            "                        adjacent-token overlap, top-k score mass, groups, hottest experts, counts\n"
            "  PREFIX.coact.csv      co-activation counts of one layer (expert_a,expert_b,count)\n"
            "  PREFIX.load.svg       heat map of the load, layers x experts (grouped)\n"
            "  PREFIX.coact.svg      the co-activation matrix\n"
            "\n"
            "options:\n"
            "  -m, --model DIR          checkpoint directory (config.json, safetensors, tokenizer.json)\n"
            "  -p TEXT | -f FILE        the text (BOS first; without tokenizer.json its bytes are the ids)\n"
            "  --tokens LIST            token ids instead of text\n"
            "  -o PREFIX                output prefix (default: route)\n"
            "  --coact-layer L          layer of the co-activation matrix (default: the first MoE layer)\n"
            "  --trace                  write PREFIX.trace.jsonl and print each token's routing on stderr\n"
            "  --explain POS            print one token's path: MLA cache, gate scores, bias, groups,\n"
            "                           top-k and weights, shared expert, the MTP draft\n"
            "  --experts-per-token K    route each token to K experts instead of the config's\n"
            "  --no-group-limit         ignore n_group/topk_group: choose from all experts\n"
            "  --no-route-bias          choose without e_score_correction_bias\n"
            "  --ctx N                  window length (default: the text, at most 4096 / the model's limit)\n"
            "  --batch N                tokens per forward chunk (default 64)\n"
            "  --dtype auto|f32|bf16|q8|q4 compute format of the weights (default auto)\n"
            "  --threads N              (default: one per core)\n"
            "  -q, --quiet              no table on stdout\n"
            "  -h, --help\n");
}

/* ====================================================================== */
/* The observer: statistics, trace lines, the explained token            */
/* ====================================================================== */

typedef struct {
    int layer, k, G, E, n_groups_kept;
    float *scores, *sel, *group_scores, *weights;   /* [E], [E], [G], [k] */
    int *ids, *groups;
    float margin, group_margin;
} explained_layer;

typedef struct {
    routestats *rs;
    const moe_model *m;
    const moe_kv *kv;
    const int *tokens;        /* the whole input */
    int win0;                 /* absolute index of the window's position 0 */
    const struct tokenizer *tok;
    /* trace: lines of the current chunk, [B][Lt], printed in position order */
    int trace, B, Lt, chunk0;
    char **lines_json, **lines_text;
    FILE *trace_file;
    /* explain */
    int explain;              /* absolute position, -1 = none */
    explained_layer *ex;      /* [Lt] */
    int fail;
} route_run;

static void on_route(void *ctx, int layer, int seq, int pos, const route_decision *d) {
    route_run *r = ctx;
    routestats_observe(r->rs, layer, pos, d);
    int abs_pos = r->win0 + pos;
    if (r->trace) {
        int t = pos - r->chunk0;
        if (t >= 0 && t < r->B && layer < r->Lt) {
            char piece[256], buf[8192];
            int tokid = layer < r->m->cfg.num_hidden_layers ? r->tokens[abs_pos] : -1;
            const char *p = tokid >= 0 ? cli_token_text(r->tok, tokid, piece, sizeof piece) : NULL;
            size_t i = (size_t)t * r->Lt + layer;
            routestats_trace_json(buf, sizeof buf, layer, abs_pos, tokid, p, d);
            free(r->lines_json[i]);
            r->lines_json[i] = strdup(buf);
            routestats_trace_text(buf, sizeof buf, layer, abs_pos, tokid, p, d);
            free(r->lines_text[i]);
            r->lines_text[i] = strdup(buf);
            if (!r->lines_json[i] || !r->lines_text[i]) r->fail = 1;
        }
    }
    if (abs_pos == r->explain && layer < r->Lt) {
        explained_layer *e = &r->ex[layer];
        int E = r->m->cfg.n_routed_experts, G = r->m->cfg.n_group;
        e->layer = layer; e->k = d->k; e->E = E; e->G = G; e->n_groups_kept = d->n_groups_kept;
        e->margin = d->margin; e->group_margin = d->group_margin;
        e->scores = malloc(sizeof(float) * E); e->sel = malloc(sizeof(float) * E);
        e->group_scores = malloc(sizeof(float) * G); e->weights = malloc(sizeof(float) * d->k);
        e->ids = malloc(sizeof(int) * d->k); e->groups = malloc(sizeof(int) * G);
        if (!e->scores || !e->sel || !e->group_scores || !e->weights || !e->ids || !e->groups) { r->fail = 1; return; }
        memcpy(e->scores, d->scores, sizeof(float) * E);
        memcpy(e->sel, d->sel, sizeof(float) * E);
        if (d->group_scores) memcpy(e->group_scores, d->group_scores, sizeof(float) * G);
        else for (int g = 0; g < G; g++) e->group_scores[g] = NAN;
        memcpy(e->weights, d->weights, sizeof(float) * d->k);
        memcpy(e->ids, d->ids, sizeof(int) * d->k);
        memcpy(e->groups, d->groups, sizeof(int) * d->n_groups_kept);
    }
}

/* Prints and frees the buffered trace lines of a chunk of n positions. */
static void trace_flush(route_run *r, int n) {
    for (int t = 0; t < n; t++)
        for (int l = 0; l < r->Lt; l++) {
            size_t i = (size_t)t * r->Lt + l;
            if (r->lines_json[i]) fprintf(r->trace_file, "%s\n", r->lines_json[i]);
            if (r->lines_text[i]) fprintf(stderr, "%s\n", r->lines_text[i]);
            free(r->lines_json[i]); free(r->lines_text[i]);
            r->lines_json[i] = r->lines_text[i] = NULL;
        }
}

/* ====================================================================== */
/* Explain: one token's path                                              */
/* ====================================================================== */

static const char *quoted(const struct tokenizer *tok, int id, char *out, size_t cap);

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The 5 most likely tokens of logits [V] with their probabilities. */
static void print_top(const struct tokenizer *tok, const float *logits, int V, int n) {
    float mx = logits[sampler_argmax(logits, V)];
    double z = 0;
    for (int v = 0; v < V; v++) z += exp((double)logits[v] - mx);
    int best[8];
    for (int i = 0; i < n && i < 8; i++) {
        int b = -1;
        for (int v = 0; v < V; v++) {
            int taken = 0;
            for (int j = 0; j < i; j++) taken |= best[j] == v;
            if (!taken && (b < 0 || logits[v] > logits[b])) b = v;
        }
        best[i] = b;
        char piece[128];
        printf("    %5d %-14s p = %.4f   (logit %.3f)\n", b, quoted(tok, b, piece, sizeof piece),
               exp((double)logits[b] - mx) / z, logits[b]);
    }
}

/* A token's text in single quotes, control characters escaped. */
static const char *quoted(const struct tokenizer *tok, int id, char *out, size_t cap) {
    char raw[128];
    cli_token_text(tok, id, raw, sizeof raw);
    size_t n = 0;
    out[n++] = '\'';
    for (const char *p = raw; *p && n + 6 < cap; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '\n') n += (size_t)snprintf(out + n, cap - n, "\\n");
        else if (ch < 0x20 || ch == 0x7f) n += (size_t)snprintf(out + n, cap - n, "\\x%02x", ch);
        else out[n++] = (char)ch;
    }
    out[n++] = '\'';
    out[n] = 0;
    return out;
}

static void print_explain(const route_run *r, const float *main_logits, const float *mtp_logits, int mtp_next) {
    const moe_model *m = r->m;
    const moe_config *c = &m->cfg;
    int P = r->explain, tokid = r->tokens[P];
    char piece[128];
    int R = c->kv_lora_rank, dr = c->qk_rope_head_dim, nh = c->num_attention_heads, dn = c->qk_nope_head_dim;
    int dv = c->v_head_dim, dq = dn + dr;
    printf("\n== explain: position %d, token %d %s\n", P, tokid, quoted(r->tok, tokid, piece, sizeof piece));
    printf("\nattention (engine/attention.c attention_forward): MLA caches per token per layer\n");
    printf("  c_kv [R = %d] + k_pe [dr = %d]                        = %d floats = %d bytes\n", R, dr, R + dr,
           (R + dr) * 4);
    printf("  ordinary multi-head attention would cache K [nh*dq = %d*%d] + V [nh*dv = %d*%d] = %d floats = %d bytes "
           "(%.1fx more)\n", nh, dq, nh, dv, nh * (dq + dv), nh * (dq + dv) * 4, (double)nh * (dq + dv) / (R + dr));
    printf("  (2*nh*dq = %d floats if V had the key's width)  whole model: %zu bytes per token over %d layers\n",
           2 * nh * dq, kv_bytes_per_token(r->kv), m->w.n_layers);
    const char *method = c->topk_method == TOPK_NOAUX_TC ? "noaux_tc"
                       : c->topk_method == TOPK_GROUP_LIMITED_GREEDY ? "group_limited_greedy" : "greedy";
    for (int l = 0; l < r->Lt; l++) {
        const explained_layer *e = &r->ex[l];
        if (!e->scores) continue;
        const float *bias = m->w.layers[l].router_bias;
        int use_bias = c->topk_method == TOPK_NOAUX_TC && bias && !m->opt.routing.no_route_bias;
        int G = e->G, gs = e->E / G;
        printf("\nlayer %d%s router (engine/router.c router_select): %s scores, %s, E = %d", l,
               l >= c->num_hidden_layers ? " (MTP block)" : "", c->scoring_func == SCORE_SIGMOID ? "sigmoid" : "softmax",
               method, e->E);
        if (G > 1) printf(", %d groups of %d, keep %d", G, gs, c->topk_group);
        printf(", top-%d%s, routed_scaling_factor %.3g\n", e->k, c->norm_topk_prob ? ", weights normalised" : "",
               c->routed_scaling_factor);
        {   /* the whole score distribution, for scale */
            float *sorted = malloc(sizeof(float) * (size_t)e->E);
            if (sorted) {
                memcpy(sorted, e->scores, sizeof(float) * (size_t)e->E);
                qsort(sorted, (size_t)e->E, sizeof(float), cmp_float);
                double sum = 0;
                for (int x = 0; x < e->E; x++) sum += sorted[x];
                printf("  scores of all %d experts: min %.5f, median %.5f, max %.5f, sum %.4f\n", e->E, sorted[0],
                       sorted[e->E / 2], sorted[e->E - 1], sum);
                free(sorted);
            }
        }
        if (e->n_groups_kept) {
            printf("  group scores (%s of score+bias in the group):\n   ",
                   c->topk_method == TOPK_NOAUX_TC ? "sum of the 2 best" : "the best");
            for (int g = 0; g < G; g++) {
                int kept = 0;
                for (int i = 0; i < e->n_groups_kept; i++) kept |= e->groups[i] == g;
                printf(" g%d %.4f%s", g, e->group_scores[g], kept ? "*" : "");
            }
            printf("\n  kept (*): %d groups; group margin (last kept - best dropped) %.5f\n", e->n_groups_kept,
                   e->group_margin);
        } else if (G > 1) {
            printf("  group limit: off (--no-group-limit or a greedy method): all %d experts compete\n", e->E);
        }
        if (!use_bias)
            printf("  no selection bias here (%s): experts are chosen by their scores\n",
                   c->topk_method != TOPK_NOAUX_TC ? "only noaux_tc routing has one"
                   : bias ? "--no-route-bias" : "the checkpoint has no e_score_correction_bias");
        printf("  %-4s %6s %5s %9s %9s %11s %9s\n", "rank", "expert", "group", "score", "bias", "score+bias", "weight");
        double wsum = 0;
        for (int j = 0; j < e->k; j++) {
            int id = e->ids[j];
            printf("  %-4d %6d %5d %9.5f %9.5f %11.5f %9.5f\n", j + 1, id, id / gs, e->scores[id],
                   use_bias ? bias[id] : 0.0f, e->sel[id], e->weights[j]);
            wsum += e->weights[j];
        }
        /* the best expert that was not chosen (the router's margin is measured against it) */
        int nxt = -1;
        for (int x = 0; x < e->E; x++) {
            int chosen = 0;
            for (int j = 0; j < e->k; j++) chosen |= e->ids[j] == x;
            if (!chosen && (nxt < 0 || e->sel[x] > e->sel[nxt])) nxt = x;
        }
        if (nxt >= 0)
            printf("  next %6d %5d %9.5f %9.5f %11.5f %9s   (margin %.5f)\n", nxt, nxt / gs, e->scores[nxt],
                   use_bias ? bias[nxt] : 0.0f, e->sel[nxt], "-", e->margin);
        /* what the raw scores alone (no bias, no group limit) would have chosen */
        printf("  weights sum to %.4f\n  by raw score alone (no bias, no groups) the top-%d would be:", wsum, e->k);
        int same = 0;
        unsigned char *taken = calloc((size_t)e->E, 1);
        for (int j = 0; taken && j < e->k; j++) {
            int b = -1;
            for (int x = 0; x < e->E; x++)
                if (!taken[x] && (b < 0 || e->scores[x] > e->scores[b])) b = x;
            if (b < 0) break;
            taken[b] = 1;
            int chosen = 0;
            for (int i = 0; i < e->k; i++) chosen |= e->ids[i] == b;
            same += chosen;
            printf(" %d%s", b, chosen ? "" : (isinf(e->sel[b]) ? "(dropped group)" : "(bias)"));
        }
        free(taken);
        printf("\n  -> %d of %d chosen experts agree with the raw-score choice\n", same, e->k);
        if (m->w.layers[l].has_shared)
            printf("  + shared expert (engine/moe.c moe_forward): width %d = %d x %d, weight 1, every token\n",
                   c->moe_intermediate_size * c->n_shared_experts, c->n_shared_experts, c->moe_intermediate_size);
    }
    if (main_logits) {
        printf("\nmain head (engine/model.c model_forward) at position %d predicts position %d:\n", P, P + 1);
        print_top(r->tok, main_logits, c->vocab_size, 5);
    }
    if (mtp_logits) {
        printf("\nMTP (engine/model.c model_forward_mtp): fed hidden_%d and token %d %s (position %d), it drafts position "
               "%d:\n", P, mtp_next, quoted(r->tok, mtp_next, piece, sizeof piece), P + 1, P + 2);
        print_top(r->tok, mtp_logits, c->vocab_size, 5);
    }
}

/* ====================================================================== */
/* Table                                                                  */
/* ====================================================================== */

static void print_table(const routestats *rs) {
    printf("%-6s %7s %7s %6s %7s %6s %6s %7s %6s %7s  %s\n", "layer", "tokens", "MaxVio", "CV", "entropy", "Jain",
           "unused", "overlap", "mass", "groups", "hottest experts (count)");
    for (int l = 0; l < rs->Lt; l++) {
        if (!rs->is_moe[l]) continue;
        routestats_layer s;
        routestats_layer_metrics(rs, l, &s);
        char name[16];
        snprintf(name, sizeof name, l >= rs->L ? "%d mtp" : "%d", l);
        printf("%-6s %7lld %7.3f %6.3f %7.4f %6.4f %6d %7.4f %6.4f %4.2f/%-2d ", name, (long long)s.tokens, s.maxvio, s.cv,
               s.entropy, s.jain, s.unused, s.overlap, s.mass, s.groups_mean, s.groups_max);
        for (int i = 0; i < s.n_hot; i++) printf(" %d(%lld)", s.hot[i], (long long)s.hot_count[i]);
        printf("\n");
    }
    printf("MaxVio = max/mean load - 1; CV = std/mean; entropy normalised to 1 = uniform; Jain 1 = uniform, 1/E = one "
           "expert;\noverlap = mean |S_t n S_t-1|/K; mass = share of the gate's score mass in the chosen K; groups = "
           "distinct groups per token (mean/max)\n");
}

/* ====================================================================== */
/* The command                                                            */
/* ====================================================================== */

int cmd_route(int argc, char **argv) {
    const char *dir = NULL, *prompt = NULL, *file = NULL, *ids = NULL, *prefix = "route";
    long coact_layer = -1, explain = -1, ctx = 0;
    int trace = 0, quiet = 0;
    model_options opt = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int k = cli_model_option(argc, argv, &i, "route", &opt);
        if (k < 0) return 2;
        if (k) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(dir = cli_value(argc, argv, &i, "route"))) return 2; }
        else if (!strcmp(a, "-p")) { if (!(prompt = cli_value(argc, argv, &i, "route"))) return 2; }
        else if (!strcmp(a, "-f")) { if (!(file = cli_value(argc, argv, &i, "route"))) return 2; }
        else if (!strcmp(a, "--tokens")) { if (!(ids = cli_value(argc, argv, &i, "route"))) return 2; }
        else if (!strcmp(a, "-o")) { if (!(prefix = cli_value(argc, argv, &i, "route"))) return 2; }
        else if (!strcmp(a, "--trace")) trace = 1;
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) quiet = 1;
        else if (!strcmp(a, "--coact-layer")) {
            if (!(v = cli_value(argc, argv, &i, "route")) || !cli_int(v, 0, 1 << 20, "route", a, &coact_layer)) return 2;
        } else if (!strcmp(a, "--explain")) {
            if (!(v = cli_value(argc, argv, &i, "route")) || !cli_int(v, 0, 1 << 30, "route", a, &explain)) return 2;
        } else if (!strcmp(a, "--ctx")) {
            if (!(v = cli_value(argc, argv, &i, "route")) || !cli_int(v, 2, 1 << 20, "route", a, &ctx)) return 2;
        } else {
            fprintf(stderr, "moe route: unknown option '%s' (see moe route --help)\n", a);
            return 2;
        }
    }
    if (!dir) { fprintf(stderr, "moe route: -m DIR is required (see moe route --help)\n"); return 2; }

    /* config first: check the options before any heavy loading */
    moe_error err = {{0}};
    moe_config cfg;
    if (model_config_load(&cfg, dir, &err)) { fprintf(stderr, "moe route: %s\n", err.msg); return 1; }
    if (cfg.n_routed_experts < 1) { fprintf(stderr, "moe route: %s has no routed experts (a dense model)\n", dir); return 1; }
    int Lt = cfg.num_hidden_layers + cfg.num_nextn_predict_layers;
    if (coact_layer < 0)
        for (int l = 0; l < Lt && coact_layer < 0; l++)
            if (config_layer_is_moe(&cfg, l)) coact_layer = l;
    if (coact_layer >= Lt) {
        fprintf(stderr, "moe route: --coact-layer %ld is out of range: this model has layers 0..%d%s\n", coact_layer,
                Lt - 1, cfg.num_nextn_predict_layers ? " (the last is the MTP block)" : "");
        return 1;
    }
    if (!config_layer_is_moe(&cfg, (int)coact_layer)) {
        fprintf(stderr, "moe route: --coact-layer %ld is a dense layer (first_k_dense_replace = %d): pick an MoE layer\n",
                coact_layer, cfg.first_k_dense_replace);
        return 1;
    }
    if (cli_route_knobs_check(&cfg, &opt.routing, "route")) return 1;

    int *tokens = NULL, T = 0;
    struct tokenizer *tok = NULL;
    if (cli_input_tokens(dir, &cfg, ids, prompt, file, "route", &tokens, &T, &tok)) return 1;
    {   /* fail before the run if the outputs cannot be written (leaving no file behind) */
        char probe[4096];
        snprintf(probe, sizeof probe, "%s.counts.csv", prefix);
        int existed = access(probe, F_OK) == 0;
        FILE *f = fopen(probe, "a");
        if (!f) {
            fprintf(stderr, "moe route: %s: cannot write: %s\n", probe, strerror(errno));
            free(tokens); tokenizer_free(tok);
            return 1;
        }
        fclose(f);
        if (!existed) remove(probe);
    }
    if (explain >= T) {
        fprintf(stderr, "moe route: --explain %ld is past the end of the input (%d tokens, positions 0..%d)\n", explain, T,
                T - 1);
        free(tokens); tokenizer_free(tok);
        return 1;
    }
    int limit = cfg.max_position_embeddings < 4096 ? cfg.max_position_embeddings : 4096;
    int S = ctx > 0 ? (int)ctx : (T < limit ? T : limit);
    if (S > T) S = T;
    opt.max_seq = S;
    moe_session eng;
    if (cli_load_engine(&eng, dir, &opt, 1, "route", 0)) { free(tokens); tokenizer_free(tok); return 1; }
    const moe_config *c = &eng.m.cfg;
    int V = c->vocab_size, H = c->hidden_size, B = eng.c.B, n_mtp = c->num_nextn_predict_layers;

    routestats rs;
    route_run run = { .rs = &rs, .m = &eng.m, .kv = &eng.kv, .tokens = tokens, .tok = tok, .trace = trace, .B = B, .Lt = Lt,
                      .explain = (int)explain };
    float *hidden = malloc(sizeof(float) * (size_t)B * H), *logits = malloc(sizeof(float) * (size_t)B * V);
    float *mtp_logits = malloc(sizeof(float) * (size_t)B * V);
    float *ex_main = NULL, *ex_mtp = NULL;
    int *next = malloc(sizeof(int) * (size_t)B), ex_next = -1, rc = 1;
    char path[4096];
    run.ex = calloc((size_t)Lt, sizeof *run.ex);
    if (trace) {
        run.lines_json = calloc((size_t)B * Lt, sizeof(char *));
        run.lines_text = calloc((size_t)B * Lt, sizeof(char *));
    }
    if (routestats_init(&rs, c, eng.m.K, (int)coact_layer, &err)) {
        fprintf(stderr, "moe route: %s\n", err.msg);
        free(hidden); free(logits); free(mtp_logits); free(next); free(run.ex);
        free(run.lines_json); free(run.lines_text);
        goto out_model;
    }
    if (!hidden || !logits || !mtp_logits || !next || !run.ex || (trace && (!run.lines_json || !run.lines_text))) {
        fprintf(stderr, "moe route: out of memory\n");
        goto done;
    }
    if (trace) {
        snprintf(path, sizeof path, "%s.trace.jsonl", prefix);
        if (!(run.trace_file = fopen(path, "w"))) { fprintf(stderr, "moe route: %s: cannot write\n", path); goto done; }
    }
    eng.c.on_route = on_route;
    eng.c.on_route_ctx = &run;

    /* prefill: windows of S positions, chunks of B tokens */
    double t0 = cli_now();
    for (int w0 = 0; w0 < T; w0 += S) {
        int n = T - w0 < S ? T - w0 : S;
        run.win0 = w0;
        for (int c0 = 0; c0 < n; c0 += B) {
            int nb = n - c0 < B ? n - c0 : B;
            int has_ex = explain >= w0 + c0 && explain < w0 + c0 + nb;
            run.chunk0 = c0;
            if (model_forward_seq(&eng.m, &eng.c, &eng.kv, 0, tokens + w0 + c0, nb, c0, logits, 1, hidden, &err)) goto fail;
            if (n_mtp) {
                for (int t = 0; t < nb; t++)
                    next[t] = w0 + c0 + t + 1 < T ? tokens[w0 + c0 + t + 1] : sampler_argmax(logits + (size_t)t * V, V);
                if (model_forward_mtp_seq(&eng.m, &eng.c, &eng.kv, 0, 0, hidden, next, nb, c0, mtp_logits, 1, NULL, &err)) goto fail;
            }
            if (has_ex) {
                int t = (int)explain - w0 - c0;
                ex_main = malloc(sizeof(float) * V);
                if (ex_main) memcpy(ex_main, logits + (size_t)t * V, sizeof(float) * V);
                if (n_mtp && (ex_mtp = malloc(sizeof(float) * V))) {
                    memcpy(ex_mtp, mtp_logits + (size_t)t * V, sizeof(float) * V);
                    ex_next = next[t];
                }
            }
            if (trace) trace_flush(&run, nb);
            if (run.fail) { fprintf(stderr, "moe route: out of memory\n"); goto done; }
        }
    }
    double secs = cli_now() - t0;

    /* outputs */
    snprintf(path, sizeof path, "%s.counts.csv", prefix);
    if (routestats_write_counts_csv(&rs, path, &err)) goto fail;
    snprintf(path, sizeof path, "%s.coact.csv", prefix);
    if (routestats_write_coact_csv(&rs, path, &err)) goto fail;
    {
        char meta[8192], name[4096];
        size_t k = 0;
        for (const char *p = dir; *p && k + 7 < sizeof name; p++) {   /* the directory as a JSON string */
            unsigned char ch = (unsigned char)*p;
            if (ch == '"' || ch == '\\') { name[k++] = '\\'; name[k++] = (char)ch; }
            else if (ch < 0x20) k += (size_t)snprintf(name + k, sizeof name - k, "\\u%04x", ch);
            else name[k++] = (char)ch;
        }
        name[k] = 0;
        snprintf(meta, sizeof meta,
                 "{\"model\": \"%s\", \"tokens\": %d, \"window\": %d, \"experts_per_token\": %d, "
                 "\"no_group_limit\": %s, \"no_route_bias\": %s, \"seconds\": %.3f}",
                 name, T, S, eng.m.K, opt.routing.no_group_limit ? "true" : "false",
                 opt.routing.no_route_bias ? "true" : "false", secs);
        snprintf(path, sizeof path, "%s.summary.json", prefix);
        if (routestats_write_summary_json(&rs, path, meta, &err)) goto fail;
    }
    {
        char title[512];
        snprintf(title, sizeof title, "%s: %d tokens, top-%d of %d experts%s%s", dir, T, eng.m.K, c->n_routed_experts,
                 opt.routing.no_group_limit ? ", no group limit" : "", opt.routing.no_route_bias ? ", no route bias" : "");
        snprintf(path, sizeof path, "%s.load.svg", prefix);
        if (routeplot_load_svg(&rs, c, title, path, &err)) goto fail;
        snprintf(path, sizeof path, "%s.coact.svg", prefix);
        if (routeplot_coact_svg(&rs, c, title, path, &err)) goto fail;
    }
    if (!quiet) print_table(&rs);
    if (explain >= 0) print_explain(&run, ex_main, ex_mtp, ex_next);
    fprintf(stderr, "moe route: %d tokens in %.2f s -> %s.{counts.csv,summary.json,coact.csv,load.svg,coact.svg%s}\n", T,
            secs, prefix, trace ? ",trace.jsonl" : "");
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "moe route: %s\n", err.msg);
done:
    if (run.trace_file && fclose(run.trace_file) && !rc) { fprintf(stderr, "moe route: trace write failed\n"); rc = 1; }
    if (run.lines_json)
        for (size_t i = 0; i < (size_t)B * Lt; i++) { free(run.lines_json[i]); free(run.lines_text[i]); }
    free(run.lines_json); free(run.lines_text);
    for (int l = 0; run.ex && l < Lt; l++) {
        explained_layer *e = &run.ex[l];
        free(e->scores); free(e->sel); free(e->group_scores); free(e->weights); free(e->ids); free(e->groups);
    }
    free(run.ex);
    free(hidden); free(logits); free(mtp_logits); free(next); free(ex_main); free(ex_mtp);
    routestats_free(&rs);
out_model:
    session_close(&eng);
    free(tokens);
    tokenizer_free(tok);
    return rc;
}
