/* bench_mtp.c - the MTP arm of `moe bench` (see bench_mtp.h).
 *
 * Why the gain on a CPU is smaller than on a GPU: a verification step runs two
 * tokens through the model in one pass, which reads each weight once for both,
 * but the two tokens usually choose different experts, so a step reads more than
 * K experts per layer (up to 2K). This arm counts them. */
#include "bench_mtp.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_experts.h"
#include "cli.h"
#include "generate.h"
#include "json_util.h"
#include "sampler.h"
#include "tokenizer.h"

/* ------------------------------------------------------------------ prompts */

static int prompts_from_text(const char *model_dir, const char *file, int **ids, int *n, moe_error *err) {
    tokenizer *tok;
    if (model_tokenizer_load(&tok, model_dir, err)) return MOE_FAIL;
    char *text;
    size_t len;
    int rc = file_read_all(file, 256u << 20, &text, &len, err);
    if (rc == MOE_OK) rc = tokenizer_encode(tok, text, len, ids, n, err);
    free(text);
    tokenizer_free(tok);
    return rc;
}

/* ------------------------------------------------------------------ one decode */

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* prof: NULL, or [MTP_PASS_KINDS]: plain decoding's passes go to prof[MTP_PASS_PLAIN], the MTP
 * loop's to its kinds (generator.prof); the prompt is not profiled. */
/* learned: NULL, or auto mode's state from the previous rep (generator_mtp_adopt). */
static int decode(const moe_model *m, moe_ctx *c, moe_kv *kv, const int *prompt, int n_prompt, int n_gen, int mtp,
                  int draft_len, const mtp_auto *learned, model_profile *prof, generator *g, sampler *s, int *out_ids, double *tps,
                  double *cpu_s, moe_error *err) {
    if (generator_init(g, m, c, kv, 0, NULL, s, err)) return MOE_FAIL;
    g->eos_id = -1;                                   /* always n_gen tokens */
    int rc = mtp && (generator_enable_mtp(g, (mtp_mode)mtp, NULL, err) || generator_set_draft_len(g, draft_len, err));
    if (!rc && learned) generator_mtp_adopt(g, learned);
    rc = rc || generator_prompt(g, prompt, n_prompt, err);
    if (!rc) {
        model_profile *saved = c->prof;
        if (prof && mtp) g->prof = prof;
        else if (prof) c->prof = &prof[MTP_PASS_PLAIN];
        double c0 = cpu_seconds();
        rc = generator_run(g, n_gen, NULL, NULL, err);
        *cpu_s = cpu_seconds() - c0;
        c->prof = saved;
    }
    if (rc == MOE_OK) {
        /* the generated tokens are the history after the prompt (the last one may be unfed) */
        int fed = g->n_history - n_prompt;
        memcpy(out_ids, g->history + n_prompt, sizeof(int) * (size_t)(fed > 0 ? fed : 0));
        *tps = g->gen_seconds > 0 ? g->n_generated / g->gen_seconds : 0;
    }
    return rc ? MOE_FAIL : MOE_OK;
}

/* ------------------------------------------------------------------ the arm */

