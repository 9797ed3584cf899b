/* routestats.c - routing counters, load-balance metrics, CSV/JSON/trace writers
 * (see routestats.h for the definitions). */
#include "routestats.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ lifetime */

int routestats_init(routestats *rs, const moe_config *cfg, int K, int coact_layer, moe_error *err) {
    memset(rs, 0, sizeof *rs);
    if (cfg->n_routed_experts < 1) return moe_error_set(err, "this checkpoint has no routed experts (a dense model)");
    rs->L = cfg->num_hidden_layers;
    rs->Lt = cfg->num_hidden_layers + cfg->num_nextn_predict_layers;
    rs->E = cfg->n_routed_experts;
    rs->G = cfg->n_group > 0 ? cfg->n_group : 1;
    rs->K = K;
    rs->coact_layer = -1;
    if (K < 1 || K > rs->E) return moe_error_set(err, "experts per token = %d must be in [1, %d]", K, rs->E);
    if (coact_layer >= 0) {
        if (coact_layer >= rs->Lt)
            return moe_error_set(err, "co-activation layer %d is out of range: the model has layers 0..%d%s", coact_layer,
                                 rs->Lt - 1, rs->Lt > rs->L ? " (MTP included)" : "");
        if (!config_layer_is_moe(cfg, coact_layer)) {
            int first = -1;
            for (int l = 0; l < rs->Lt && first < 0; l++)
                if (config_layer_is_moe(cfg, l)) first = l;
            return moe_error_set(err, "co-activation layer %d is a dense layer, not MoE (the first MoE layer is %d)",
                                 coact_layer, first);
        }
    }
    size_t Lt = (size_t)rs->Lt, E = (size_t)rs->E, G = (size_t)rs->G;
    rs->is_moe = calloc(Lt, 1);
    rs->tokens = calloc(Lt, sizeof(int64_t));
    rs->counts = calloc(Lt * E, sizeof(int64_t));
    rs->group_kept = calloc(Lt * G, sizeof(int64_t));
    rs->group_used = calloc(Lt * G, sizeof(int64_t));
    rs->groups_sum = calloc(Lt, sizeof(int64_t));
    rs->groups_max = calloc(Lt, sizeof(int));
    rs->mass_sum = calloc(Lt, sizeof(double));
    rs->wsum_sum = calloc(Lt, sizeof(double));
    rs->overlap_sum = calloc(Lt, sizeof(double));
    rs->overlap_n = calloc(Lt, sizeof(int64_t));
    rs->prev_ids = calloc(Lt * (size_t)K, sizeof(int));
    rs->prev_pos = calloc(Lt, sizeof(int));
    rs->mark = calloc(E > G ? E : G, 1);
    if (coact_layer >= 0) rs->coact = calloc(E * E, sizeof(int64_t));
    if (!rs->is_moe || !rs->tokens || !rs->counts || !rs->group_kept || !rs->group_used || !rs->groups_sum ||
        !rs->groups_max || !rs->mass_sum || !rs->wsum_sum || !rs->overlap_sum || !rs->overlap_n || !rs->prev_ids || !rs->prev_pos ||
        !rs->mark || (coact_layer >= 0 && !rs->coact)) {
        routestats_free(rs);
        return moe_error_set(err, "out of memory for routing statistics (%d layers x %d experts)", (int)Lt, (int)E);
    }
    for (int l = 0; l < rs->Lt; l++) {
        rs->is_moe[l] = (unsigned char)config_layer_is_moe(cfg, l);
        rs->prev_pos[l] = -2;
    }
    rs->coact_layer = coact_layer;
    return MOE_OK;
}

void routestats_free(routestats *rs) {
    free(rs->is_moe); free(rs->tokens); free(rs->counts); free(rs->group_kept); free(rs->group_used);
    free(rs->groups_sum); free(rs->groups_max); free(rs->mass_sum); free(rs->wsum_sum); free(rs->overlap_sum); free(rs->overlap_n);
    free(rs->prev_ids); free(rs->prev_pos); free(rs->mark); free(rs->coact);
    memset(rs, 0, sizeof *rs);
}

