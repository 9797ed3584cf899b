// llamacpp_logits.c — run token ids through a GGUF with llama.cpp (libllama) and write the
// logits of every position as raw little-endian f32 [T][V], so tools/bench/vs_check.py can
// compare them with `moe logits` on the checkpoint the GGUF was converted from. It checks that
// tools/bench/to_gguf.py hands llama.cpp the same model, so the speed comparison is one of two
// engines on one function. Built by `tools/bench/vs_llamacpp.sh setup`, not by the Makefile:
//   cc -O2 llamacpp_logits.c -I$LLAMA/include -I$LLAMA/ggml/include -L$LLAMA/build/bin -lllama
//   llamacpp_logits MODEL.gguf 5,17,300 OUT.f32
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void log_quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf TOKEN,TOKEN,... OUT.f32\n", argv[0]);
        return 2;
    }
    llama_token tokens[4096];
    int n_tokens = 0;
    for (char *s = argv[2], *end; *s && n_tokens < 4096; s = (*end == ',') ? end + 1 : end) {
        long v = strtol(s, &end, 10);
        if (end == s) { fprintf(stderr, "%s: bad token list\n", argv[2]); return 2; }
        tokens[n_tokens++] = (llama_token)v;
    }

    llama_log_set(log_quiet, NULL);
    llama_backend_init();
    struct llama_model *model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) { fprintf(stderr, "%s: cannot load\n", argv[1]); return 1; }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512;
    cp.n_batch = cp.n_ubatch = 512;
    cp.n_threads = cp.n_threads_batch = 2;
    // exact f32 attention: the default f16 cache and flash attention (which rounds Q and K to
    // f16 on the CPU) move the logits by ~3e-4 of their scale; without them it is ~4e-7
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "%s: cannot make a context\n", argv[1]); return 1; }
    int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    struct llama_batch batch = llama_batch_init(n_tokens, 0, 1);
    for (int t = 0; t < n_tokens; t++) {
        batch.token[t] = tokens[t];
        batch.pos[t] = t;
        batch.n_seq_id[t] = 1;
        batch.seq_id[t][0] = 0;
        batch.logits[t] = 1;
    }
    batch.n_tokens = n_tokens;
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "llama_decode failed\n"); return 1; }

    FILE *out = fopen(argv[3], "wb");
    if (!out) { perror(argv[3]); return 1; }
    for (int t = 0; t < n_tokens; t++)
        fwrite(llama_get_logits_ith(ctx, t), sizeof(float), (size_t)n_vocab, out);
    fclose(out);
    printf("%d tokens x %d logits -> %s\n", n_tokens, n_vocab, argv[3]);

    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
