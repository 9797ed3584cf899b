/* cli.c - shared command-line helpers (see cli.h). */
#include "cli.h"
#include "cli_ep.h"

#include "numa_place.h"

#include "json_util.h"
#include "tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int cli_parse_ids(const char *s, int **out, moe_error *err) {
    int n = 0, cap = 16;
    int *ids = malloc(sizeof(int) * cap);
    if (!ids) { moe_error_set(err, "out of memory"); return -1; }
    const char *p = s;
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > 0x7fffffff) {
            free(ids);
            moe_error_set(err, "invalid token id list at \"%.20s\" (want comma-separated non-negative integers)", p);
            return -1;
        }
        if (n == cap) {
            int *g = realloc(ids, sizeof(int) * (cap *= 2));
            if (!g) { free(ids); moe_error_set(err, "out of memory"); return -1; }
            ids = g;
        }
        ids[n++] = (int)v;
        p = end;
        while (*p == ' ') p++;
        if (*p && *p != ',') {
            free(ids);
            moe_error_set(err, "invalid token id list at \"%.20s\" (want comma-separated non-negative integers)", p);
            return -1;
        }
    }
    *out = ids;
    return n;
}

const char *cli_value(int argc, char **argv, int *i, const char *cmd) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "moe %s: option %s needs a value\n", cmd, argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int cli_int(const char *s, long lo, long hi, const char *cmd, const char *opt, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "moe %s: %s must be an integer in [%ld, %ld], got \"%s\"\n", cmd, opt, lo, hi, s);
        return 0;
    }
    *out = v;
    return 1;
}

typedef struct { double t0; int shown; } load_clock;

static void load_progress(void *ctx, int done, int total) {
    load_clock *c = ctx;
    if (cli_now() - c->t0 < 1.0 && !c->shown) return;   /* only long loads show progress */
    if (done >= total && c->shown == 2) return;
    fprintf(stderr, "\rloading: %d/%d tensors", done, total);
    c->shown = 1;
    if (done >= total) { fprintf(stderr, "\n"); c->shown = 2; }
}

/* The MTP module's bytes (its block's matrices, every routed expert, and its head). */
static size_t mtp_module_bytes(const moe_model *m, size_t *head) {
    size_t b = 0;
    *head = 0;
    for (int l = m->cfg.num_hidden_layers; l < m->w.n_layers; l++) {
        const layer_weights *lw = &m->w.layers[l];
        const mat *x[] = {&lw->q_a, &lw->q_b, &lw->q, &lw->kv_a, &lw->kv_b, &lw->o, &lw->router, &lw->shared.gate,
                          &lw->shared.up, &lw->shared.down, &lw->eh_proj};
        for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) if (x[i]->data) b += mat_bytes(x[i]);
        for (int e = 0; lw->experts && e < m->cfg.n_routed_experts; e++)
            if (lw->experts[e].gate.data)
                b += mat_bytes(&lw->experts[e].gate) + mat_bytes(&lw->experts[e].up) + mat_bytes(&lw->experts[e].down);
        if (lw->mtp_head.data != m->w.lm_head.data) *head += mat_bytes(&lw->mtp_head);
    }
    return b + *head;
}

/* Whether some matrix is of a type whose SIMD products quantize the activations (Q4_0 and
 * Q5_0 per 32 to int8; Q4_K, Q5_K, Q6_K per 256 to q8_K): a change of numerics the load says. */
static int has_int8_activation_types(const moe_model *m) {
    if (!strcmp(cpu_kernel_name(), "scalar")) return 0;
    for (int l = 0; l < m->w.n_layers; l++) {
        const layer_weights *lw = &m->w.layers[l];
        const mat *x[] = {&lw->q_a, &lw->q_b, &lw->q, &lw->kv_a, &lw->kv_b, &lw->o, &lw->router, &lw->shared.gate,
                          &lw->shared.up, &lw->shared.down, &lw->dense.gate, &lw->dense.up, &lw->dense.down,
                          lw->experts ? &lw->experts[0].gate : NULL, lw->experts ? &lw->experts[0].down : NULL};
        for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) {
            if (!x[i] || !x[i]->data) continue;
            mat_dtype d = x[i]->dtype;
            if (d == MAT_Q4_0 || d == MAT_Q5_0 || mat_is_kquant(d)) return 1;
        }
    }
    return mat_is_kquant(m->w.lm_head.dtype) || m->w.lm_head.dtype == MAT_Q4_0 || m->w.lm_head.dtype == MAT_Q5_0;
}

