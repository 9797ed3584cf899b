/* moe.c - the one command line: `moe <command> [options]`.
 * Each command lives in tools/moe/cmd_<command>.c; this file only dispatches. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"generate", cmd_generate, "continue a prompt, streaming text (sampling, timing line)"},
    {"chat", cmd_chat, "multi-turn chat with the checkpoint's chat template (terminal or pipe)"},
    {"tokenize", cmd_tokenize, "text -> token ids (or ids -> text with --decode), one line per input"},
    {"route", cmd_route, "run a text through the model, report and draw what the router did"},
    {"ppl", cmd_ppl, "perplexity of a text file (routing knobs apply)"},
    {"logits", cmd_logits, "run token ids through a checkpoint, write logits/MTP logits/routing (safetensors)"},
    {"mkckpt", cmd_mkckpt, "write a random-weight checkpoint of any DeepSeek shape (or --plan its memory)"},
    {"convert", cmd_convert, "write a checkpoint as a GGUF file llama.cpp runs (f32, bf16, q8_0, q4_0)"},
    {"bench", cmd_bench, "prefill/decode tokens/s (llama-bench style), bytes per token, memory bandwidth, --profile"},
    {"eplb", cmd_eplb, "plan expert parallelism: which rank holds which experts, from moe route's counts (DeepSeek EPLB)"},
    {"serve", cmd_serve, "OpenAI-compatible HTTP server, batching its users, with a live routing page"},
};
static const int n_commands = (int)(sizeof commands / sizeof commands[0]);

static void usage(FILE *f) {
    fprintf(f, "usage: moe <command> [options]   (moe <command> --help for each)\n\ncommands:\n");
    for (int i = 0; i < n_commands; i++) fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 0; i < n_commands; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "moe: unknown command '%s' (moe --help lists the commands)\n", argv[1]);
    return 2;
}
