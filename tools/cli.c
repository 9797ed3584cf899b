/* cli.c - shared command-line helpers (see cli.h). */
#include "cli.h"

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

static void load_progress(void *ctx, int done, int total) {
    double *t0 = ctx;
    if (cli_now() - *t0 < 1.0 && done < total) return;   /* only long loads show progress */
    fprintf(stderr, "\rloading: %d/%d tensors", done, total);
    if (done >= total) fprintf(stderr, "\n");
}

int cli_load_model(moe_model *m, const char *dir, const model_options *opt, const char *cmd, int quiet) {
    moe_error err = {{0}};
    double t0 = cli_now();
    model_options o = *opt;
    if (!quiet && !o.progress) { o.progress = load_progress; o.progress_ctx = &t0; }
    if (model_load(m, dir, &o, &err)) {
        fprintf(stderr, "moe %s: %s\n", cmd, err.msg);
        return MOE_FAIL;
    }
    if (!quiet) {
        const moe_config *c = &m->cfg;
        fprintf(stderr,
                "model %s: %s, %d layers (+%d MTP), H=%d, %d heads, E=%d top-%d, V=%d | weights %s: %.1f MiB mapped, "
                "%.1f MiB converted | KV cache %d tokens x %zu B = %.1f MiB | kernels %s | load %.2f s\n",
                dir, c->model_type, c->num_hidden_layers, c->num_nextn_predict_layers, c->hidden_size,
                c->num_attention_heads, c->n_routed_experts, m->K, c->vocab_size, weights_dtype_name(o.dtype),
                m->w.bytes_mapped / 1048576.0, m->w.bytes_converted / 1048576.0, m->s.S,
                model_kv_bytes_per_token(m), m->s.kv_cache_bytes / 1048576.0, cpu_kernel_name(), cli_now() - t0);
    }
    return MOE_OK;
}
