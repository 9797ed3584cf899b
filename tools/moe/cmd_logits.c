/* cmd_logits.c - `moe logits`: run token ids through a checkpoint and write
 * logits, MTP logits and routing decisions as safetensors, with the tensor names
 * that tools/reference/ref.py --save writes, so the two compare directly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_ep.h"
#include "commands.h"
#include "model.h"
#include "safetensors.h"
#include "sampler.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe logits -m DIR --tokens 5,17,300 -o OUT.safetensors [options]\n"
            "\n"
            "Runs the token ids through the checkpoint in DIR and writes OUT with\n"
            "  tokens I32[T], logits F32[T,V], mtp.tokens I32[T] and mtp.logits F32[T,V] (if the model has MTP;\n"
            "  position t is fed token t+1, the last position the main head's greedy choice),\n"
            "  routing.{i}.ids I32[T,K] and routing.{i}.weights F32[T,K] for every MoE layer i\n"
            "  (the MTP block is i = num_hidden_layers).\n"
            "\n"
            "options:\n"
            "  -m, --model DIR        checkpoint directory (config.json + safetensors)\n"
            "  --tokens LIST          comma-separated token ids\n"
            "  -o, --out FILE         output .safetensors\n"
            "  --mode prefill|decode  all tokens in one pass (default), or one at a time through the cache\n"
            "  --attn absorb|naive    MLA implementation (default absorb)\n"
            "  -h, --help\n");
    cli_model_options_usage(f);
}

typedef struct {
    int T, K, L_total;
    int *ids;        /* [L_total, T, K] */
    float *weights;  /* [L_total, T, K] */
    unsigned char *seen;  /* [L_total] */
} route_record;

static void record_route(void *ctx, int layer, int seq, int pos, const route_decision *d) {
    route_record *r = ctx;
    if (layer >= r->L_total || pos >= r->T) return;
    r->seen[layer] = 1;
    size_t off = ((size_t)layer * r->T + pos) * r->K;
    memcpy(r->ids + off, d->ids, sizeof(int) * (size_t)r->K);
    memcpy(r->weights + off, d->weights, sizeof(float) * (size_t)r->K);
}

