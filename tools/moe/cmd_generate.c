/* cmd_generate.c - `moe generate`: text from a prompt, streamed as it is
 * produced, with a llama.cpp-style timing summary on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "generate.h"
#include "genopts.h"
#include "json_util.h"
#include "tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe generate -m DIR (-p PROMPT | -f FILE) [options]\n"
            "\n"
            "Continues the prompt with the checkpoint in DIR, printing text as it is produced.\n"
            "The prompt starts with the tokenizer's BOS token (unless --no-bos).\n"
            "\n"
            "options:\n"
            "  -p, --prompt TEXT    the prompt\n"
            "  -f, --file FILE      read the prompt from FILE\n"
            "  --no-bos             do not prepend BOS\n"
            "  --truncate           keep the end of a prompt longer than the context (with a warning)\n");
    genopts_usage(f);
    fprintf(f, "  -h, --help\n");
}

static int emit_stdout(void *ctx, int id, const char *text, size_t len) {
    (void)ctx; (void)id;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

/* llama.cpp's summary lines: time, tokens, ms per token, tokens per second. */
static void print_timing(const generator *g, double load_s) {
    double pms = g->n_prompt_computed ? 1e3 * g->prompt_seconds / g->n_prompt_computed : 0;
    double gms = g->n_generated ? 1e3 * g->gen_seconds / g->n_generated : 0;
    fprintf(stderr, "\n");
    fprintf(stderr, "moe: load time        = %9.2f ms\n", 1e3 * load_s);
    fprintf(stderr, "moe: prompt eval time = %9.2f ms / %5d tokens (%8.2f ms per token, %9.2f tokens per second)\n",
            1e3 * g->prompt_seconds, g->n_prompt_computed, pms, pms > 0 ? 1e3 / pms : 0.0);
    fprintf(stderr, "moe:        eval time = %9.2f ms / %5d tokens (%8.2f ms per token, %9.2f tokens per second)\n",
            1e3 * g->gen_seconds, g->n_generated, gms, gms > 0 ? 1e3 / gms : 0.0);
    if (g->use_mtp) {
        const mtp_costs *c = &g->cost;
        fprintf(stderr, "moe: mtp: drafted %d, accepted %d (%.1f%%), %d verification steps, %ld plain steps, %ld drafts "
                        "not verified\n", g->n_drafted, g->n_accepted, g->n_drafted ? 100.0 * g->n_accepted / g->n_drafted : 0.0,
                g->n_steps, c->n_plain, c->skipped);
        if (c->n_plain && c->n_verify && c->n_draft)
            fprintf(stderr, "moe: mtp: costs: plain step %.2f ms, verification %.2f ms (x%.2f), draft %.2f ms (x%.2f): "
                            "%.2f ms per token speculating vs %.2f plain\n",
                    1e3 * mtp_cost_plain(c), 1e3 * c->verify_s / c->n_verify,
                    c->verify_s / c->n_verify / mtp_cost_plain(c), 1e3 * c->draft_s / c->n_draft,
                    c->draft_s / c->n_draft / mtp_cost_plain(c), 1e3 * mtp_cost_spec(c), 1e3 * mtp_cost_plain(c));
    }
}