int cli_load_engine(moe_session *e, const char *dir, const model_options *opt, int n_slots, const char *cmd, int quiet) {
    moe_error err = {{0}};
    double t0 = cli_now();
    load_clock clock = { t0, 0 };
    model_options o = *opt;
    moe_model *m = &e->m;
    if (!quiet && !o.progress) { o.progress = load_progress; o.progress_ctx = &clock; }
    cli_ep_load_options(&o, dir, cmd);   /* --ep: MPI up, this rank's experts only */
    if (session_open(e, dir, &o, n_slots, &err)) {
        if (cli_ep_on()) cli_ep_fail(cmd, err.msg);   /* every rank ends, not only this one */
        fprintf(stderr, "moe %s: %s\n", cmd, err.msg);
        return MOE_FAIL;
    }
    cli_ep_attach(e, dir, cmd);
    if (!quiet) {
        const moe_config *c = &m->cfg;
        char slots[32], copied[64] = "", panels[64] = "";
        snprintf(slots, sizeof slots, "%d slots x ", n_slots);
        if (m->w.bytes_copied)
            snprintf(copied, sizeof copied, " (%.1f MiB copied to huge pages)", m->w.bytes_copied / 1048576.0);
        if (m->w.n_q8_panels)   /* the same bytes, another order: what the kernels run */
            snprintf(panels, sizeof panels, " (%d Q8 matrices in 16-row panels)", m->w.n_q8_panels);
        fprintf(stderr,
                "model %s: %s, %d layers (+%d MTP), H=%d, %d heads, E=%d top-%d, V=%d | weights %s: %.1f MiB mapped, "
                "%.1f MiB converted%s%s | KV cache %s%d tokens x %zu B = %.1f MiB | kernels %s | load %.2f s\n",
                dir, c->model_type, c->num_hidden_layers, c->num_nextn_predict_layers, c->hidden_size,
                c->num_attention_heads, c->n_routed_experts, m->K, c->vocab_size, weights_dtype_name(o.dtype),
                m->w.bytes_mapped / 1048576.0, m->w.bytes_converted / 1048576.0, copied, panels, n_slots > 1 ? slots : "", e->kv.S,
                kv_bytes_per_token(&e->kv), e->kv.bytes / 1048576.0, cpu_kernel_name(), cli_now() - t0);
    }
    if (has_int8_activation_types(m))   /* even when quiet: the numerics differ from f32 activations */
        fprintf(stderr, "activations: products with Q4_0 / Q5_0 / Q4_K / Q5_K / Q6_K weights quantize x per block to int8, "
                        "as llama.cpp does (logits about 1e-2 from f32 activations; kernels/README.md)\n");
    if (o.draft_dtype != WEIGHTS_AUTO && o.draft_dtype != o.dtype && m->cfg.num_nextn_predict_layers > 0) {
        size_t head, b = mtp_module_bytes(m, &head);   /* even when quiet: it costs memory */
        fprintf(stderr, "--draft-dtype %s: the MTP module (drafts only) in %s: %.1f MiB, of which %.1f MiB are a head of "
                        "its own (else it shares lm_head)\n", weights_dtype_name(o.draft_dtype),
                weights_dtype_name(o.draft_dtype), b / 1048576.0, head / 1048576.0);
    }
    if (o.numa != NUMA_OFF) {   /* even when quiet: the user asked for placement */
        char line[2048];
        numa_plan_describe(&m->numa, line, sizeof line);
        fprintf(stderr, "%s\n", line);
    }
    return MOE_OK;
}

/* ------------------------------------------------------------------ text input */

