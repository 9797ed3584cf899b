/* serve_load.c - load generator for `moe serve`: C concurrent streaming clients.
 *
 *   make build/bench/serve_load
 *   build/bench/serve_load --port 8080 [--host 127.0.0.1] [-c 1,4,8,16] [-r 4] [-n 64]
 *                          [--prompt TEXT | --ids 1,2,3] [--chat] [--api-key KEY] [--extra JSON]
 * (--ids: the prompt as token ids, for checkpoints without a tokenizer; --extra: more
 * members for every request body, e.g. '"logit_bias":[[0,false]]')
 *
 * For each concurrency C in the list: C client threads, each sending -r streamed requests
 * one after another (POST /v1/completions, or /v1/chat/completions with --chat, temperature
 * 0.8, seed per request, max_tokens -n, stream_options.include_usage). Prints per level:
 * requests, generated tokens (the usage chunk's completion_tokens), aggregate tokens/s
 * (all tokens / wall time), per-user tokens/s (mean over requests of tokens after the
 * first / time after the first), time to first token p50 / p90 / p99.
 *
 * Plain sockets, HTTP/1.0 (the server then sends the stream unchunked and closes).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    double ttft;       /* seconds from sending to the first token chunk */
    double total;      /* seconds from sending to the end */
    int tokens;        /* completion_tokens */
    int ok;
} result;

static const char *g_host = "127.0.0.1", *g_prompt = "Once upon a time", *g_key = NULL, *g_ids = NULL, *g_extra = NULL;
static int g_port = 8080, g_reqs = 4, g_max = 64, g_chat = 0;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One streamed request; fills r. */
static void one_request(int seed, result *r) {
    memset(r, 0, sizeof *r);
    char body[16384], req[20480], auth[512] = "", extra[8192] = "";
    if (g_extra && *g_extra) snprintf(extra, sizeof extra, ",%s", g_extra);
    if (g_chat)
        snprintf(body, sizeof body,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],\"max_tokens\":%d,\"temperature\":0.8,"
                 "\"seed\":%d,\"stream\":true,\"stream_options\":{\"include_usage\":true}%s}", g_prompt, g_max, seed, extra);
    else if (g_ids)
        snprintf(body, sizeof body,
                 "{\"prompt\":[%s],\"max_tokens\":%d,\"temperature\":0.8,\"seed\":%d,\"stream\":true,"
                 "\"stream_options\":{\"include_usage\":true}%s}", g_ids, g_max, seed, extra);
    else
        snprintf(body, sizeof body,
                 "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0.8,\"seed\":%d,\"stream\":true,"
                 "\"stream_options\":{\"include_usage\":true}%s}", g_prompt, g_max, seed, extra);
    if (g_key) snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", g_key);
    int n = snprintf(req, sizeof req,
                     "POST %s HTTP/1.0\r\nHost: %s\r\nContent-Type: application/json\r\n%sContent-Length: %zu\r\n\r\n%s",
                     g_chat ? "/v1/chat/completions" : "/v1/completions", g_host, auth, strlen(body), body);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)g_port);
    inet_pton(AF_INET, g_host, &a.sin_addr);
    double t0 = now_s();
    if (connect(fd, (struct sockaddr *)&a, sizeof a) || write(fd, req, (size_t)n) != n) { close(fd); return; }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 4096 > cap) {
            char *b = realloc(buf, cap *= 2);
            if (!b) break;
            buf = b;
        }
        ssize_t k = read(fd, buf + len, cap - len - 1);
        if (k <= 0) break;
        len += (size_t)k;
        buf[len] = 0;
        if (!r->ttft && strstr(buf, "\"finish_reason\":null")) r->ttft = now_s() - t0;
    }
    r->total = now_s() - t0;
    close(fd);
    buf[len] = 0;
    const char *u = strstr(buf, "\"completion_tokens\":");
    if (!strncmp(buf, "HTTP/1.0 200", 12) || !strncmp(buf, "HTTP/1.1 200", 12)) {
        if (u) { r->tokens = atoi(u + 20); r->ok = 1; }
        else fprintf(stderr, "serve_load: a stream ended without its usage chunk: ...%s\n", len > 200 ? buf + len - 200 : buf);
    } else {
        fprintf(stderr, "serve_load: %.*s\n", (int)(strchr(buf, '\n') ? strchr(buf, '\n') - buf : (long)len), buf);
    }
    if (!r->ttft) r->ttft = r->total;
    free(buf);
}

