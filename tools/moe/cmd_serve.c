/* cmd_serve.c - `moe serve`: an OpenAI-compatible HTTP server that batches its users
 * (engine/serve/: serve_http.c the routes, serve_sched.c the slots and the engine
 * thread, serve_api.c the wire format), with a live page showing the routing. */
#include <arpa/inet.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "genopts.h"
#include "cli_ep.h"
#include "commands.h"
#include "serve_http.h"
#include "serve_sched.h"
#include "tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe serve -m DIR [options]\n"
            "\n"
            "Serves the checkpoint in DIR over HTTP with the OpenAI API (POST /v1/chat/completions,\n"
            "/v1/completions, GET /v1/models, /health, /metrics, /tokenize, /detokenize) and a page at /\n"
            "that chats and shows each generated token's routing. Up to --parallel requests run at once,\n"
            "their tokens in the same forward passes; more wait in a queue. Ctrl-C or SIGTERM stops it.\n"
            "\n"
            "options:\n"
            "  -m, --model DIR      the checkpoint\n"
            "  --host ADDR          bind address (default 127.0.0.1: this machine only; 0.0.0.0 for all)\n"
            "  --port N             port (default 8080; 0 = any free port, printed on stderr)\n"
            "  --parallel N         sequence slots: requests generated at once (default 4)\n"
            "  --ctx S              context per slot in tokens (default: min(max_position_embeddings, 4096))\n"
            "  --queue N            requests waiting beyond the slots before 503 (default 64)\n"
            "  --api-key KEY        every API route wants 'Authorization: Bearer KEY' (default: none)\n"
            "  --max-body BYTES     largest request body (default 4194304)\n"
            "  --timeout SEC        seconds a client has to send its request (default 30)\n"
            "  --name NAME          the model id /v1/models lists (default: the directory's name)\n"
            "  --mtp                speculative decoding: each decoding slot's MTP draft is verified in the\n"
            "                       batched pass (greedy output is unchanged); auto: only in steps where\n"
            "                       that is faster, measured as it serves (engine/serve/serve_mtp_auto.h)\n"
            "  --mtp-mode M         auto (the default of --mtp) | always (draft every step); implies --mtp\n"
            "  -q, --quiet          no model summary and no request log on stderr\n"
            "  --ep, --ep-plan FILE under mpirun: rank 0 serves HTTP and schedules, the other ranks run the\n"
            "                       same passes with their experts (docs/ep.md; not with --mtp)\n");
    cli_model_options_usage(f);
    fprintf(f, "  -h, --help\n");
}

static void log_line(void *ctx, const char *line) {
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%02d:%02d:%02d serve: %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec, line);
}

static const char *base_name(const char *dir, char *buf, size_t cap) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t s = n;
    while (s > 0 && dir[s - 1] != '/') s--;
    snprintf(buf, cap, "%.*s", (int)(n - s), dir + s);
    return buf;
}

int cmd_serve(int argc, char **argv) {
    const char *dir = NULL, *host = "127.0.0.1", *api_key = NULL, *name = NULL;
    long port = 8080, parallel = 4, ctx = 0, queue = 64, max_body = 4 << 20, timeout = 30;
    int quiet = 0, mtp = 0;
    model_options mo = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        int r = cli_model_option(argc, argv, &i, "serve", &mo);
        if (r < 0) return 2;
        if (r > 0) continue;
#define VAL() do { if (!(v = cli_value(argc, argv, &i, "serve"))) return 2; } while (0)
#define INT(lo, hi, dst) do { VAL(); if (!cli_int(v, lo, hi, "serve", a, &dst)) return 2; } while (0)
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { VAL(); dir = v; }
        else if (!strcmp(a, "--host")) { VAL(); host = v; }
        else if (!strcmp(a, "--port")) INT(0, 65535, port);
        else if (!strcmp(a, "--parallel") || !strcmp(a, "-np")) INT(1, 64, parallel);
        else if (!strcmp(a, "--ctx") || !strcmp(a, "-c")) INT(1, 1 << 24, ctx);
        else if (!strcmp(a, "--queue")) INT(1, 1 << 20, queue);
        else if (!strcmp(a, "--max-body")) INT(16, 1L << 30, max_body);
        else if (!strcmp(a, "--timeout")) INT(1, 86400, timeout);
        else if (!strcmp(a, "--api-key")) { VAL(); api_key = v; }
        else if (!strcmp(a, "--name")) { VAL(); name = v; }
        else if (!strcmp(a, "--mtp")) { if (!mtp) mtp = MTP_AUTO; }
        else if (!strcmp(a, "--mtp-mode")) { VAL(); if (genopts_mtp_mode(v, "serve", &mtp)) return 2; }
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) quiet = 1;
        else { fprintf(stderr, "moe serve: unknown option '%s' (see moe serve --help)\n", a); return 2; }