static int file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    return 1;
}

int cli_input_tokens(const char *dir, const moe_config *cfg, const char *ids, const char *prompt, const char *file,
                     const char *cmd, int **tokens, int *n, struct tokenizer **tok) {
    moe_error err = {{0}};
    *tokens = NULL;
    *n = 0;
    *tok = NULL;
    if (!!ids + !!prompt + !!file != 1) {
        fprintf(stderr, "moe %s: give exactly one of -p TEXT, -f FILE or --tokens LIST\n", cmd);
        return MOE_FAIL;
    }
    if (ids) {
        int k = cli_parse_ids(ids, tokens, &err);
        if (k < 0) { fprintf(stderr, "moe %s: %s\n", cmd, err.msg); return MOE_FAIL; }
        if (k == 0) { free(*tokens); *tokens = NULL; fprintf(stderr, "moe %s: --tokens is empty\n", cmd); return MOE_FAIL; }
        *n = k;
        return MOE_OK;
    }
    char *text = NULL;
    size_t len = 0;
    if (file) {
        if (file_read_all(file, (size_t)1 << 31, &text, &len, &err)) {
            fprintf(stderr, "moe %s: %s\n", cmd, err.msg);
            return MOE_FAIL;
        }
    } else {
        len = strlen(prompt);
        text = malloc(len + 1);
        if (!text) { fprintf(stderr, "moe %s: out of memory\n", cmd); return MOE_FAIL; }
        memcpy(text, prompt, len + 1);
    }
    if (len == 0) {
        free(text);
        fprintf(stderr, "moe %s: the input text%s%s is empty: nothing to run\n", cmd, file ? " " : "", file ? file : "");
        return MOE_FAIL;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    int *body = NULL, nb = 0, bos = -1;
    if (file_exists(path) || weights_is_gguf(dir)) {
        if (model_tokenizer_load(tok, dir, &err) || tokenizer_encode(*tok, text, len, &body, &nb, &err)) {
            fprintf(stderr, "moe %s: %s\n", cmd, err.msg);
            free(text);
            tokenizer_free(*tok);
            *tok = NULL;
            return MOE_FAIL;
        }
        if (tokenizer_add_bos(*tok)) bos = tokenizer_bos_id(*tok);
    } else {
        if (cfg->vocab_size < 256) {
            fprintf(stderr, "moe %s: %s is missing and the vocabulary (%d) is too small for byte ids\n", cmd, path,
                    cfg->vocab_size);
            free(text);
            return MOE_FAIL;
        }
        fprintf(stderr, "note: %s not found: using the text's bytes as token ids (BOS %d first)\n", path,
                cfg->bos_token_id);
        body = malloc(sizeof(int) * len);
        if (body) for (size_t i = 0; i < len; i++) body[i] = (unsigned char)text[i];
        nb = (int)len;
        bos = cfg->bos_token_id;
    }
    free(text);
    int *all = body ? malloc(sizeof(int) * ((size_t)nb + 1)) : NULL;
    if (!all) {
        free(body);
        tokenizer_free(*tok);
        *tok = NULL;
        fprintf(stderr, "moe %s: out of memory\n", cmd);
        return MOE_FAIL;
    }
    int k = 0;
    if (bos >= 0) all[k++] = bos;
    memcpy(all + k, body, sizeof(int) * (size_t)nb);
    free(body);
    *tokens = all;
    *n = k + nb;
    return MOE_OK;
}

const char *cli_token_text(const struct tokenizer *tok, int id, char *buf, size_t cap) {
    if (!tok) {
        if (id >= 32 && id < 127) snprintf(buf, cap, "%c", id);
        else snprintf(buf, cap, "<%d>", id);
        return buf;
    }
    size_t len = 0;
    const char *b = tokenizer_token_bytes(tok, id, &len);
    if (!b) { snprintf(buf, cap, "<%d>", id); return buf; }
    if (len >= cap) len = cap - 1;
    memcpy(buf, b, len);
    buf[len] = 0;
    return buf;
}

/* ------------------------------------------------------------------ routing knobs */

int cli_route_knob(int argc, char **argv, int *i, const char *cmd, router_options *r) {
    const char *a = argv[*i], *v;
    long x;
    if (!strcmp(a, "--no-group-limit")) { r->no_group_limit = 1; return 1; }
    if (!strcmp(a, "--no-route-bias")) { r->no_route_bias = 1; return 1; }
    if (!strcmp(a, "--experts-per-token")) {
        if (!(v = cli_value(argc, argv, i, cmd)) || !cli_int(v, 1, 1 << 20, cmd, a, &x)) return -1;
        r->experts_per_token = (int)x;
        return 1;
    }
    return 0;
}

int cli_route_knobs_check(const moe_config *c, const router_options *r, const char *cmd) {
    const char *method = c->topk_method == TOPK_NOAUX_TC ? "noaux_tc"
                       : c->topk_method == TOPK_GROUP_LIMITED_GREEDY ? "group_limited_greedy" : "greedy";
    if (c->n_routed_experts < 1 && (r->experts_per_token || r->no_group_limit || r->no_route_bias)) {
        fprintf(stderr, "moe %s: this checkpoint has no routed experts: the routing options do not apply\n", cmd);
        return MOE_FAIL;
    }
    if (r->experts_per_token > c->n_routed_experts) {
        fprintf(stderr, "moe %s: --experts-per-token %d is larger than the %d experts of this model\n", cmd,
                r->experts_per_token, c->n_routed_experts);
        return MOE_FAIL;
    }
    if (r->experts_per_token)
        fprintf(stderr, "routing: using %d experts per token instead of %d (--experts-per-token)\n", r->experts_per_token,
                c->num_experts_per_tok);
    if (r->no_group_limit) {
        if (c->n_group > 1 && c->topk_method != TOPK_GREEDY)
            fprintf(stderr, "routing: choosing from all %d experts instead of the best %d of %d groups (--no-group-limit)\n",
                    c->n_routed_experts, c->topk_group, c->n_group);
        else
            fprintf(stderr, "routing: --no-group-limit is on, but this model's routing (%s, %d group%s) is not "
                            "group-limited: no change\n", method, c->n_group, c->n_group == 1 ? "" : "s");
    }
    if (r->no_route_bias) {
        if (c->topk_method == TOPK_NOAUX_TC)
            fprintf(stderr, "routing: choosing experts by the raw scores, without e_score_correction_bias (--no-route-bias)\n");
        else
            fprintf(stderr, "routing: --no-route-bias is on, but this model's routing (%s) has no selection bias: "
                            "no change\n", method);
    }
    return MOE_OK;
}

int cli_draft_dtype(const char *v, const char *cmd, weights_dtype *out) {
    int d = strcmp(v, "same") ? weights_dtype_parse(v) : WEIGHTS_AUTO;
    if (d < 0 || (strcmp(v, "same") && d == WEIGHTS_AUTO)) {
        fprintf(stderr, "moe %s: --draft-dtype must be same, f32, bf16, q8 or q4, got \"%s\"\n", cmd, v);
        return -1;
    }
    *out = (weights_dtype)d;
    return 0;
}

int cli_model_option(int argc, char **argv, int *i, const char *cmd, model_options *o) {
    const char *a = argv[*i], *v;
    long x;
    if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
        if (!(v = cli_value(argc, argv, i, cmd)) || !cli_int(v, 1, 1024, cmd, a, &x)) return -1;
        o->n_threads = (int)x;
        return 1;
    }
    if (!strcmp(a, "--batch")) {
        if (!(v = cli_value(argc, argv, i, cmd)) || !cli_int(v, 1, 65536, cmd, a, &x)) return -1;
        o->batch_max = (int)x;
        return 1;
    }
    if (!strcmp(a, "--dtype")) {
        if (!(v = cli_value(argc, argv, i, cmd))) return -1;
        int d = weights_dtype_parse(v);
        if (d < 0) { fprintf(stderr, "moe %s: --dtype must be auto, f32, bf16, q8 or q4\n", cmd); return -1; }
        o->dtype = (weights_dtype)d;
        return 1;
    }
    if (!strcmp(a, "--draft-dtype")) {
        if (!(v = cli_value(argc, argv, i, cmd))) return -1;
        return cli_draft_dtype(v, cmd, &o->draft_dtype) ? -1 : 1;
    }
    if (!strcmp(a, "--numa")) {
        if (!(v = cli_value(argc, argv, i, cmd))) return -1;
        int mode = numa_mode_parse(v);
        if (mode < 0) { fprintf(stderr, "moe %s: --numa must be off, interleave or partition\n", cmd); return -1; }
        o->numa = (numa_mode)mode;
        return 1;
    }
    if (!strcmp(a, "--act-lowp")) {
        cli_act_lowp(cmd);
        return 1;
    }
    if (!strcmp(a, "--mmap")) {
        o->mmap_in_place = 1;
        return 1;
    }
    if (!strcmp(a, "--kv-dtype")) {
        if (!(v = cli_value(argc, argv, i, cmd))) return -1;
        int d = kv_dtype_parse(v);
        if (d < 0) { fprintf(stderr, "moe %s: --kv-dtype must be f32 or bf16, not '%s'\n", cmd, v); return -1; }
        o->kv_dtype = (kv_dtype)d;
        if (d == KV_BF16)
            fprintf(stderr, "moe %s: --kv-dtype bf16: the latent cache holds bf16 values, half the bytes per position; "
                            "each cached value is rounded (about 4e-3 relative), attention sums in f32\n", cmd);
        return 1;
    }
    int k = cli_ep_option(argc, argv, i, cmd);
    if (k) return k;
    return cli_route_knob(argc, argv, i, cmd, &o->routing);
}

