/* genopts.c - shared options of `generate` and `chat` (see genopts.h). */
#include "genopts.h"
#include "cli_ep.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

void genopts_defaults(genopts *o) {
    memset(o, 0, sizeof *o);
    o->sampling.temperature = 0.8f;
    o->sampling.top_k = 40;
    o->sampling.top_p = 0.95f;
    o->sampling.min_p = 0.05f;
    o->max_new = 256;
}

void genopts_usage(FILE *f) {
    fprintf(f,
            "  -m, --model DIR      checkpoint directory (config.json, *.safetensors, tokenizer.json)\n"
            "  -n N                 generate at most N tokens (default 256)\n"
            "  --temp T             temperature (default 0.8; 0 = greedy)\n"
            "  --top-k K            keep the K most likely tokens (default 40; 0 = off)\n"
            "  --top-p P            nucleus sampling mass (default 0.95; 1 = off)\n"
            "  --min-p M            drop tokens below M x the top probability (default 0.05; 0 = off)\n"
            "  --seed S             random seed (default: from the clock, printed with -v)\n"
            "  --greedy             same as --temp 0\n"
            "  --ctx N              context length in tokens (default: min(max_position_embeddings, 4096))\n"
            "  -v, --verbose        print the model summary and seed\n"
            "  --mtp                speculative decoding with the MTP module (greedy output unchanged, sampled\n"
            "                       output keeps its distribution); it measures what a draft and a verification\n"
            "                       cost and drafts only while that pays (README: MTP)\n"
            "  --mtp-mode M         auto (the default of --mtp) | always (draft every step); implies --mtp\n"
            "  --draft N            chained drafts per speculative step, verified in one (N+1)-token pass\n"
            "                       (default 1, at most 4); implies --mtp\n");
    cli_model_options_usage(f);
}

int genopts_parse(genopts *o, int argc, char **argv, int *i, const char *cmd) {
    const char *a = argv[*i], *v;
    long x;
    char *end;
#define VALUE() do { if (!(v = cli_value(argc, argv, i, cmd))) return -1; } while (0)
#define FLOATV(dst) do { VALUE(); dst = strtof(v, &end); \
        if (!*v || *end) { fprintf(stderr, "moe %s: %s needs a number, got \"%s\"\n", cmd, a, v); return -1; } } while (0)
    if (!strcmp(a, "-m") || !strcmp(a, "--model")) { VALUE(); o->model_dir = v; return 1; }
    if (!strcmp(a, "-n")) { VALUE(); if (!cli_int(v, 0, 1 << 24, cmd, a, &x)) return -1; o->max_new = (int)x; return 1; }
    if (!strcmp(a, "--temp")) { FLOATV(o->sampling.temperature); return 1; }
    if (!strcmp(a, "--top-p")) { FLOATV(o->sampling.top_p); return 1; }
    if (!strcmp(a, "--min-p")) { FLOATV(o->sampling.min_p); return 1; }
    if (!strcmp(a, "--top-k")) { VALUE(); if (!cli_int(v, 0, 1 << 30, cmd, a, &x)) return -1; o->sampling.top_k = (int)x; return 1; }
    if (!strcmp(a, "--seed")) {
        VALUE();
        unsigned long long s = strtoull(v, &end, 10);
        if (!*v || *end) { fprintf(stderr, "moe %s: --seed needs a non-negative integer\n", cmd); return -1; }
        o->sampling.seed = s;
        o->seed_given = 1;
        return 1;
    }
    if (!strcmp(a, "--greedy")) { o->sampling.temperature = 0.0f; return 1; }
    if (!strcmp(a, "--ctx")) { VALUE(); if (!cli_int(v, 1, 1 << 24, cmd, a, &x)) return -1; o->model.max_seq = (int)x; return 1; }
    if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) { o->verbose = 1; return 1; }
    if (!strcmp(a, "--mtp")) { if (!o->mtp) o->mtp = MTP_AUTO; return 1; }
    if (!strcmp(a, "--mtp-mode")) { VALUE(); return genopts_mtp_mode(v, cmd, &o->mtp) ? -1 : 1; }
    if (!strcmp(a, "--draft")) {
        VALUE();
        if (!cli_int(v, 1, MTP_DRAFT_MAX, cmd, a, &x)) return -1;
        o->draft_len = (int)x;
        if (!o->mtp) o->mtp = MTP_AUTO;
        return 1;
    }
    return cli_model_option(argc, argv, i, cmd, &o->model);
#undef VALUE
#undef FLOATV
}

int genopts_mtp_mode(const char *v, const char *cmd, int *mode) {
    if (!strcmp(v, "always")) *mode = MTP_ALWAYS;
    else if (!strcmp(v, "auto")) *mode = MTP_AUTO;
    else { fprintf(stderr, "moe %s: --mtp-mode must be always or auto, got \"%s\"\n", cmd, v); return -1; }
    return 0;
}

int genopts_finish(genopts *o, const char *cmd) {
    if (!o->model_dir) {
        fprintf(stderr, "moe %s: -m DIR is required (see moe %s --help)\n", cmd, cmd);
        return -1;
    }
    moe_error err = {{0}};
    if (sampler_params_check(&o->sampling, &err)) {
        fprintf(stderr, "moe %s: %s\n", cmd, err.msg);
        return -1;
    }
    const router_options *r = &o->model.routing;
    if (r->experts_per_token || r->no_group_limit || r->no_route_bias) {   /* check against the config, say so */
        moe_config cfg;
        if (model_config_load(&cfg, o->model_dir, &err)) { fprintf(stderr, "moe %s: %s\n", cmd, err.msg); return -1; }
        if (cli_route_knobs_check(&cfg, r, cmd)) return -1;
    }
    if (!o->seed_given) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        o->sampling.seed = (unsigned long long)ts.tv_sec * 1000003ull ^ (unsigned long long)ts.tv_nsec;
        uint64_t seed = o->sampling.seed;
        cli_ep_bcast_u64(&seed, cmd);   /* --ep: rank 0's clock seed on every rank */
        o->sampling.seed = seed;
    }
    return 0;
}
