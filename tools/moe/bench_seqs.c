/* bench_seqs.c - B sequences decoded in one pass each step (see bench_seqs.h). */
#include "bench_seqs.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_experts.h"
#include "cli.h"
#include "sampler.h"

static uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One run with B sequences: returns aggregate tokens/s (and in *cpu_s the process CPU seconds
 * of the timed passes), or -1 on error. */
static double run_b(const moe_model *m, moe_ctx *ctx, moe_kv *kv, moe_batch *bt, float *logits, int B, int n_prompt,
                    int n_gen, uint64_t *rs, double *cpu_s, model_profile *prof, moe_error *err) {
    int V = m->cfg.vocab_size;
    batch_clear(bt);
    for (int s = 0; s < B; s++) {
        kv_clear(kv, s);
        for (int t = 0; t < n_prompt; t++) batch_add(bt, (int)(next_rand(rs) % (uint64_t)V), t, s, t == n_prompt - 1);
    }
    if (model_forward(m, ctx, kv, bt, logits, NULL, err)) return -1;   /* the prompts, untimed */
    double busy = 0;
    *cpu_s = 0;
    for (int i = 0; i < n_gen; i++) {
        batch_clear(bt);
        for (int s = 0; s < B; s++) batch_add(bt, sampler_argmax(logits + (size_t)s * V, V), n_prompt + i, s, 1);
        double t0 = cli_now(), c0 = cpu_seconds();
        ctx->prof = prof;
        int rc = model_forward(m, ctx, kv, bt, logits, NULL, err);
        ctx->prof = NULL;
        if (rc) return -1;
        busy += cli_now() - t0;
        *cpu_s += cpu_seconds() - c0;
    }
    return (double)B * n_gen / busy;
}

int seqs_arm_run(const moe_model *m, moe_ctx *ctx, const int *b, int n_b, int n_prompt, int n_gen, int reps,
                 uint64_t seed, const seqs_bytes *bytes, int profile, seqs_arm *r, moe_error *err) {
    memset(r, 0, sizeof *r);
    r->profile = profile;
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
    r->agg_cpu_ts = calloc((size_t)n_b * reps, sizeof(double));
    if (batch_init(&bt, max_b * n_prompt > max_b ? max_b * n_prompt : max_b, err) ||
        expert_counter_init(&cnt, m, ctx, err) || !logits || !r->agg_ts || !r->agg_cpu_ts) {
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
            int steps = rep < 0 ? (n_gen < 4 ? n_gen : 4) : n_gen;
            double cpu_s = 0, v = run_b(m, ctx, &kv, &bt, logits, b[k], n_prompt, steps, &rs, &cpu_s,
                                        rep >= 0 && profile ? &r->prof[k] : NULL, err);
            if (v < 0) { rc = MOE_FAIL; break; }
            if (rep >= 0) {
                if (profile) r->prof_passes[k] += steps;
                r->agg_ts[k * reps + rep] = v;
                r->agg_cpu_ts[k * reps + rep] = (double)b[k] * steps / (cpu_s / r->threads);
            }
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
    fprintf(f, "| threads |  B | aggregate t/s | t/s per sequence | x B=1 | on-CPU aggregate t/s | x B=1 | distinct experts / layer / pass | weights MB / pass | GB/s |\n");
    fprintf(f, "| ------: | -: | ------------: | ---------------: | ----: | -------------------: | ----: | ------------------------------: | ----------------: | ---: |\n");
    for (int i = 0; i < n_runs; i++) {
        const seqs_arm *r = &runs[i];
        double base = 0, base_cpu = 0;
        for (int k = 0; k < r->n_b; k++)
            if (r->b[k] == 1) {
                base = cli_median(r->agg_ts + (size_t)k * r->reps, r->reps);
                base_cpu = cli_median(r->agg_cpu_ts + (size_t)k * r->reps, r->reps);
            }
        for (int k = 0; k < r->n_b; k++) {
            double agg = cli_median(r->agg_ts + (size_t)k * r->reps, r->reps);
            double cpu = cli_median(r->agg_cpu_ts + (size_t)k * r->reps, r->reps);
            char ratio[16] = "-", ratio_cpu[16] = "-";
            if (base > 0) snprintf(ratio, sizeof ratio, "%.2f", agg / base);
            if (base_cpu > 0) snprintf(ratio_cpu, sizeof ratio_cpu, "%.2f", cpu / base_cpu);
            fprintf(f, "| %7d | %2d | %13.1f | %16.1f | %5s | %20.1f | %5s | %31.2f | %17.2f | %4.1f |\n", r->threads, r->b[k],
                    agg, agg / r->b[k], ratio, cpu, ratio_cpu, r->experts[k], r->bytes_pass[k] / 1e6,
                    r->bytes_pass[k] * agg / r->b[k] / 1e9);
        }
    }

    for (int i = 0; i < n_runs; i++) {
        const seqs_arm *r = &runs[i];
        if (!r->profile) continue;
        fprintf(f, "\nprofile, --seqs on %d thread%s: wall time per pass by phase (us)\n  %-24s", r->threads,
                r->threads > 1 ? "s" : "", "phase");
        for (int k = 0; k < r->n_b; k++) fprintf(f, " %8s%-3d", "B=", r->b[k]);
        fprintf(f, "\n");
        for (int p = 0; p <= N_PHASES; p++) {
            fprintf(f, "  %-24s", p < N_PHASES ? model_phase_name((model_phase)p) : "total");
            for (int k = 0; k < r->n_b; k++) {
                double v = 0;
                for (int q = 0; q < N_PHASES; q++) if (q == p || p == N_PHASES) v += (double)r->prof[k].ns[q];
                fprintf(f, " %11.1f", r->prof_passes[k] ? v / r->prof_passes[k] / 1e3 : 0);
            }
            fprintf(f, "\n");
        }
    }
}

json_t *seqs_arm_json(const seqs_arm *r) {
    json_t *arr = json_array();
    for (int k = 0; k < r->n_b; k++) {
        json_t *samples = json_array();
        for (int i = 0; i < r->reps; i++) json_array_append_new(samples, json_real(r->agg_ts[k * r->reps + i]));
        double agg = cli_median(r->agg_ts + (size_t)k * r->reps, r->reps);
        json_array_append_new(arr, json_pack("{s:s, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:o}", "test", "seqs",
                                             "n_threads", r->threads, "n_seqs", r->b[k], "n_prompt", r->n_prompt, "n_gen",
                                             r->n_gen, "median_ts", agg, "median_ts_per_seq", agg / r->b[k], "oncpu_median_ts",
                                             cli_median(r->agg_cpu_ts + (size_t)k * r->reps, r->reps),
                                             "experts_per_layer_pass", r->experts[k], "weight_bytes_per_pass",
                                             r->bytes_pass[k], "samples_ts", samples));
    }
    return arr;
}

void seqs_arm_free(seqs_arm *r) {
    free(r->agg_ts);
    free(r->agg_cpu_ts);
    memset(r, 0, sizeof *r);
}