void cli_act_lowp(const char *cmd) {
    const cpu_features *f = cpu_get_features();
    cpu_set_low_precision(1);
    fprintf(stderr, "moe %s: --act-lowp: every product (decode, prefill, batches, MTP) rounds the activations to "
                    "%s%s%s (about 1e-3 relative error per product, kernels/README.md); a token gets the same bits "
                    "alone or in a batch\n", cmd,
            f->avx512_bf16 ? "bf16 for BF16 weights (vdpbf16ps)" : "",
            f->avx512_bf16 && (f->avx512_vnni || f->avx2_fma) ? " and " : "",
            f->avx512_vnni ? "int8 for Q8 weights (VNNI)" : f->avx2_fma ? "int8 for Q8 weights (AVX2)" : "");
}

void cli_model_options_usage(FILE *f) {
    fprintf(f,
            "  -t, --threads N      threads (default: one per core)\n"
            "  --dtype D            weight format: auto (as stored, default) | f32 | bf16 | q8 | q4 (Q4_K, heads Q8)\n"
            "  --batch N            tokens per forward chunk (default 64)\n"
            "  --draft-dtype D      the MTP module's format for --mtp drafts: same (default) | bf16 | q8 | q4\n"
            "                       (a head of its own in D: V x H more; verification stays exact)\n"
            "  --numa M             NUMA placement: off (default) | interleave | partition (README: --numa)\n"
            "  --act-lowp           bf16 / int8 activations (BF16 / Q8 weights) in every product: faster, less exact\n"
            "  --mmap               read weights stored in their compute format from the file mapping in place\n"
            "                       (default: copied into huge pages at load, the same bytes, faster decode)\n"
            "  --kv-dtype T         latent cache values: f32 (default, exact) | bf16 (half the cache bytes)\n"
            "  --experts-per-token K, --no-group-limit, --no-route-bias   routing experiments (each says it is on)\n");
    cli_ep_usage(f);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double cli_median(const double *x, int n) {
    double *c = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    if (!c || n <= 0) { free(c); return 0; }
    memcpy(c, x, sizeof(double) * (size_t)n);
    qsort(c, (size_t)n, sizeof(double), cmp_double);
    double m = n % 2 ? c[n / 2] : 0.5 * (c[n / 2 - 1] + c[n / 2]);
    free(c);
    return m;
}