void routestats_reset(routestats *rs) {
    size_t Lt = (size_t)rs->Lt, E = (size_t)rs->E, G = (size_t)rs->G;
    memset(rs->tokens, 0, Lt * sizeof(int64_t));
    memset(rs->counts, 0, Lt * E * sizeof(int64_t));
    memset(rs->group_kept, 0, Lt * G * sizeof(int64_t));
    memset(rs->group_used, 0, Lt * G * sizeof(int64_t));
    memset(rs->groups_sum, 0, Lt * sizeof(int64_t));
    memset(rs->groups_max, 0, Lt * sizeof(int));
    memset(rs->mass_sum, 0, Lt * sizeof(double));
    memset(rs->wsum_sum, 0, Lt * sizeof(double));
    memset(rs->overlap_sum, 0, Lt * sizeof(double));
    memset(rs->overlap_n, 0, Lt * sizeof(int64_t));
    for (int l = 0; l < rs->Lt; l++) rs->prev_pos[l] = -2;
    if (rs->coact) memset(rs->coact, 0, E * E * sizeof(int64_t));
}

/* ------------------------------------------------------------------ observer */

void routestats_observe(void *ctx, int layer, int pos, const route_decision *d) {
    routestats *rs = ctx;
    if (layer < 0 || layer >= rs->Lt || d->k != rs->K) return;
    int E = rs->E, K = rs->K, G = rs->G, gs = E / G;
    int64_t *cnt = rs->counts + (size_t)layer * E;
    rs->tokens[layer]++;
    double chosen = 0, all = 0, wsum = 0;
    for (int j = 0; j < K; j++) {
        cnt[d->ids[j]]++;
        chosen += d->scores[d->ids[j]];
        wsum += d->weights[j];
    }
    rs->wsum_sum[layer] += wsum;
    for (int e = 0; e < E; e++) all += d->scores[e];
    rs->mass_sum[layer] += all > 0 ? chosen / all : 0;
    /* groups: kept by the router, and actually used by the chosen experts */
    for (int i = 0; i < d->n_groups_kept; i++) rs->group_kept[(size_t)layer * G + d->groups[i]]++;
    memset(rs->mark, 0, (size_t)G);
    int used = 0;
    for (int j = 0; j < K; j++) {
        int g = d->ids[j] / gs;
        if (!rs->mark[g]) { rs->mark[g] = 1; used++; rs->group_used[(size_t)layer * G + g]++; }
    }
    rs->groups_sum[layer] += used;
    if (used > rs->groups_max[layer]) rs->groups_max[layer] = used;
    /* adjacent-token overlap */
    int *prev = rs->prev_ids + (size_t)layer * K;
    if (pos == rs->prev_pos[layer] + 1) {
        memset(rs->mark, 0, (size_t)E);
        for (int j = 0; j < K; j++) rs->mark[prev[j]] = 1;
        int same = 0;
        for (int j = 0; j < K; j++) same += rs->mark[d->ids[j]];
        rs->overlap_sum[layer] += (double)same / K;
        rs->overlap_n[layer]++;
    }
    memcpy(prev, d->ids, sizeof(int) * (size_t)K);
    rs->prev_pos[layer] = pos;
    /* co-activation */
    if (layer == rs->coact_layer)
        for (int a = 0; a < K; a++)
            for (int b = 0; b < K; b++) rs->coact[(size_t)d->ids[a] * E + d->ids[b]]++;
}

/* ------------------------------------------------------------------ metrics */

void routestats_load_metrics(const int64_t *counts, int E, int K, double *maxvio, double *cv, double *entropy,
                             double *jain, int *unused) {
    double sum = 0, sq = 0, mx = 0, ent = 0;
    int zero = 0;
    for (int e = 0; e < E; e++) {
        double c = (double)counts[e];
        sum += c;
        sq += c * c;
        if (c > mx) mx = c;
        if (counts[e] == 0) zero++;
    }
    *unused = zero;
    if (sum <= 0) { *maxvio = *cv = *entropy = *jain = 0; return; }
    double mean = sum / E;
    double var = sq / E - mean * mean;
    for (int e = 0; e < E; e++)
        if (counts[e] > 0) { double p = counts[e] / sum; ent -= p * log(p); }
    *maxvio = mx / mean - 1;
    *cv = sqrt(var > 0 ? var : 0) / mean;
    *entropy = E > 1 ? ent / log((double)E) : 1;
    *jain = sum * sum / (E * sq);
    (void)K;
}

