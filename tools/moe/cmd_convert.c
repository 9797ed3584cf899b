/* cmd_convert.c - `moe convert`: a checkpoint as a GGUF file of llama.cpp's deepseek2
 * architecture (engine/io/gguf_export.h), so llama.cpp and its tools run the same weights.
 *
 *   moe convert -m DIR -o FILE.gguf [--type f32|bf16|q8_0|q4_0]
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "commands.h"
#include "gguf_export.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe convert -m DIR -o FILE.gguf [--type T]\n"
            "\n"
            "Writes the checkpoint in DIR as a GGUF file llama.cpp loads (architecture deepseek2: its\n"
            "tensor names, experts stacked per layer, kv_b split into attn_k_b + attn_v_b, the tokenizer\n"
            "from DIR/tokenizer.json); the MTP module is left out, as llama.cpp's converter does.\n"
            "The whole output is built in memory before it is written (about the file's size).\n"
            "\n"
            "options:\n"
            "  -m, --model DIR   checkpoint directory (config.json, *.safetensors, tokenizer.json)\n"
            "  -o, --out FILE    the .gguf file to write\n"
            "  --type T          type of the 2-D weights: f32 | bf16 (default) | q8_0 | q4_0\n"
            "                    (norms and the router stay f32, as llama.cpp's converter keeps them)\n"
            "  -h, --help\n");
}

int cmd_convert(int argc, char **argv) {
    const char *dir = NULL, *out = NULL, *type_name = "bf16";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(dir = cli_value(argc, argv, &i, "convert"))) return 2; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--out")) { if (!(out = cli_value(argc, argv, &i, "convert"))) return 2; }
        else if (!strcmp(a, "--type")) { if (!(type_name = cli_value(argc, argv, &i, "convert"))) return 2; }
        else { fprintf(stderr, "moe convert: unknown option '%s' (see moe convert --help)\n", a); return 2; }
    }
    if (!dir || !out) { fprintf(stderr, "moe convert: -m DIR and -o FILE.gguf are required\n"); return 2; }
    static const struct { const char *name; uint32_t type; } types[] = {
        {"f32", GGML_TYPE_F32}, {"bf16", GGML_TYPE_BF16}, {"q8_0", GGML_TYPE_Q8_0}, {"q4_0", GGML_TYPE_Q4_0}};
    int t = -1;
    for (int k = 0; k < 4; k++) if (!strcmp(type_name, types[k].name)) t = k;
    if (t < 0) { fprintf(stderr, "moe convert: --type must be f32, bf16, q8_0 or q4_0, got \"%s\"\n", type_name); return 2; }
    moe_session e;
    model_options opt = { .dtype = WEIGHTS_F32, .max_seq = 1, .batch_max = 1, .n_threads = 1 };
    if (cli_load_engine(&e, dir, &opt, 1, "convert", 1)) return 1;
    char tok[4096];
    snprintf(tok, sizeof tok, "%s/tokenizer.json", dir);
    struct stat st;
    int has_tok = stat(tok, &st) == 0;
    moe_error err = {{0}};
    double t0 = cli_now();
    int rc = gguf_export_model(&e.m, has_tok ? dir : NULL, types[t].type, out, &err);
    session_close(&e);
    if (rc) { fprintf(stderr, "moe convert: %s\n", err.msg); return 1; }
    if (stat(out, &st) == 0)
        fprintf(stderr, "moe convert: wrote %s: %s, %.1f MiB%s in %.2f s\n", out, type_name, st.st_size / 1048576.0,
                has_tok ? ", with the tokenizer" : ", no tokenizer.json: tokenizer.ggml.model \"none\"", cli_now() - t0);
    return 0;
}