int cmd_logits(int argc, char **argv) {
    const char *dir = NULL, *tokens_arg = NULL, *out = NULL, *mode = "prefill";
    model_options opt = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        int k = cli_model_option(argc, argv, &i, "logits", &opt);
        if (k < 0) return 2;
        if (k) continue;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(dir = cli_value(argc, argv, &i, "logits"))) return 2; }
        else if (!strcmp(a, "--tokens")) { if (!(tokens_arg = cli_value(argc, argv, &i, "logits"))) return 2; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--out")) { if (!(out = cli_value(argc, argv, &i, "logits"))) return 2; }
        else if (!strcmp(a, "--mode")) { if (!(mode = cli_value(argc, argv, &i, "logits"))) return 2; }
        else if (!strcmp(a, "--attn")) {
            if (!(v = cli_value(argc, argv, &i, "logits"))) return 2;
            if (!strcmp(v, "naive")) opt.attn = ATTN_NAIVE;
            else if (strcmp(v, "absorb")) { fprintf(stderr, "moe logits: --attn must be absorb or naive\n"); return 2; }
        } else {
            fprintf(stderr, "moe logits: unknown option '%s' (see moe logits --help)\n", a);
            return 2;
        }
    }
    if (!dir || !tokens_arg || !out) {
        fprintf(stderr, "moe logits: -m DIR, --tokens LIST and -o OUT are required (see moe logits --help)\n");
        return 2;
    }
    int decode = !strcmp(mode, "decode");
    if (!decode && strcmp(mode, "prefill")) { fprintf(stderr, "moe logits: --mode must be prefill or decode\n"); return 2; }
    moe_error err = {{0}};
    int *tokens = NULL;
    int T = cli_parse_ids(tokens_arg, &tokens, &err);
    if (T <= 0) {
        fprintf(stderr, "moe logits: %s\n", T < 0 ? err.msg : "--tokens is empty");
        free(tokens);
        return 1;
    }
    opt.max_seq = T;
    moe_session e;
    if (cli_load_engine(&e, dir, &opt, 1, "logits", 1)) { free(tokens); return 1; }
    if (cli_ep_rank() > 0) out = "/dev/null";   /* --ep: rank 0 writes the file */
    const moe_config *c = &e.m.cfg;
    int V = c->vocab_size, H = c->hidden_size, n_mtp = c->num_nextn_predict_layers;
    int L_total = c->num_hidden_layers + n_mtp, K = e.m.K > 0 ? e.m.K : 1;
    route_record rec = { T, K, L_total, calloc((size_t)L_total * T * K, sizeof(int)),
                         calloc((size_t)L_total * T * K, sizeof(float)), calloc((size_t)L_total, 1) };
    float *logits = malloc(sizeof(float) * (size_t)T * V), *hidden = malloc(sizeof(float) * (size_t)T * H);
    float *mtp_logits = n_mtp ? malloc(sizeof(float) * (size_t)T * V) : NULL;
    int *mtp_tokens = malloc(sizeof(int) * (size_t)T);
    int rc = 1;
    if (!rec.ids || !rec.weights || !rec.seen || !logits || !hidden || (n_mtp && !mtp_logits) || !mtp_tokens) {
        fprintf(stderr, "moe logits: out of memory\n");
        goto done;
    }
    e.c.on_route = record_route;
    e.c.on_route_ctx = &rec;
    /* main model */
    if (decode) {
        for (int t = 0; t < T; t++)
            if (model_forward_seq(&e.m, &e.c, &e.kv, 0, tokens + t, 1, t, logits + (size_t)t * V, 1, hidden + (size_t)t * H, &err)) goto fail;
    } else if (model_forward_seq(&e.m, &e.c, &e.kv, 0, tokens, T, 0, logits, 1, hidden, &err)) {
        goto fail;
    }
    /* MTP: position t gets (hidden_t, token t+1); the last position the greedy next token */
    if (n_mtp) {
        for (int t = 0; t + 1 < T; t++) mtp_tokens[t] = tokens[t + 1];
        mtp_tokens[T - 1] = sampler_argmax(logits + (size_t)(T - 1) * V, V);
        if (decode) {
            for (int t = 0; t < T; t++)
                if (model_forward_mtp_seq(&e.m, &e.c, &e.kv, 0, 0, hidden + (size_t)t * H, mtp_tokens + t, 1, t, mtp_logits + (size_t)t * V, 1,
                                      NULL, &err))
                    goto fail;
        } else if (model_forward_mtp_seq(&e.m, &e.c, &e.kv, 0, 0, hidden, mtp_tokens, T, 0, mtp_logits, 1, NULL, &err)) {
            goto fail;
        }
    }
    /* write */
    {
        int max_t = 4 + 2 * L_total, nt = 0;
        st_write_tensor *wt = calloc((size_t)max_t, sizeof *wt);
        char (*names)[64] = calloc((size_t)max_t, 64);
        if (!wt || !names) { free(wt); free(names); fprintf(stderr, "moe logits: out of memory\n"); goto done; }
        wt[nt++] = (st_write_tensor){ "tokens", ST_I32, 1, {T}, tokens };
        wt[nt++] = (st_write_tensor){ "logits", ST_F32, 2, {T, V}, logits };
        if (n_mtp) {
            wt[nt++] = (st_write_tensor){ "mtp.tokens", ST_I32, 1, {T}, mtp_tokens };
            wt[nt++] = (st_write_tensor){ "mtp.logits", ST_F32, 2, {T, V}, mtp_logits };
        }
        for (int l = 0; l < L_total; l++) {
            if (!rec.seen[l]) continue;
            snprintf(names[nt], 64, "routing.%d.ids", l);
            wt[nt] = (st_write_tensor){ names[nt], ST_I32, 2, {T, K}, rec.ids + (size_t)l * T * K };
            nt++;
            snprintf(names[nt], 64, "routing.%d.weights", l);
            wt[nt] = (st_write_tensor){ names[nt], ST_F32, 2, {T, K}, rec.weights + (size_t)l * T * K };
            nt++;
        }
        int wrc = st_write(out, wt, nt, &err);
        free(wt);
        free(names);
        if (wrc) goto fail;
    }
    fprintf(stderr, "moe logits: %d tokens (%s, %s attention) -> %s\n", T, decode ? "decode" : "prefill",
            opt.attn == ATTN_NAIVE ? "naive" : "absorbed", out);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "moe logits: %s\n", err.msg);
done:
    free(rec.ids); free(rec.weights); free(rec.seen);
    free(logits); free(hidden); free(mtp_logits); free(mtp_tokens); free(tokens);
    session_close(&e);
    return rc;
}
