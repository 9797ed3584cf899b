/* cmd_ppl.c - placeholder, filled in below. */
#include <stdio.h>
#include "commands.h"
int cmd_ppl(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "moe ppl: not yet\n"); return 1; }
