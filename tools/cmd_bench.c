/* cmd_bench.c - `moe bench` (placeholder until the next commit). */
#include <stdio.h>

#include "commands.h"

int cmd_bench(int argc, char **argv) {
    fprintf(stderr, "moe bench: not implemented yet\n");
    return 2;
}