int mtp_arm_run(const moe_model *m, moe_ctx *ctx, moe_kv *kv, const char *model_dir, const char *text_file, int n_prompt, int n_gen, int reps,
                uint64_t seed, int profile, int carry, int draft_len, mtp_arm *r, moe_error *err) {
    memset(r, 0, sizeof *r);
    r->draft_len = draft_len;
    int VT = draft_len + 1;   /* tokens of a verification pass */
    r->profile = profile;
    r->reps = reps;
    r->n_gen = n_gen;
    r->n_prompt = n_prompt;
    r->prompt_source = text_file ? text_file : "random tokens";
    r->auto_carry = carry;
    if (m->cfg.num_nextn_predict_layers < 1) return moe_error_set(err, "--mtp: this checkpoint has no MTP module");
    if (n_prompt + n_gen + 2 > kv->S) return moe_error_set(err, "--mtp: context too small");
    int *text_ids = NULL, n_text = 0;
    if (text_file) {
        if (prompts_from_text(model_dir, text_file, &text_ids, &n_text, err)) return MOE_FAIL;
        if (n_text < n_prompt + 1) {
            free(text_ids);
            return moe_error_set(err, "%s: %d tokens, fewer than one %d-token prompt", text_file, n_text, n_prompt);
        }
    }
    expert_counter cnt;
    if (expert_counter_init(&cnt, m, ctx, err)) { free(text_ids); return MOE_FAIL; }
    r->plain_ts = calloc((size_t)reps, sizeof(double));
    r->mtp_ts = calloc((size_t)reps, sizeof(double));
    r->auto_ts = calloc((size_t)reps, sizeof(double));
    for (int a = 0; a < 3; a++) r->cpu_ts[a] = calloc((size_t)reps, sizeof(double));
    r->threads = ctx->pool ? threadpool_threads(ctx->pool) : 1;
    int *prompt = malloc(sizeof(int) * (size_t)n_prompt);
    int *out_plain = malloc(sizeof(int) * (size_t)(n_gen + 2)), *out_mtp = malloc(sizeof(int) * (size_t)(n_gen + 2));
    int *out_auto = malloc(sizeof(int) * (size_t)(n_gen + 2));
    int rc = MOE_FAIL;
    sampler smp = {0};
    sampler_params greedy = { .temperature = 0.0f, .top_p = 1.0f };
    route_observer saved = ctx->on_route;
    void *saved_ctx = ctx->on_route_ctx;
    if (!r->plain_ts || !r->mtp_ts || !r->auto_ts || !r->cpu_ts[0] || !r->cpu_ts[1] || !r->cpu_ts[2] || !prompt || !out_plain ||
        !out_mtp || !out_auto || sampler_init(&smp, m->cfg.vocab_size, &greedy, err)) {
        if (!err->msg[0]) moe_error_set(err, "out of memory");
        goto done;
    }
    ctx->on_route = expert_counter_observe;
    ctx->on_route_ctx = &cnt;
    uint64_t st = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int rep = 0; rep < reps; rep++) {
        if (text_ids) {
            int span = n_text - n_prompt, start = (int)((long long)rep * span / (reps > 1 ? reps : 1));
            memcpy(prompt, text_ids + start, sizeof(int) * (size_t)n_prompt);
        } else {
            for (int i = 0; i < n_prompt; i++) {
                st ^= st << 13; st ^= st >> 7; st ^= st << 17;
                prompt[i] = (int)(st % (uint64_t)m->cfg.vocab_size);
            }
        }
        int fed[3] = {0, 0, 0};
        for (int k = 0; k < 3; k++) {   /* plain, MTP always and auto on the same prompt; the order rotates */
            int arm = (k + rep) % 3;
            generator g;
            double tps = 0, cpu_s = 0;
            int *out = arm == 0 ? out_plain : arm == 1 ? out_mtp : out_auto;
            int mode = arm == 0 ? 0 : arm == 1 ? MTP_ALWAYS : MTP_AUTO;
            /* pass counting: close open sets so each arm's passes stay its own */
            expert_counter_close(&cnt);
            double before[2] = {cnt.sum_distinct[1], cnt.sum_distinct[VT]};
            long before_n[2] = {cnt.n_sets[1], cnt.n_sets[VT]};
            /* auto keeps what it learned from rep to rep, as a process generating again would */
            const mtp_auto *learned = arm == 2 && rep > 0 && r->auto_carry ? &r->auto_learned : NULL;
            int drc = decode(m, ctx, kv, prompt, n_prompt, n_gen, mode, draft_len, learned, profile && arm < 2 ? r->prof : NULL, &g, &smp,
                             out, &tps, &cpu_s, err);
            expert_counter_close(&cnt);
            if (drc) { generator_free(&g); goto done; }
            r->cpu_ts[arm][rep] = cpu_s > 0 ? g.n_generated / (cpu_s / r->threads) : 0;
            fed[arm] = g.n_history - n_prompt;
            if (arm == 0) {
                r->plain_ts[rep] = tps;
                r->plain_gen_s += g.gen_seconds;
                r->plain_generated += g.n_generated;
                r->prof_passes[MTP_PASS_PLAIN] += g.n_generated - 1;
                /* plain decoding: only its single-token passes count */
                cnt.sum_distinct[VT] = before[1];
                cnt.n_sets[VT] = before_n[1];
            } else if (arm == 2) {
                r->auto_ts[rep] = tps;
                r->auto_drafted += g.n_drafted;
                r->auto_accepted += g.n_accepted;
                r->auto_plain += g.cost.n_plain;
                r->auto_skipped += g.cost.skipped;
                r->auto_remeasure += g.ctl.n_remeasure;
                r->auto_switch += g.ctl.n_switch;
                r->auto_spec_reps += g.ctl.spec;
                r->auto_quiet_reps += g.ctl.quiet_left > 0;
                r->auto_settled += g.ctl.n_settled_steps;
                r->auto_step_plain_s += g.cost.step_plain_s;
                r->auto_step_spec_s += g.cost.step_spec_s;
                r->auto_rows_s += g.cost.rows_s;
                r->auto_unverified_s += g.cost.unverified_s;
                r->auto_gen_s += g.gen_seconds;
                r->auto_tok_spec += g.cost.tok_spec;
                r->auto_generated += g.n_generated;
                r->auto_learned = g.ctl;
                cnt.sum_distinct[1] = before[0];   /* counted in the always arm */
                cnt.n_sets[1] = before_n[0];
                cnt.sum_distinct[VT] = before[1];
                cnt.n_sets[VT] = before_n[1];
            } else {
                r->mtp_ts[rep] = tps;
                mtp_costs *ac = &r->always_cost;
                ac->verify_s += g.cost.verify_s; ac->n_verify += g.cost.n_verify;
                ac->draft_s += g.cost.draft_s; ac->n_draft += g.cost.n_draft;
                ac->catchup_s += g.cost.catchup_s; ac->n_catchup += g.cost.n_catchup;
                ac->chain_s += g.cost.chain_s;
                r->prof_passes[MTP_PASS_VERIFY] += g.cost.n_verify;
                r->prof_passes[MTP_PASS_DRAFT] += g.cost.n_draft + g.cost.n_catchup;
                for (int b = 0; b < MTP_CONF_BUCKETS; b++) {
                    ac->drafted[b] += g.cost.drafted[b];
                    ac->accepted[b] += g.cost.accepted[b];
                }
                r->drafted += g.n_drafted;
                r->accepted += g.n_accepted;
                r->steps += g.n_steps;
                r->generated += g.n_generated;
                cnt.sum_distinct[1] = before[0];   /* in the MTP arm only verification passes count */
                cnt.n_sets[1] = before_n[0];
            }
            generator_free(&g);
        }
        /* greedy: both MTP arms must have emitted plain decoding's tokens */
        int fed_plain = n_gen - 1;
        if (!(fed[1] >= fed_plain && !memcmp(out_plain, out_mtp, sizeof(int) * (size_t)fed_plain))) r->mismatches++;
        if (!(fed[2] >= fed_plain && !memcmp(out_plain, out_auto, sizeof(int) * (size_t)fed_plain))) r->mismatches++;
        fprintf(stderr, "\rmtp rep %d/%d: plain %.1f t/s, always %.1f t/s, auto %.1f t/s   ", rep + 1, reps, r->plain_ts[rep],
                r->mtp_ts[rep], r->auto_ts[rep]);
    }
    fprintf(stderr, "\r%60s\r", "");
    r->experts_plain = expert_counter_mean(&cnt, 1);   /* per layer */
    r->experts_verify = expert_counter_mean(&cnt, VT);
    rc = MOE_OK;