int cmd_generate(int argc, char **argv) {
    genopts o;
    genopts_defaults(&o);
    const char *prompt = NULL, *file = NULL;
    int no_bos = 0, truncate = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        int r = genopts_parse(&o, argc, argv, &i, "generate");
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { if (!(prompt = cli_value(argc, argv, &i, "generate"))) return 2; }
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) { if (!(file = cli_value(argc, argv, &i, "generate"))) return 2; }
        else if (!strcmp(a, "--no-bos")) no_bos = 1;
        else if (!strcmp(a, "--truncate")) truncate = 1;
        else { fprintf(stderr, "moe generate: unknown option '%s' (see moe generate --help)\n", a); return 2; }
    }
    if (genopts_finish(&o, "generate")) return 2;
    if (!prompt == !file) { fprintf(stderr, "moe generate: give the prompt with -p TEXT or -f FILE\n"); return 2; }

    moe_error err = {{0}};
    char *file_text = NULL;
    size_t prompt_len;
    if (file) {
        if (file_read_all(file, 256u << 20, &file_text, &prompt_len, &err)) {
            fprintf(stderr, "moe generate: %s\n", err.msg);
            return 1;
        }
        prompt = file_text;
    } else {
        prompt_len = strlen(prompt);
    }
    tokenizer *tok = NULL;
    int *ids = NULL, n_ids = 0, rc = 1;
    moe_session e;
    int have_model = 0;
    sampler smp = {0};
    generator g = {0};
    double t0 = cli_now();
    if (model_tokenizer_load(&tok, o.model_dir, &err)) goto fail;
    int *text_ids;
    int n_text;
    if (tokenizer_encode(tok, prompt, prompt_len, &text_ids, &n_text, &err)) goto fail;
    int bos = no_bos ? -1 : tokenizer_bos_id(tok);
    ids = malloc(sizeof(int) * (size_t)(n_text + 1));
    if (!ids) { free(text_ids); moe_error_set(&err, "out of memory"); goto fail; }
    if (bos >= 0) ids[n_ids++] = bos;
    memcpy(ids + n_ids, text_ids, sizeof(int) * (size_t)n_text);
    n_ids += n_text;
    free(text_ids);
    if (cli_load_engine(&e, o.model_dir, &o.model, 1, "generate", !o.verbose)) goto done;
    have_model = 1;
    if (n_ids > e.kv.S) {
        if (!truncate) {
            moe_error_set(&err, "the prompt has %d tokens but the context holds %d (raise --ctx up to %d, or --truncate)",
                          n_ids, e.kv.S, e.m.cfg.max_position_embeddings);
            goto fail;
        }
        int keep = e.kv.S / 2;
        fprintf(stderr, "moe generate: warning: prompt of %d tokens truncated to its last %d (context %d)\n", n_ids, keep,
                e.kv.S);
        memmove(ids, ids + n_ids - keep, sizeof(int) * (size_t)keep);
        n_ids = keep;
    }
    if (sampler_init(&smp, e.m.cfg.vocab_size, &o.sampling, &err) || generator_init(&g, &e.m, &e.c, &e.kv, 0, tok, &smp, &err)) goto fail;
    if (o.mtp) {
        size_t extra;
        if (generator_enable_mtp(&g, (mtp_mode)o.mtp, &extra, &err)) goto fail;
        if (o.draft_len && generator_set_draft_len(&g, o.draft_len, &err)) goto fail;
        char chain[32] = "";
        if (g.draft_len > 1) snprintf(chain, sizeof chain, ", --draft %d", g.draft_len);
        fprintf(stderr, "moe generate: --mtp (%s%s): speculative decoding with the MTP module (keeps hidden states: %.1f MiB)\n",
                o.mtp == MTP_ALWAYS ? "always" : "auto", chain, extra / 1048576.0);
    }
    if (o.verbose) fprintf(stderr, "seed %llu, %d prompt tokens\n", (unsigned long long)o.sampling.seed, n_ids);
    double load_s = cli_now() - t0;
    fwrite(prompt, 1, prompt_len, stdout);
    fflush(stdout);
    if (generator_prompt(&g, ids, n_ids, &err)) goto fail;
    int max_new = o.max_new;
    if (generator_run(&g, max_new, emit_stdout, NULL, &err)) goto fail;
    printf("\n");
    print_timing(&g, load_s);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "moe generate: %s\n", err.msg);
done:
    generator_free(&g);
    sampler_free(&smp);
    if (have_model) session_close(&e);
    tokenizer_free(tok);
    free(ids);
    free(file_text);
    return rc;
}
