/* bench_seqs.c - B sequences decoded in one pass each step (see bench_seqs.h). */
#include "bench_seqs.h"

#include <stdlib.h>
#include <string.h>

#include "bench_experts.h"
#include "cli.h"
#include "sampler.h"

static uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}

/* One run with B sequences: returns aggregate tokens/s, or -1 on error. */
static double run_b(const moe_model *m, moe_ctx *ctx, moe_kv *kv, moe_batch *bt, float *logits, int B, int n_prompt,
                    int n_gen, uint64_t *rs, moe_error *err) {
    int V = m->cfg.vocab_size;
    batch_clear(bt);
    for (int s = 0; s < B; s++) {
        kv_clear(kv, s);
        for (int t = 0; t < n_prompt; t++) batch_add(bt, (int)(next_rand(rs) % (uint64_t)V), t, s, t == n_prompt - 1);
    }
    if (model_forward(m, ctx, kv, bt, logits, NULL, err)) return -1;   /* the prompts, untimed */
    double busy = 0;
    for (int i = 0; i < n_gen; i++) {
        batch_clear(bt);
        for (int s = 0; s < B; s++) batch_add(bt, sampler_argmax(logits + (size_t)s * V, V), n_prompt + i, s, 1);
        double t0 = cli_now();
        if (model_forward(m, ctx, kv, bt, logits, NULL, err)) return -1;
        busy += cli_now() - t0;
    }
    return (double)B * n_gen / busy;
}

int seqs_arm_run(const moe_model *m, moe_ctx *ctx, const int *b, int n_b, int n_prompt, int n_gen, int reps,
                 uint64_t seed, const seqs_bytes *bytes, seqs_arm *r, moe_error *err) {
    memset(r, 0, sizeof *r);
    int max_b = 1;
    for (int k = 0; k < n_b; k++) max_b = b[k] > max_b ? b[k] : max_b;
    if (n_b > SEQS_MAX_CONFIGS) return moe_error_set(err, "--seqs: at most %d values", SEQS_MAX_CONFIGS);
    if (max_b > ctx->B)
        return moe_error_set(err, "--seqs: %d sequences do not fit a pass of %d tokens (raise --batch)", max_b, ctx->B);
    if (n_prompt + n_gen > ctx->S) return moe_error_set(err, "--seqs: context too small");
    r->threads = ctx->pool ? threadpool_threads(ctx->pool) : 1;
    r->n_b = n_b;
    memcpy(r->b, b, sizeof(int) * (size_t)n_b);
    r->reps = reps;
    r->n_gen = n_gen;
    r->n_prompt = n_prompt;
    moe_kv kv;
    moe_batch bt;
    expert_counter cnt;
    if (kv_init(&kv, m, max_b, n_prompt + n_gen, err)) return MOE_FAIL;
    float *logits = malloc(sizeof(float) * (size_t)max_b * m->cfg.vocab_size);
    r->agg_ts = calloc((size_t)n_b * reps, sizeof(double));
    if (batch_init(&bt, max_b * n_prompt > max_b ? max_b * n_prompt : max_b, err) ||
        expert_counter_init(&cnt, m, ctx, err) || !logits || !r->agg_ts) {
        if (!err->msg[0]) moe_error_set(err, "out of memory");
        kv_free(&kv);
        free(logits);
        return MOE_FAIL;
    }
    route_observer saved = ctx->on_route;
    void *saved_ctx = ctx->on_route_ctx;
    ctx->on_route = expert_counter_observe;
    ctx->on_route_ctx = &cnt;
    uint64_t rs = seed * 0x9E3779B97F4A7C15ull + 7;
    int rc = MOE_OK;
    for (int rep = -1; rep < reps && rc == MOE_OK; rep++)
        for (int k = 0; k < n_b; k++) {
            double v = run_b(m, ctx, &kv, &bt, logits, b[k], n_prompt, rep < 0 ? (n_gen < 4 ? n_gen : 4) : n_gen, &rs, err);
            if (v < 0) { rc = MOE_FAIL; break; }
            if (rep >= 0) r->agg_ts[k * reps + rep] = v;
            fprintf(stderr, "\rseqs rep %d/%d, %d thread%s, B = %d: %.1f t/s        ", rep + 1, reps, r->threads,
                    r->threads > 1 ? "s" : "", b[k], v);
        }
    fprintf(stderr, "\r%70s\r", "");
    expert_counter_close(&cnt);
    for (int k = 0; k < n_b; k++) {
        r->experts[k] = expert_counter_mean(&cnt, b[k]);
        r->bytes_pass[k] = bytes->fixed + r->experts[k] * bytes->n_moe * bytes->per_expert;
    }
    ctx->on_route = saved;
    ctx->on_route_ctx = saved_ctx;
    expert_counter_free(&cnt);
    batch_free(&bt);
    kv_free(&kv);
    free(logits);
    return rc;
}

void seqs_arm_print(FILE *f, const seqs_arm *runs, int n_runs) {
    if (n_runs < 1) return;
    fprintf(f, "\nmany sequences (--seqs): B sequences after %d-token prompts, %d decode passes of B tokens (one per "
               "sequence), %d reps, medians\n\n", runs[0].n_prompt, runs[0].n_gen, runs[0].reps);
    fprintf(f, "| threads |  B | aggregate t/s | t/s per sequence | x B=1 | distinct experts / layer / pass | weights MB / pass | GB/s |\n");
    fprintf(f, "| ------: | -: | ------------: | ---------------: | ----: | ------------------------------: | ----------------: | ---: |\n");
    for (int i = 0; i < n_runs; i++) {
        const seqs_arm *r = &runs[i];
        double base = 0;
        for (int k = 0; k < r->n_b; k++)
            if (r->b[k] == 1) base = cli_median(r->agg_ts + (size_t)k * r->reps, r->reps);
        for (int k = 0; k < r->n_b; k++) {
            double agg = cli_median(r->agg_ts + (size_t)k * r->reps, r->reps);
            char ratio[16] = "-";
            if (base > 0) snprintf(ratio, sizeof ratio, "%.2f", agg / base);
            fprintf(f, "| %7d | %2d | %13.1f | %16.1f | %5s | %31.2f | %17.2f | %4.1f |\n", r->threads, r->b[k], agg,
                    agg / r->b[k], ratio, r->experts[k], r->bytes_pass[k] / 1e6, r->bytes_pass[k] * agg / r->b[k] / 1e9);
        }
    }
}

json_t *seqs_arm_json(const seqs_arm *r) {
    json_t *arr = json_array();
    for (int k = 0; k < r->n_b; k++) {
        json_t *samples = json_array();
        for (int i = 0; i < r->reps; i++) json_array_append_new(samples, json_real(r->agg_ts[k * r->reps + i]));
        double agg = cli_median(r->agg_ts + (size_t)k * r->reps, r->reps);
        json_array_append_new(arr, json_pack("{s:s, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:o}", "test", "seqs",
                                             "n_threads", r->threads, "n_seqs", r->b[k], "n_prompt", r->n_prompt, "n_gen",
                                             r->n_gen, "median_ts", agg, "median_ts_per_seq", agg / r->b[k],
                                             "experts_per_layer_pass", r->experts[k], "weight_bytes_per_pass",
                                             r->bytes_pass[k], "samples_ts", samples));
    }
    return arr;
}

void seqs_arm_free(seqs_arm *r) {
    free(r->agg_ts);
    memset(r, 0, sizeof *r);
}