void routestats_layer_metrics(const routestats *rs, int layer, routestats_layer *o) {
    memset(o, 0, sizeof *o);
    o->layer = layer;
    if (layer < 0 || layer >= rs->Lt) return;
    int E = rs->E;
    const int64_t *c = rs->counts + (size_t)layer * E;
    int64_t N = rs->tokens[layer];
    o->tokens = N;
    routestats_load_metrics(c, E, rs->K, &o->maxvio, &o->cv, &o->entropy, &o->jain, &o->unused);
    if (N > 0) {
        o->mass = rs->mass_sum[layer] / N;
        o->weight_sum = rs->wsum_sum[layer] / N;
        o->groups_mean = (double)rs->groups_sum[layer] / N;
    }
    o->groups_max = rs->groups_max[layer];
    o->overlap = rs->overlap_n[layer] ? rs->overlap_sum[layer] / rs->overlap_n[layer] : 0;
    o->max_count = o->min_count = c[0];
    for (int e = 1; e < E; e++) {
        if (c[e] > o->max_count) o->max_count = c[e];
        if (c[e] < o->min_count) o->min_count = c[e];
    }
    /* hottest: repeated selection of the largest count not yet taken (ties -> lower id) */
    int n = E < ROUTESTATS_HOT ? E : ROUTESTATS_HOT;
    for (int i = 0; i < n; i++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int j = 0; j < i; j++) taken |= o->hot[j] == e;
            if (!taken && (best < 0 || c[e] > c[best])) best = e;
        }
        o->hot[i] = best;
        o->hot_count[i] = c[best];
    }
    o->n_hot = N > 0 ? n : 0;
}

/* ------------------------------------------------------------------ files */

static FILE *open_out(const char *path, moe_error *err) {
    FILE *f = fopen(path, "w");
    if (!f) moe_error_set(err, "%s: cannot write: %s", path, strerror(errno));
    return f;
}

static int close_out(FILE *f, const char *path, moe_error *err) {
    int bad = ferror(f);
    if (fclose(f) || bad) return moe_error_set(err, "%s: write failed: %s", path, strerror(errno));
    return MOE_OK;
}

int routestats_write_counts_csv(const routestats *rs, const char *path, moe_error *err) {
    FILE *f = open_out(path, err);
    if (!f) return MOE_FAIL;
    fprintf(f, "layer_id,expert_id,count\n");
    for (int l = 0; l < rs->Lt; l++) {
        if (!rs->is_moe[l]) continue;
        for (int e = 0; e < rs->E; e++) fprintf(f, "%d,%d,%lld\n", l, e, (long long)rs->counts[(size_t)l * rs->E + e]);
    }
    return close_out(f, path, err);
}

int routestats_write_coact_csv(const routestats *rs, const char *path, moe_error *err) {
    if (!rs->coact) return moe_error_set(err, "%s: no co-activation layer was chosen", path);
    FILE *f = open_out(path, err);
    if (!f) return MOE_FAIL;
    fprintf(f, "expert_a,expert_b,count\n");
    for (int a = 0; a < rs->E; a++)
        for (int b = 0; b < rs->E; b++) fprintf(f, "%d,%d,%lld\n", a, b, (long long)rs->coact[(size_t)a * rs->E + b]);
    return close_out(f, path, err);
}

static void json_i64_array(FILE *f, const int64_t *x, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, i ? ",%lld" : "%lld", (long long)x[i]);
    fputc(']', f);
}

int routestats_write_summary_json(const routestats *rs, const char *path, const char *meta, moe_error *err) {
    FILE *f = open_out(path, err);
    if (!f) return MOE_FAIL;
    fprintf(f, "{\n  \"run\": %s,\n", meta ? meta : "{}");
    fprintf(f, "  \"experts\": %d, \"experts_per_token\": %d, \"groups\": %d, \"main_layers\": %d,\n", rs->E, rs->K,
            rs->G, rs->L);
    fprintf(f, "  \"coact_layer\": %d,\n  \"layers\": [", rs->coact_layer);
    int first = 1;
    for (int l = 0; l < rs->Lt; l++) {
        if (!rs->is_moe[l]) continue;
        routestats_layer m;
        routestats_layer_metrics(rs, l, &m);
        fprintf(f, "%s\n    {\"layer\": %d, \"mtp\": %s, \"tokens\": %lld, \"maxvio\": %.6g, \"cv\": %.6g, "
                   "\"entropy\": %.6g, \"jain\": %.6g, \"unused\": %d, \"overlap\": %.6g, \"topk_mass\": %.6g, "
                   "\"weight_sum\": %.6g, "
                   "\"groups_per_token\": %.6g, \"groups_per_token_max\": %d, \"max_count\": %lld, \"min_count\": %lld,\n"
                   "     \"hot\": [",
                first ? "" : ",", l, l >= rs->L ? "true" : "false", (long long)m.tokens, m.maxvio, m.cv, m.entropy,
                m.jain, m.unused, m.overlap, m.mass, m.weight_sum, m.groups_mean, m.groups_max, (long long)m.max_count,
                (long long)m.min_count);
        for (int i = 0; i < m.n_hot; i++)
            fprintf(f, "%s{\"expert\": %d, \"count\": %lld}", i ? ", " : "", m.hot[i], (long long)m.hot_count[i]);
        fprintf(f, "],\n     \"group_kept\": ");
        json_i64_array(f, rs->group_kept + (size_t)l * rs->G, rs->G);
        fprintf(f, ",\n     \"group_used\": ");
        json_i64_array(f, rs->group_used + (size_t)l * rs->G, rs->G);
        fprintf(f, ",\n     \"counts\": ");
        json_i64_array(f, rs->counts + (size_t)l * rs->E, rs->E);
        fputc('}', f);
        first = 0;
    }
    fprintf(f, "\n  ]\n}\n");
    return close_out(f, path, err);
}