done:
    ctx->on_route = saved;
    ctx->on_route_ctx = saved_ctx;
    sampler_free(&smp);
    expert_counter_free(&cnt);
    free(prompt); free(out_plain); free(out_mtp); free(out_auto); free(text_ids);
    return rc;
}

/* ------------------------------------------------------------------ report */

void mtp_arm_print(FILE *f, const mtp_arm *r) {
    double p = cli_median(r->plain_ts, r->reps), q = cli_median(r->mtp_ts, r->reps);
    fprintf(f, "\nMTP speculative decoding (greedy, %d reps of %d tokens after %d-token prompts from %s):\n", r->reps,
            r->n_gen, r->n_prompt, r->prompt_source);
    double u = cli_median(r->auto_ts, r->reps);
    fprintf(f, "  decode t/s, median: plain %.1f | --mtp-mode always %.1f (x%.2f) | --mtp (auto) %.1f (x%.2f)\n", p, q,
            p > 0 ? q / p : 0.0, u, p > 0 ? u / p : 0.0);
    /* the same per rep (each rep's arms share its neighbours), and on-CPU (robust to a loaded machine) */
    double ra[64], rb[64];
    int nr = r->reps < 64 ? r->reps : 64;
    for (int i = 0; i < nr; i++) {
        ra[i] = r->plain_ts[i] > 0 ? r->mtp_ts[i] / r->plain_ts[i] : 0;
        rb[i] = r->plain_ts[i] > 0 ? r->auto_ts[i] / r->plain_ts[i] : 0;
    }
    double cp = cli_median(r->cpu_ts[0], r->reps), ca = cli_median(r->cpu_ts[1], r->reps), cu2 = cli_median(r->cpu_ts[2], r->reps);
    fprintf(f, "  per-rep ratio to plain, median: always x%.2f, auto x%.2f | on-CPU t/s (%d thread%s): plain %.1f | always %.1f "
               "(x%.2f) | auto %.1f (x%.2f)\n", cli_median(ra, nr), cli_median(rb, nr), r->threads, r->threads > 1 ? "s" : "",
            cp, ca, cp > 0 ? ca / cp : 0.0, cu2, cp > 0 ? cu2 / cp : 0.0);
    const mtp_costs *c = &r->always_cost;
    if (p > 0 && c->n_verify && c->n_draft) {
        double plain = 1.0 / p, ver = c->verify_s / c->n_verify, dr = c->draft_s / c->n_draft;
        double cu = c->n_catchup ? c->catchup_s / c->n_catchup : dr;
        double dmean = (c->draft_s + c->catchup_s) / (double)(c->n_draft + c->n_catchup);
        double a = r->drafted ? (double)r->accepted / r->drafted : 0;
        int N = r->draft_len > 0 ? r->draft_len : 1;
        double chain = c->n_verify ? c->chain_s / c->n_verify : 0;   /* the 2nd..Nth drafts of a step */
        fprintf(f, "  cost per step (always arm): plain step %.3f ms | %d-token verification %.3f ms = x%.2f | draft "
                   "%.3f ms = x%.2f (of two positions, after an accepted draft: %.3f ms = x%.2f)", 1e3 * plain, N + 1, 1e3 * ver,
                ver / plain, 1e3 * dr, dr / plain, 1e3 * cu, cu / plain);
        if (N > 1) fprintf(f, " | %d chained drafts %.3f ms = x%.2f", N - 1, 1e3 * chain, chain / plain);
        fprintf(f, "\n");
        /* a draft after an accepted one runs the MTP module over two positions: at acceptance a, a of the drafts */
        double d85 = 0.85 * cu + 0.15 * dr + chain, d90 = 0.90 * cu + 0.10 * dr + chain;
        double y = 1, y85 = 1, y90 = 1, pw = 1, p85 = 1, p90 = 1;   /* tokens per step: 1 + a + ... + a^N */
        for (int i = 0; i < N; i++) { pw *= a; p85 *= 0.85; p90 *= 0.90; y += pw; y85 += p85; y90 += p90; }
        fprintf(f, "  predicted speed-up (1 + a + .. + a^%d) / (verification + drafts) = x%.2f at the acceptance measured "
                   "(a = %.1f%%), x%.2f at 85%%, x%.2f at 90%% (DeepSeek-V3's reported range); measured x%.2f\n", N,
                y * plain / (ver + dmean + chain), 100 * a, y85 * plain / (ver + d85), y90 * plain / (ver + d90), q / p);
        fprintf(f, "  acceptance by draft confidence q(d):");
        for (int b = 0; b < MTP_CONF_BUCKETS; b++)
            fprintf(f, " [%.2f, %.2f) %ld/%ld", (double)b / MTP_CONF_BUCKETS, (double)(b + 1) / MTP_CONF_BUCKETS,
                    c->accepted[b], c->drafted[b]);
        fprintf(f, "\n  auto arm (%s): rep 1 x%.2f plain;", r->auto_carry ? "each rep starts from what the previous rep learned, "
                   "as a process generating again; --mtp-cold: from scratch" : "each rep from scratch (--mtp-cold)",
                r->plain_ts[0] > 0 ? r->auto_ts[0] / r->plain_ts[0] : 0.0);
        fprintf(f, " %ld drafts (%ld accepted), %ld plain steps, %ld drafts not verified, %ld re-measurements of "
                   "the mode not chosen, %ld switches of mode; %ld of %d reps ended speculating, %ld settled plain (speculation lost "
                   "by over 5 %% at %d re-measurements in a row: no MTP module for %d steps)\n", r->auto_drafted,
                r->auto_accepted, r->auto_plain, r->auto_skipped, r->auto_remeasure, r->auto_switch, r->auto_spec_reps, r->reps,
                r->auto_quiet_reps, MTP_SETTLE, MTP_QUIET);
        if (r->plain_generated && r->auto_generated) {
            /* auto's time against the plain arm's time per token P: each part's excess over P per token it yielded */
            double P = r->plain_gen_s / r->plain_generated, tot = r->auto_generated * P;
            long tok_plain = r->auto_generated - r->auto_tok_spec - r->auto_settled;   /* settled steps are not timed */
            double rest = r->auto_gen_s - r->auto_step_plain_s - r->auto_step_spec_s - r->auto_rows_s - r->auto_unverified_s -
                          r->auto_settled * P;
            fprintf(f, "  auto arm against plain (%% of the plain arm's time for as many tokens): total %+.1f%% = plain steps "
                       "%+.1f%% (%ld tokens, %.1f us each vs plain %.1f us) + speculative steps %+.1f%% (%ld tokens) + "
                       "catch-up rows after plain steps %+.1f%% + drafts not verified %+.1f%% + settled steps (%ld tokens, untimed) and "
                       "the rest (first token, loop) %+.1f%%\n",
                    100 * (r->auto_gen_s - tot) / tot, 100 * (r->auto_step_plain_s - tok_plain * P) / tot,
                    tok_plain, tok_plain ? 1e6 * r->auto_step_plain_s / tok_plain : 0.0, 1e6 * P,
                    100 * (r->auto_step_spec_s - r->auto_tok_spec * P) / tot, r->auto_tok_spec, 100 * r->auto_rows_s / tot,
                    100 * r->auto_unverified_s / tot, r->auto_settled, 100 * rest / tot);
        }
    }
    if (r->profile) {
        static const char *kind[MTP_PASS_KINDS] = {"plain step", "verification", "draft (MTP)"};
        fprintf(f, "  profile: wall time per pass by phase (us; plain arm's steps, always arm's verifications and drafts)\n");
        fprintf(f, "    %-22s", "phase");
        for (int k = 0; k < MTP_PASS_KINDS; k++) fprintf(f, " %13s", kind[k]);
        fprintf(f, "\n");
        double tot[MTP_PASS_KINDS] = {0};
        for (int ph = 0; ph < N_PHASES; ph++) {
            fprintf(f, "    %-22s", model_phase_name((model_phase)ph));
            for (int k = 0; k < MTP_PASS_KINDS; k++) {
                double v = r->prof_passes[k] ? r->prof[k].ns[ph] / 1e3 / r->prof_passes[k] : 0;
                tot[k] += v;
                fprintf(f, " %13.1f", v);
            }
            fprintf(f, "\n");
        }
        fprintf(f, "    %-22s", "total");
        for (int k = 0; k < MTP_PASS_KINDS; k++) fprintf(f, " %13.1f", tot[k]);
        fprintf(f, "\n    (passes: %ld plain, %ld verifications, %ld drafts)\n", r->prof_passes[0], r->prof_passes[1],
                r->prof_passes[2]);
    }
    fprintf(f, "  drafts accepted: %ld of %ld (%.1f%%); %.2f tokens per verification step\n", r->accepted, r->drafted,
            r->drafted ? 100.0 * r->accepted / r->drafted : 0.0, r->steps ? (double)r->generated / r->steps : 0.0);
    fprintf(f, "  distinct routed experts per MoE layer: %.2f per plain step (1 token), %.2f per verification step "
               "(%d tokens): x%.2f the expert weights per pass\n",
            r->experts_plain, r->experts_verify, (r->draft_len > 0 ? r->draft_len : 1) + 1,
            r->experts_plain > 0 ? r->experts_verify / r->experts_plain : 0.0);
    fprintf(f, "  greedy output identical to plain decoding: %s\n",
            r->mismatches ? "NO (a bug: please report)" : "yes, every rep");
}