typedef struct {
    int id;
    result *res;   /* [g_reqs] */
} client;

static void *client_main(void *arg) {
    client *c = arg;
    for (int i = 0; i < g_reqs; i++) one_request(c->id * 1000 + i, &c->res[i]);
    return NULL;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p) {
    if (n == 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    int i = (int)(p * (n - 1) + 0.5);
    return v[i];
}

int main(int argc, char **argv) {
    const char *levels = "1,4,8,16";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            printf("usage: serve_load --port N [--host 127.0.0.1] [-c 1,4,8,16] [-r REQS_PER_CLIENT] [-n MAX_TOKENS]\n"
                   "                  [--prompt TEXT | --ids 1,2,3] [--chat] [--api-key KEY] [--extra JSON]\n"
                   "  --extra JSON: more members for every request body, e.g. '\"logit_bias\":[[0,false]]'\n");
            return 0;
        }
        if (!strcmp(a, "--chat")) { g_chat = 1; continue; }
        if (!v) { fprintf(stderr, "serve_load: %s needs a value\n", a); return 2; }
        if (!strcmp(a, "--host")) g_host = v;
        else if (!strcmp(a, "--port")) g_port = atoi(v);
        else if (!strcmp(a, "-c")) levels = v;
        else if (!strcmp(a, "-r")) g_reqs = atoi(v);
        else if (!strcmp(a, "-n")) g_max = atoi(v);
        else if (!strcmp(a, "--prompt")) g_prompt = v;
        else if (!strcmp(a, "--api-key")) g_key = v;
        else if (!strcmp(a, "--ids")) g_ids = v;
        else if (!strcmp(a, "--extra")) {
            if (strlen(v) > 8000) { fprintf(stderr, "serve_load: --extra is longer than 8000 bytes\n"); return 2; }
            g_extra = v;
        }
        else { fprintf(stderr, "serve_load: unknown option %s\n", a); return 2; }
        i++;
    }
    if (g_port <= 0 || g_reqs < 1 || g_max < 1) { fprintf(stderr, "serve_load: bad --port, -r or -n\n"); return 2; }
    printf("| clients | requests | tokens | aggregate tok/s | per-user tok/s | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | failed |\n");
    printf("|--------:|---------:|-------:|----------------:|---------------:|------------:|------------:|------------:|-------:|\n");
    char *lv = strdup(levels), *save = NULL;
    for (char *t = strtok_r(lv, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int C = atoi(t);
        if (C < 1) continue;
        client *cl = calloc((size_t)C, sizeof *cl);
        pthread_t *th = calloc((size_t)C, sizeof *th);
        double t0 = now_s();
        for (int i = 0; i < C; i++) {
            cl[i].id = i + 1;
            cl[i].res = calloc((size_t)g_reqs, sizeof(result));
            pthread_create(&th[i], NULL, client_main, &cl[i]);
        }
        for (int i = 0; i < C; i++) pthread_join(th[i], NULL);
        double wall = now_s() - t0;
        int nreq = C * g_reqs, ok = 0;
        long tokens = 0;
        double *ttft = calloc((size_t)nreq, sizeof(double)), user = 0;
        for (int i = 0; i < C; i++)
            for (int j = 0; j < g_reqs; j++) {
                result *r = &cl[i].res[j];
                if (!r->ok) continue;
                tokens += r->tokens;
                ttft[ok] = r->ttft;
                if (r->tokens > 1 && r->total > r->ttft) user += (r->tokens - 1) / (r->total - r->ttft);
                ok++;
            }
        double p50 = pct(ttft, ok, 0.5), p90 = pct(ttft, ok, 0.9), p99 = pct(ttft, ok, 0.99);
        printf("| %7d | %8d | %6ld | %15.1f | %14.1f | %11.1f | %11.1f | %11.1f | %6d |\n", C, nreq, tokens, tokens / wall,
               ok ? user / ok : 0.0, 1e3 * p50, 1e3 * p90, 1e3 * p99, nreq - ok);
        fflush(stdout);
        for (int i = 0; i < C; i++) free(cl[i].res);
        free(cl);
        free(th);
        free(ttft);
    }
    free(lv);
    return 0;
}