/* ------------------------------------------------------------------ trace lines */

typedef struct { char *buf; size_t cap, len; } sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->len + 1 >= b->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n > 0) b->len = b->len + (size_t)n < b->cap ? b->len + (size_t)n : b->cap - 1;
}

/* A token's text, quoted: JSON escapes (json = 1) or C-like escapes for the terminal. */
static void sb_piece(sbuf *b, const char *s, int json) {
    sb_printf(b, json ? "\"" : "'");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' && json) sb_printf(b, "\\\"");
        else if (ch == '\\') sb_printf(b, "\\\\");
        else if (ch == '\n') sb_printf(b, "\\n");
        else if (ch == '\t') sb_printf(b, "\\t");
        else if (ch == '\r') sb_printf(b, "\\r");
        else if (ch < 0x20 || ch == 0x7f) sb_printf(b, json ? "\\u%04x" : "\\x%02x", ch);
        else sb_printf(b, "%c", ch);
    }
    sb_printf(b, json ? "\"" : "'");
}

static void sb_float(sbuf *b, float x) {
    if (isinf(x)) sb_printf(b, "null");
    else sb_printf(b, "%.6g", x);
}

int routestats_trace_json(char *buf, size_t cap, int layer, int pos, int token, const char *piece,
                          const route_decision *d) {
    sbuf b = { buf, cap, 0 };
    if (cap) buf[0] = 0;
    sb_printf(&b, "{\"pos\":%d,\"layer\":%d", pos, layer);
    if (token >= 0) sb_printf(&b, ",\"token\":%d", token);
    if (piece) { sb_printf(&b, ",\"text\":"); sb_piece(&b, piece, 1); }
    sb_printf(&b, ",\"groups\":[");
    for (int i = 0; i < d->n_groups_kept; i++) sb_printf(&b, i ? ",%d" : "%d", d->groups[i]);
    sb_printf(&b, "],\"experts\":[");
    for (int j = 0; j < d->k; j++) sb_printf(&b, j ? ",%d" : "%d", d->ids[j]);
    sb_printf(&b, "],\"weights\":[");
    for (int j = 0; j < d->k; j++) { if (j) sb_printf(&b, ","); sb_float(&b, d->weights[j]); }
    sb_printf(&b, "],\"margin\":");
    sb_float(&b, d->margin);
    sb_printf(&b, ",\"group_margin\":");
    sb_float(&b, d->n_groups_kept ? d->group_margin : INFINITY);
    sb_printf(&b, "}");
    return (int)b.len;
}

int routestats_trace_text(char *buf, size_t cap, int layer, int pos, int token, const char *piece,
                          const route_decision *d) {
    sbuf b = { buf, cap, 0 };
    if (cap) buf[0] = 0;
    sb_printf(&b, "pos %4d L%-2d ", pos, layer);
    if (piece) { sb_piece(&b, piece, 0); sb_printf(&b, " "); }
    else if (token >= 0) sb_printf(&b, "tok %d ", token);
    if (d->n_groups_kept) {
        sb_printf(&b, "| groups ");
        for (int i = 0; i < d->n_groups_kept; i++) sb_printf(&b, i ? ",%d" : "%d", d->groups[i]);
        sb_printf(&b, " ");
    }
    sb_printf(&b, "|");
    for (int j = 0; j < d->k; j++) sb_printf(&b, " %d:%.3f", d->ids[j], d->weights[j]);
    if (isinf(d->margin)) sb_printf(&b, " | margin -");
    else sb_printf(&b, " | margin %.4g", d->margin);
    return (int)b.len;
}
