/* cmd_ppl.c - `moe ppl`: perplexity of a text, so a routing knob's cost can be measured.
 *
 *   moe ppl -m DIR (-f FILE | -p TEXT | --tokens LIST) [--ctx N] [--batch N]
 *           [--experts-per-token K] [--no-group-limit] [--no-route-bias]
 *
 * Legend:
 *   tokens    the text encoded, BOS first (tokenizer config), t_0 .. t_{T-1}
 *   windows   N = --ctx positions each, overlapping by one token (engine/analysis/perplexity.h)
 *   output    tokens, predicted tokens, nats/token = nll / predicted, perplexity = exp(nats/token)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "model.h"
#include "perplexity.h"
#include "tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe ppl -m DIR (-f FILE | -p TEXT | --tokens LIST) [options]\n"
            "\n"
            "Perplexity of the text (BOS first): every token after the first is predicted once, inside\n"
            "windows of --ctx positions that overlap by one token. Prints tokens, nats/token, perplexity.\n"
            "\n"
            "options:\n"
            "  -m, --model DIR          checkpoint directory (config.json, safetensors, tokenizer.json)\n"
            "  -f FILE | -p TEXT        the text (BOS first; without tokenizer.json its bytes are the ids)\n"
            "  --tokens LIST            token ids instead of text\n"
            "  --ctx N                  window length (default: the text, at most 4096 / the model's limit)\n"
            "  --batch N                tokens per forward chunk (default 64)\n"
            "  --experts-per-token K    route each token to K experts instead of the config's\n"
            "  --no-group-limit         ignore n_group/topk_group: choose from all experts\n"
            "  --no-route-bias          choose without e_score_correction_bias\n"
            "  --dtype auto|f32|bf16|q8|q4 compute format of the weights (default auto)\n"
            "  --threads N              (default: one per core)\n"
            "  -h, --help\n");
}

int cmd_ppl(int argc, char **argv) {
    const char *dir = NULL, *prompt = NULL, *file = NULL, *ids = NULL;
    long ctx = 0;
    model_options opt = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        int k = cli_model_option(argc, argv, &i, "ppl", &opt);
        if (k < 0) return 2;
        if (k) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(dir = cli_value(argc, argv, &i, "ppl"))) return 2; }
        else if (!strcmp(a, "-p")) { if (!(prompt = cli_value(argc, argv, &i, "ppl"))) return 2; }
        else if (!strcmp(a, "-f")) { if (!(file = cli_value(argc, argv, &i, "ppl"))) return 2; }
        else if (!strcmp(a, "--tokens")) { if (!(ids = cli_value(argc, argv, &i, "ppl"))) return 2; }
        else if (!strcmp(a, "--ctx")) {
            if (!(v = cli_value(argc, argv, &i, "ppl")) || !cli_int(v, 2, 1 << 20, "ppl", a, &ctx)) return 2;
        } else {
            fprintf(stderr, "moe ppl: unknown option '%s' (see moe ppl --help)\n", a);
            return 2;
        }
    }
    if (!dir) { fprintf(stderr, "moe ppl: -m DIR is required (see moe ppl --help)\n"); return 2; }

    moe_error err = {{0}};
    moe_config cfg;
    if (model_config_load(&cfg, dir, &err)) { fprintf(stderr, "moe ppl: %s\n", err.msg); return 1; }
    if (cli_route_knobs_check(&cfg, &opt.routing, "ppl")) return 1;
    int *tokens = NULL, T = 0;
    struct tokenizer *tok = NULL;
    if (cli_input_tokens(dir, &cfg, ids, prompt, file, "ppl", &tokens, &T, &tok)) return 1;
    tokenizer_free(tok);
    if (T < 2) {
        fprintf(stderr, "moe ppl: the input is %d token: nothing to predict (need at least 2)\n", T);
        free(tokens);
        return 1;
    }
    int limit = cfg.max_position_embeddings < 4096 ? cfg.max_position_embeddings : 4096;
    int S = ctx > 0 ? (int)ctx : (T < limit ? T : limit);
    if (S > T) S = T;
    opt.max_seq = S;
    moe_session e;
    if (cli_load_engine(&e, dir, &opt, 1, "ppl", 0)) { free(tokens); return 1; }
    int rc = 1;
    perplexity_result res;
    double t0 = cli_now();
    if (perplexity_eval(&e.m, &e.c, &e.kv, 0, tokens, T, S, &res, &err)) {
        fprintf(stderr, "moe ppl: %s\n", err.msg);
        goto done;
    }
    double secs = cli_now() - t0, npt = res.nll / res.predicted;
    printf("ppl: %d tokens, %ld predicted, %.4f nats/token, perplexity %.4f  (ctx %d, %d window%s, top-%d, %.1f s)\n", T,
           res.predicted, npt, exp(npt), S, res.windows, res.windows == 1 ? "" : "s", e.m.K, secs);
    rc = 0;
done:
    free(tokens);
    session_close(&e);
    return rc;
}
