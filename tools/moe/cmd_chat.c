/* cmd_chat.c - `moe chat`: a multi-turn conversation with the checkpoint's chat
 * template (tokenizer_config.json). Each turn re-renders the whole conversation;
 * the generator reuses the KV cache for the common prefix, so only the new
 * tokens are computed. Works at a terminal (a "> " prompt on stderr) and from a
 * pipe (one user message per line). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat.h"
#include "cli.h"
#include "cli_ep.h"
#include "commands.h"
#include "generate.h"
#include "genopts.h"
#include "tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe chat -m DIR [options]\n"
            "\n"
            "Reads one user message per line from standard input and answers each with the\n"
            "checkpoint's chat template. Empty line or /exit or end of input ends the chat.\n"
            "\n"
            "options:\n"
            "  -s, --system TEXT    a system message\n");
    genopts_usage(f);
    fprintf(f, "  -h, --help\n");
}

typedef struct { char *buf; size_t len, cap; int failed; } text_buf;

static int emit_reply(void *ctx, int id, const char *text, size_t len) {
    (void)id;
    text_buf *r = ctx;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    if (r->len + len + 1 > r->cap) {
        size_t cap = (r->len + len + 1) * 2;
        char *g = realloc(r->buf, cap);
        if (!g) { r->failed = 1; return 1; }
        r->buf = g;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, text, len);
    r->len += len;
    r->buf[r->len] = 0;
    return 0;
}

/* Length of the valid UTF-8 character at s[0..n), or 0 if it is not one. */
static size_t utf8_char_len(const unsigned char *s, size_t n) {
    size_t len = s[0] < 0x80 ? 1 : (s[0] >> 5) == 6 ? 2 : (s[0] >> 4) == 14 ? 3 : (s[0] >> 3) == 30 ? 4 : 0;
    if (!len || len > n || (len > 1 && s[0] < 0xC2) || (len == 4 && s[0] > 0xF4)) return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (len == 3 && ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] >= 0xA0))) return 0;
    if (len == 4 && ((s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] >= 0x90))) return 0;
    return len;
}

/* A reply may end mid-character or hold bytes that are no text (a model can emit
 * any byte token): the conversation keeps it with each such byte as U+FFFD. */
static char *utf8_sanitize(const char *text, size_t n) {
    char *out = malloc(3 * n + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_char_len((const unsigned char *)text + i, n - i);
        if (len) { memcpy(out + o, text + i, len); o += len; i += len; }
        else { memcpy(out + o, "\xEF\xBF\xBD", 3); o += 3; i++; }
    }
    out[o] = 0;
    return out;
}

