/* cmd_eplb.c - `moe eplb`: plan which rank holds which experts (expert parallelism) from
 * the routing counts `moe route` writes, with DeepSeek's EPLB algorithm (engine/ep/eplb.h),
 * and show the expected load per rank before (contiguous default blocks) and after.
 *
 *   moe eplb --counts PREFIX.counts.csv --ranks N [--redundant R] [--groups G] [--nodes Nn]
 *            [-m DIR] [-o plan.json] [-q]
 *   moe eplb --check plan.json [--counts CSV] [-m DIR] [--ranks N]
 *
 * Legend: L MoE layers, E experts, N ranks, R redundant experts, G router groups, Nn nodes;
 * load = (token, choice) pairs a rank's experts get, a replicated expert's split evenly.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "config.h"
#include "eplb.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe eplb --counts PREFIX.counts.csv --ranks N [options]\n"
            "       moe eplb --check plan.json [--counts CSV] [-m DIR] [--ranks N]\n"
            "\n"
            "Plans expert parallelism: which of N ranks (processes, one per machine) holds which\n"
            "routed experts of every MoE layer, with DeepSeek's EPLB (replicate the hottest experts,\n"
            "pack experts onto ranks with equal counts; hierarchical when --nodes divides the groups).\n"
            "The counts are what `moe route -o PREFIX` writes (layer_id,expert_id,count). Prints per\n"
            "layer the largest and the mean expected load of a rank, max/mean, for the default\n"
            "placement (contiguous blocks of E/N experts, as --numa partition cuts them) and the plan.\n"
            "docs/ep.md describes plan.json.\n"
            "\n"
            "options:\n"
            "  --counts FILE     routing counts (moe route's PREFIX.counts.csv)\n"
            "  --ranks N         ranks (1..%d)\n"
            "  --redundant R     extra replicas of hot experts over all ranks (default 0);\n"
            "                    E + R must be a multiple of N\n"
            "  --groups G        router groups for the hierarchical policy (default: -m's n_group, else 1)\n"
            "  --nodes Nn        ranks come in Nn nodes of N/Nn with a faster network inside (default 1)\n"
            "  -m, --model DIR   check the counts (and --check's plan) against DIR's config.json\n"
            "  -o FILE           write the plan (plan.json)\n"
            "  --check FILE      validate a plan (one line per problem); with --counts, print its load\n"
            "  -q, --quiet       no per-layer table (the summary line only)\n"
            "  -h, --help\n",
            EPLB_MAX_RANKS);
}

/* The per-layer table and the summary; `plan` may be NULL (the default only). */
static void print_balance(const eplb_counts *c, const eplb_plan *def, const eplb_plan *plan, int quiet) {
    double sum_mean = 0, sum_dmax = 0, sum_pmax = 0;
    if (!quiet)
        printf("%-6s %10s %12s %12s %8s %12s %8s\n", "layer", "tokens", "mean/rank", "default max", "max/mean",
               plan ? "plan max" : "", plan ? "max/mean" : "");
    for (int l = 0; l < c->n_layers; l++) {
        double dmax, mean, pmax = 0, pmean = 0;
        eplb_layer_balance(def, c, l, &dmax, &mean);
        if (plan) eplb_layer_balance(plan, c, l, &pmax, &pmean);
        sum_mean += mean;
        sum_dmax += dmax;
        sum_pmax += pmax;
        if (quiet) continue;
        printf("%-6d %10.0f %12.1f %12.1f %8.3f", c->layer_id[l], mean * def->n_ranks, mean, dmax,
               mean > 0 ? dmax / mean : 1.0);
        if (plan) printf(" %12.1f %8.3f", pmax, pmean > 0 ? pmax / pmean : 1.0);
        if (plan && plan->kept_default[l]) printf("  (EPLB's packing was worse here: the default blocks are kept)");
        printf("\n");
    }
    printf("all %d layers on %d ranks: max/mean load %.3f with the default blocks", c->n_layers, def->n_ranks,
           sum_mean > 0 ? sum_dmax / sum_mean : 1.0);
    if (plan) printf(", %.3f with the plan", sum_mean > 0 ? sum_pmax / sum_mean : 1.0);
    printf("  (sum over layers of the busiest rank's load / sum of the mean)\n");
}

/* The model's MoE layers (MTP included) as a mask. */
static unsigned char *model_moe_mask(const moe_config *cfg, int *Lt) {
    *Lt = cfg->num_hidden_layers + cfg->num_nextn_predict_layers;
    unsigned char *m = calloc((size_t)*Lt + 1, 1);
    for (int l = 0; m && l < *Lt; l++) m[l] = (unsigned char)config_layer_is_moe(cfg, l);
    return m;
}

static int counts_match_model(const eplb_counts *c, const moe_config *cfg, const char *counts, const char *dir) {
    int Lt;
    unsigned char *mask = model_moe_mask(cfg, &Lt);
    if (!mask) { fprintf(stderr, "moe eplb: out of memory\n"); return 1; }
    int n_moe = 0, rc = 0;
    for (int l = 0; l < Lt; l++) n_moe += mask[l];
    if (c->n_experts != cfg->n_routed_experts) {
        fprintf(stderr, "moe eplb: %s has %d experts per layer but %s has %d\n", counts, c->n_experts, dir,
                cfg->n_routed_experts);
        rc = 1;
    } else if (c->n_layers != n_moe) {
        fprintf(stderr, "moe eplb: %s has %d MoE layers but %s has %d (MTP included)\n", counts, c->n_layers, dir, n_moe);
        rc = 1;
    } else {
        for (int l = 0, k = 0; l < Lt && !rc; l++)
            if (mask[l] && c->layer_id[k++] != l) {
                fprintf(stderr, "moe eplb: %s: layer %d is not an MoE layer of %s\n", counts, c->layer_id[k - 1], dir);
                rc = 1;
            }
    }
    free(mask);
    return rc;
}