#undef INT
#undef VAL
    }
    if (!dir) { fprintf(stderr, "moe serve: -m DIR is required (see moe serve --help)\n"); return 2; }
    if (cli_ep_on() && mtp) {
        fprintf(stderr, "moe serve: --mtp with --ep is not supported yet (the drafts' inputs are rank 0's hidden states)\n");
        return 2;
    }
    struct in6_addr a6;
    if (strcmp(host, "localhost") && inet_pton(AF_INET, host, &a6) != 1 && inet_pton(AF_INET6, host, &a6) != 1) {
        fprintf(stderr, "moe serve: --host '%s' is not an IPv4 or IPv6 address (e.g. 127.0.0.1, 0.0.0.0, ::1)\n", host);
        return 2;
    }
    if (api_key && !*api_key) { fprintf(stderr, "moe serve: --api-key is empty\n"); return 2; }
    mo.max_seq = (int)ctx;

    /* the signals are taken by sigwait below; every thread started from here blocks them */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    moe_error err = {{0}};
    tokenizer *tok = NULL;
    moe_session e;
    serve_sched *sched = NULL;
    serve_http *http = NULL;
    int rc = 1, have_model = 0;
    char tpath[PATH_MAX];
    snprintf(tpath, sizeof tpath, "%s/tokenizer.json", dir);
    if (!weights_is_gguf(dir) && access(tpath, F_OK)) {   /* a random test checkpoint: token ids only */
        fprintf(stderr, "moe serve: note: %s has no tokenizer.json: /v1/completions takes token ids only\n", dir);
    } else if (model_tokenizer_load(&tok, dir, &err)) {
        goto fail;
    }
    if (cli_load_engine(&e, dir, &mo, (int)parallel, "serve", quiet)) goto done;
    have_model = 1;
    if (cli_ep_rank() > 0) {   /* --ep: rank 0 serves; this rank runs its passes until it stops */
        rc = cli_ep_serve_follow(&e, e.c.B);
        goto done;
    }
    sched_options so = {(int)parallel, (int)queue, mo.batch_max, mtp, cli_ep_serve_leader(e.c.B)};
    if (sched_start(&sched, &e.m, &e.c, &e.kv, tok, &so, &err)) goto fail;
    char nbuf[256];
    serve_http_options ho = {host, (int)port, api_key, (size_t)max_body, (int)timeout,
                             name ? name : base_name(dir, nbuf, sizeof nbuf), (int)parallel,
                             quiet ? NULL : log_line, NULL};
    if (serve_http_start(&http, sched, &e.m, tok, &ho, &err)) goto fail;
    int bound = serve_http_port(http);
    fprintf(stderr, "moe serve: listening on http://%s:%d/ (%ld slots x %d tokens, batch %d, queue %ld%s%s); Ctrl-C stops\n",
            strchr(host, ':') ? "[::1]" : host, bound, parallel, e.kv.S, so.batch > 0 && so.batch < e.c.B ? so.batch : e.c.B, queue,
            mtp == MTP_ALWAYS ? ", MTP drafts every step" : mtp ? ", MTP drafts where they pay (auto)" : "", api_key ? ", API key required" : "");
    if (cli_ep_on())
        fprintf(stderr, "moe serve: --ep: rank 0 of %d (pid %d) serves, ranks 1..%d follow its passes\n", cli_ep_size(),
                (int)getpid(), cli_ep_size() - 1);
    fprintf(stderr, "moe serve: port %d\n", bound);
    fflush(stderr);
    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "moe serve: %s: finishing the running requests and stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    serve_http_quiesce(http);
    sched_stop(sched);        /* every request gets its final chunk */
    cli_ep_serve_stop();      /* --ep: the other ranks stop too */
    serve_http_stop(http);    /* joins the connection threads */
    http = NULL;
    rc = 0;
    goto done;
fail:
    if (have_model && cli_ep_on()) cli_ep_fail("serve", err.msg);   /* the followers would wait for ever */
    fprintf(stderr, "moe serve: %s\n", err.msg);
done:
    serve_http_stop(http);
    sched_free(sched);
    if (have_model) session_close(&e);
    tokenizer_free(tok);
    if (rc == 0) fprintf(stderr, "moe serve: stopped\n");
    return rc;
}