int cmd_chat(int argc, char **argv) {
    genopts o;
    genopts_defaults(&o);
    const char *system_msg = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        int r = genopts_parse(&o, argc, argv, &i, "chat");
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(a, "-s") || !strcmp(a, "--system")) { if (!(system_msg = cli_value(argc, argv, &i, "chat"))) return 2; }
        else { fprintf(stderr, "moe chat: unknown option '%s' (see moe chat --help)\n", a); return 2; }
    }
    if (genopts_finish(&o, "chat")) return 2;

    moe_error err = {{0}};
    tokenizer *tok = NULL;
    moe_session e;
    int have_model = 0, rc = 1, interactive = isatty(0);
    sampler smp = {0};
    generator g = {0};
    chat_message *msgs = NULL;
    int n_msgs = 0, cap_msgs = 0;
    char *line = NULL;
    size_t line_cap = 0;
    if (model_tokenizer_load(&tok, o.model_dir, &err)) goto fail;
    if (!tokenizer_chat_template(tok)) {
        moe_error_set(&err, "%s: no chat_template (moe chat needs tokenizer_config.json with one)",
                      tokenizer_config_path(tok)[0] ? tokenizer_config_path(tok) : o.model_dir);
        goto fail;
    }
    if (cli_load_engine(&e, o.model_dir, &o.model, 1, "chat", !o.verbose)) goto done;
    have_model = 1;
    if (sampler_init(&smp, e.m.cfg.vocab_size, &o.sampling, &err) || generator_init(&g, &e.m, &e.c, &e.kv, 0, tok, &smp, &err)) goto fail;
    if (o.mtp) {
        size_t extra;
        if (generator_enable_mtp(&g, (mtp_mode)o.mtp, &extra, &err)) goto fail;
        if (o.draft_len && generator_set_draft_len(&g, o.draft_len, &err)) goto fail;
        char chain[32] = "";
        if (g.draft_len > 1) snprintf(chain, sizeof chain, ", --draft %d", g.draft_len);
        fprintf(stderr, "moe chat: --mtp (%s%s): speculative decoding with the MTP module (keeps hidden states: %.1f MiB)\n",
                o.mtp == MTP_ALWAYS ? "always" : "auto", chain, extra / 1048576.0);
    }
    cap_msgs = 16;
    msgs = malloc(sizeof *msgs * (size_t)cap_msgs);
    if (!msgs) { moe_error_set(&err, "out of memory"); goto fail; }
    if (system_msg) msgs[n_msgs++] = (chat_message){ "system", strdup(system_msg) };
    int total_gen = 0;
    double total_gen_s = 0;
    for (;;) {
        if (interactive) { fprintf(stderr, "> "); fflush(stderr); }
        ssize_t got = cli_ep_rank() == 0 ? getline(&line, &line_cap, stdin) : 0;
        cli_ep_bcast_line(&line, &line_cap, &got);   /* --ep: rank 0's input on every rank */
        if (got < 0) break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (got == 0 || !strcmp(line, "/exit")) break;
        if (n_msgs + 2 > cap_msgs) {
            chat_message *grown = realloc(msgs, sizeof *msgs * (size_t)(cap_msgs *= 2));
            if (!grown) { moe_error_set(&err, "out of memory"); goto fail; }
            msgs = grown;
        }
        msgs[n_msgs++] = (chat_message){ "user", utf8_sanitize(line, (size_t)got) };
        if (!msgs[n_msgs - 1].content) { moe_error_set(&err, "out of memory"); goto fail; }
        char *prompt = NULL;
        int *ids = NULL, n_ids = 0;
        if (chat_render_tokenizer(tok, msgs, n_msgs, 1, &prompt, &err)) goto fail;
        int erc = tokenizer_encode(tok, prompt, strlen(prompt), &ids, &n_ids, &err);
        free(prompt);
        if (erc) goto fail;
        if (n_ids + 1 > e.kv.S) {
            free(ids);
            moe_error_set(&err, "the conversation has %d tokens, more than the context of %d (raise --ctx)", n_ids, e.kv.S);
            goto fail;
        }
        int prc = generator_prompt(&g, ids, n_ids, &err);
        free(ids);
        if (prc) goto fail;
        text_buf reply = {0};
        int max_new = o.max_new < e.kv.S - n_ids ? o.max_new : e.kv.S - n_ids;
        if (generator_run(&g, max_new, emit_reply, &reply, &err) || reply.failed) { free(reply.buf); goto fail; }
        printf("\n");
        fflush(stdout);
        char *clean = utf8_sanitize(reply.buf ? reply.buf : "", reply.len);
        free(reply.buf);
        if (!clean) { moe_error_set(&err, "out of memory"); goto fail; }
        msgs[n_msgs++] = (chat_message){ "assistant", clean };
        total_gen += g.n_generated;
        total_gen_s += g.gen_seconds;
        if (o.verbose)
            fprintf(stderr, "[prompt: %d new tokens in %.2f s | reply: %d tokens, %.2f tokens/s]\n", g.n_prompt_computed,
                    g.prompt_seconds, g.n_generated, g.gen_seconds > 0 ? g.n_generated / g.gen_seconds : 0.0);
    }
    fprintf(stderr, "moe chat: %d turns, %d tokens generated (%.2f tokens per second)\n", n_msgs / 2, total_gen,
            total_gen_s > 0 ? total_gen / total_gen_s : 0.0);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "moe chat: %s\n", err.msg);
done:
    for (int i = 0; i < n_msgs; i++) free((char *)msgs[i].content);
    free(msgs);
    free(line);
    generator_free(&g);
    sampler_free(&smp);
    if (have_model) session_close(&e);
    tokenizer_free(tok);
    return rc;
}
