/* cmd_tokenize.c - `moe tokenize`: text -> token ids, or ids -> text.
 *
 *   moe tokenize -m DIR (-p TEXT | -f FILE) [--decode] [--bench]
 *
 * Legend:
 *   DIR      a directory with tokenizer.json (+ tokenizer_config.json), or a
 *            tokenizer.json file
 *   -p TEXT  one input; -f FILE: every line of FILE (without its '\n') is one
 *            input and gives one output line
 *   output   ids comma-separated, no BOS (encode); the decoded bytes (decode)
 *   --bench  encode all of FILE (or TEXT) as one text, then line by line;
 *            print the load time and both encoding speeds (MB/s, load
 *            excluded) instead of the ids
 * Errors: one line "moe tokenize: <file>: <problem>" on stderr, exit 1.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "commands.h"
#include "session.h"
#include "tokenizer.h"

/* ======================================================================
 * Helpers
 * ====================================================================== */

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe tokenize -m DIR (-p TEXT | -f FILE) [--decode] [--bench]\n"
            "  -m DIR     tokenizer.json (+ tokenizer_config.json) directory, or the tokenizer.json file\n"
            "  -p TEXT    encode TEXT; print its token ids comma-separated (no BOS)\n"
            "  -f FILE    encode each line of FILE (without its newline); one output line each\n"
            "  --decode   the other way: ids comma-separated (in TEXT, or per line of FILE) -> text\n"
            "  --bench    encode the input as one text, then line by line; print load time and MB/s\n");
}

static int fail(const char *what, const char *problem) {
    fprintf(stderr, "moe tokenize: %s%s%s\n", what, problem ? ": " : "", problem ? problem : "");
    return 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Reads a whole file; returns NULL (errno set) on failure. */
static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            char *b = realloc(buf, cap *= 2);
            if (!b) { free(buf); buf = NULL; errno = ENOMEM; break; }
            buf = b;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (buf && ferror(f)) { free(buf); buf = NULL; }
    fclose(f);
    *len = n;
    return buf;
}

/* Parses "1, 2,3" into *ids; returns -1 on a token that is not a number. */
static int parse_ids(const char *s, size_t n, int **ids, int *count) {
    int cap = 16, k = 0;
    int *v = malloc(sizeof(int) * (size_t)cap);
    size_t i = 0;
    if (!v) return -1;
    while (i < n) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) i++;
        if (i == n) break;
        long x = 0;
        size_t st = i;
        while (i < n && s[i] >= '0' && s[i] <= '9' && x < (1L << 31)) x = x * 10 + (s[i++] - '0');
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) i++;
        if (i == st || x >= (1L << 31) || (i < n && s[i] != ',')) { free(v); return -1; }
        if (i < n) i++; /* the comma */
        if (k == cap) {
            int *w = realloc(v, sizeof(int) * (size_t)(cap *= 2));
            if (!w) { free(v); return -1; }
            v = w;
        }
        v[k++] = (int)x;
    }
    *ids = v;
    *count = k;
    return 0;
}

/* ======================================================================
 * One input -> one output line
 * ====================================================================== */

static int run_one(tokenizer *t, const char *src, const char *s, size_t n, int decode) {
    moe_error err = {{0}};
    if (!decode) {
        int *ids, k;
        if (tokenizer_encode(t, s, n, &ids, &k, &err)) return fail(err.msg, NULL);
        for (int i = 0; i < k; i++) printf(i ? ",%d" : "%d", ids[i]);
        putchar('\n');
        free(ids);
        return 0;
    }
    int *ids, k;
    if (parse_ids(s, n, &ids, &k)) return fail(src, "expected token ids separated by commas");
    char *text;
    size_t len;
    int rc = tokenizer_decode(t, ids, k, &text, &len, &err);
    free(ids);
    if (rc) return fail(src, strstr(err.msg, "token id") ? strstr(err.msg, "token id") : err.msg);
    fwrite(text, 1, len, stdout);
    putchar('\n');
    free(text);
    return 0;
}

/* ======================================================================
 * The command
 * ====================================================================== */

int cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL, *prompt = NULL, *file = NULL;
    int decode = 0, bench = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--decode")) decode = 1;
        else if (!strcmp(a, "--bench")) bench = 1;
        else if ((!strcmp(a, "-m") || !strcmp(a, "-p") || !strcmp(a, "-f")) && i + 1 < argc) {
            const char **dst = a[1] == 'm' ? &dir : a[1] == 'p' ? &prompt : &file;
            *dst = argv[++i];
        } else {
            fprintf(stderr, "moe tokenize: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 1;
        }
    }
    if (!dir || (!prompt == !file)) {
        fprintf(stderr, "moe tokenize: need -m DIR and exactly one of -p TEXT or -f FILE\n");
        usage(stderr);
        return 1;
    }

    char *data = NULL;
    size_t dlen = 0;
    if (file && !(data = read_all(file, &dlen))) return fail(file, strerror(errno));

    tokenizer *t;
    moe_error err = {{0}};
    double t0 = now_s();
    if (model_tokenizer_load(&t, dir, &err)) { free(data); return fail(err.msg, NULL); }
    double t1 = now_s();

    int rc = 0;
    if (bench) {
        const char *s = file ? data : prompt;
        size_t n = file ? dlen : strlen(prompt);
        int *ids, k;
        double e0 = now_s();
        if (tokenizer_encode(t, s, n, &ids, &k, &err)) rc = fail(err.msg, NULL);
        double e1 = now_s();
        if (!rc) free(ids);
        /* then line by line, as -f encodes */
        long lines = 0;
        double l0 = now_s();
        for (size_t i = 0; i < n && !rc;) {
            const char *nl = memchr(s + i, '\n', n - i);
            size_t end = nl ? (size_t)(nl - s) : n;
            int *lids, lk;
            if (tokenizer_encode(t, s + i, end - i, &lids, &lk, &err)) rc = fail(err.msg, NULL);
            else free(lids);
            lines++;
            i = end + 1;
        }
        double l1 = now_s();
        if (!rc)
            printf("load_ms=%.1f bytes=%zu tokens=%d encode_s=%.4f encode_MBps=%.2f lines=%ld lines_MBps=%.2f\n",
                   (t1 - t0) * 1e3, n, k, e1 - e0, n / 1e6 / (e1 - e0 > 0 ? e1 - e0 : 1e-9), lines,
                   n / 1e6 / (l1 - l0 > 0 ? l1 - l0 : 1e-9));
    } else if (prompt) {
        rc = run_one(t, "-p", prompt, strlen(prompt), decode);
    } else {
        size_t i = 0;
        while (i < dlen && !rc) {
            const char *nl = memchr(data + i, '\n', dlen - i);
            size_t end = nl ? (size_t)(nl - data) : dlen;
            rc = run_one(t, file, data + i, end - i, decode);
            i = end + 1;
        }
    }
    if (fflush(stdout) && !rc) rc = fail("stdout", strerror(errno));
    tokenizer_free(t);
    free(data);
    return rc;
}
