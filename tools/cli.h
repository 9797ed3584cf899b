/* cli.h - small helpers shared by the subcommands: option values, id lists,
 * the model loading banner. Tools may exit; the library never does. */
#ifndef MOE_CLI_H
#define MOE_CLI_H

#include "model.h"

/* Parses "5,17,300" into a malloc'ed array; returns count, or -1 with a message in err. */
int cli_parse_ids(const char *s, int **out, moe_error *err);

/* Value of option argv[*i] (advances *i); prints an error and returns NULL if missing. */
const char *cli_value(int argc, char **argv, int *i, const char *cmd);

/* Parses an integer option value in [lo, hi]; prints an error naming opt and returns 0 on failure. */
int cli_int(const char *s, long lo, long hi, const char *cmd, const char *opt, long *out);

/* Loads a model with a progress line on stderr for long loads, then prints one
 * summary line (shape, dtype, resident bytes, KV cache). Returns MOE_OK or prints the error. */
int cli_load_model(moe_model *m, const char *dir, const model_options *opt, const char *cmd, int quiet);

/* Monotonic seconds. */
double cli_now(void);

#endif