int cmd_eplb(int argc, char **argv) {
    const char *counts_path = NULL, *out = NULL, *check = NULL, *dir = NULL;
    long ranks = 0, redundant = 0, groups = 0, nodes = 1;
    int quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--counts")) { if (!(counts_path = cli_value(argc, argv, &i, "eplb"))) return 2; }
        else if (!strcmp(a, "-o")) { if (!(out = cli_value(argc, argv, &i, "eplb"))) return 2; }
        else if (!strcmp(a, "--check")) { if (!(check = cli_value(argc, argv, &i, "eplb"))) return 2; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(dir = cli_value(argc, argv, &i, "eplb"))) return 2; }
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) quiet = 1;
        else if (!strcmp(a, "--ranks")) {
            if (!(v = cli_value(argc, argv, &i, "eplb")) || !cli_int(v, 1, EPLB_MAX_RANKS, "eplb", a, &ranks)) return 2;
        } else if (!strcmp(a, "--redundant")) {
            if (!(v = cli_value(argc, argv, &i, "eplb")) || !cli_int(v, 0, EPLB_MAX_EXPERTS, "eplb", a, &redundant)) return 2;
        } else if (!strcmp(a, "--groups")) {
            if (!(v = cli_value(argc, argv, &i, "eplb")) || !cli_int(v, 1, EPLB_MAX_EXPERTS, "eplb", a, &groups)) return 2;
        } else if (!strcmp(a, "--nodes")) {
            if (!(v = cli_value(argc, argv, &i, "eplb")) || !cli_int(v, 1, EPLB_MAX_RANKS, "eplb", a, &nodes)) return 2;
        } else {
            fprintf(stderr, "moe eplb: unknown option '%s' (see moe eplb --help)\n", a);
            return 2;
        }
    }
    if (!check && !counts_path) { fprintf(stderr, "moe eplb: --counts FILE is required (see moe eplb --help)\n"); return 2; }
    if (!check && !ranks) { fprintf(stderr, "moe eplb: --ranks N is required (see moe eplb --help)\n"); return 2; }

    moe_error err = {{0}};
    moe_config cfg;
    if (dir) {
        if (config_load(&cfg, dir, &err)) { fprintf(stderr, "moe eplb: %s\n", err.msg); return 1; }
        if (cfg.n_routed_experts < 1) { fprintf(stderr, "moe eplb: %s is a dense model (no routed experts)\n", dir); return 1; }
        if (!groups) groups = cfg.n_group;
    }
    if (!groups) groups = 1;
    eplb_counts c = {0};
    if (counts_path) {
        if (eplb_counts_load(&c, counts_path, &err)) { fprintf(stderr, "moe eplb: %s\n", err.msg); return 1; }
        if (dir && counts_match_model(&c, &cfg, counts_path, dir)) { eplb_counts_free(&c); return 1; }
    }
    int rc = 1;
    eplb_plan def = {0}, plan = {0};
    if (check) {
        if (eplb_plan_load(&plan, check, &err)) { fprintf(stderr, "moe eplb: %s\n", err.msg); goto done; }
        if (ranks && plan.n_ranks != ranks) {
            fprintf(stderr, "moe eplb: %s is a plan for %d ranks, not %ld\n", check, plan.n_ranks, ranks);
            goto done;
        }
        if (dir) {
            int Lt;
            unsigned char *mask = model_moe_mask(&cfg, &Lt);
            int bad = !mask || eplb_plan_matches_model(&plan, mask, Lt, cfg.n_routed_experts, 0, check, &err);
            free(mask);
            if (bad) { fprintf(stderr, "moe eplb: %s\n", mask ? err.msg : "out of memory"); goto done; }
        }
        if (counts_path) {
            if (eplb_plan_matches_counts(&plan, &c, check, &err)) { fprintf(stderr, "moe eplb: %s\n", err.msg); goto done; }
            if (eplb_plan_default(&def, &c, plan.n_ranks, plan.n_groups, &err)) {
                fprintf(stderr, "moe eplb: %s\n", err.msg);
                goto done;
            }
            print_balance(&c, &def, &plan, quiet);
        }
        printf("%s: a valid plan: %d MoE layers, %d experts + %d redundant on %d ranks\n", check, plan.n_layers,
               plan.n_experts, plan.n_slots - plan.n_experts, plan.n_ranks);
        rc = 0;
        goto done;
    }
    if (eplb_plan_default(&def, &c, (int)ranks, (int)groups, &err) ||
        eplb_rebalance(&plan, &c, (int)ranks, (int)redundant, (int)groups, (int)nodes, &err)) {
        fprintf(stderr, "moe %s\n", err.msg);
        goto done;
    }
    print_balance(&c, &def, &plan, quiet);
    printf("policy: %s (groups %d, nodes %d), %d slots per rank%s\n",
           plan.n_nodes > 1 || plan.n_groups > 1 ? "hierarchical" : "global", plan.n_groups, plan.n_nodes,
           plan.n_slots / plan.n_ranks,
           nodes > 1 && plan.n_nodes == 1 ? " (the groups do not divide over --nodes: eplb.py's global policy)" : "");
    if (out) {
        if (eplb_plan_write_json(&plan, &c, &def, out, &err)) { fprintf(stderr, "moe eplb: %s\n", err.msg); goto done; }
        fprintf(stderr, "moe eplb: wrote %s\n", out);
    }
    rc = 0;
done:
    eplb_plan_free(&plan);
    eplb_plan_free(&def);
    eplb_counts_free(&c);
    return rc;
}