json_t *mtp_arm_json(const mtp_arm *r) {
    json_t *pl = json_array(), *mt = json_array(), *au = json_array();
    for (int i = 0; i < r->reps; i++) {
        json_array_append_new(pl, json_real(r->plain_ts[i]));
        json_array_append_new(mt, json_real(r->mtp_ts[i]));
        json_array_append_new(au, json_real(r->auto_ts[i]));
    }
    const mtp_costs *c = &r->always_cost;
    double plain = cli_median(r->plain_ts, r->reps);
    json_t *o = json_pack("{s:s, s:i, s:i, s:s, s:o, s:o, s:f, s:f, s:I, s:I, s:f, s:f, s:f, s:i}", "test", "mtp", "n_prompt",
                     r->n_prompt, "n_gen", r->n_gen, "prompts", r->prompt_source, "plain_samples_ts", pl,
                     "mtp_samples_ts", mt, "plain_median_ts", cli_median(r->plain_ts, r->reps), "mtp_median_ts",
                     cli_median(r->mtp_ts, r->reps), "drafted", (json_int_t)r->drafted, "accepted", (json_int_t)r->accepted,
                     "tokens_per_step", r->steps ? (double)r->generated / r->steps : 0.0, "experts_per_layer_plain",
                     r->experts_plain, "experts_per_layer_verify", r->experts_verify, "mismatches", r->mismatches);
    json_object_set_new(o, "auto_samples_ts", au);
    json_object_set_new(o, "auto_median_ts", json_real(cli_median(r->auto_ts, r->reps)));
    if (plain > 0 && c->n_verify && c->n_draft) {
        json_object_set_new(o, "verify_cost_vs_plain", json_real(c->verify_s / c->n_verify * plain));
        json_object_set_new(o, "draft_cost_vs_plain", json_real(c->draft_s / c->n_draft * plain));
    }
    return o;
}

void mtp_arm_free(mtp_arm *r) {
    free(r->plain_ts);
    free(r->mtp_ts);
    free(r->auto_ts);
    for (int a = 0; a < 3; a++) free(r->cpu_ts[a]);
    memset(r, 0, sizeof *r);
}
