/* cli.h - small helpers shared by the subcommands: option values, id lists,
 * the model loading banner. Tools may exit; the library never does. */
#ifndef MOE_CLI_H
#define MOE_CLI_H

#include <stdio.h>

#include "session.h"

/* Parses "5,17,300" into a malloc'ed array; returns count, or -1 with a message in err. */
int cli_parse_ids(const char *s, int **out, moe_error *err);

/* Value of option argv[*i] (advances *i); prints an error and returns NULL if missing. */
const char *cli_value(int argc, char **argv, int *i, const char *cmd);

/* Parses an integer option value in [lo, hi]; prints an error naming opt and returns 0 on failure. */
int cli_int(const char *s, long lo, long hi, const char *cmd, const char *opt, long *out);


/* Loads a model with a progress line on stderr for long loads, makes its context and a
 * KV cache of n_slots slots, then prints one summary line (shape, dtype, resident bytes,
 * KV cache). Returns MOE_OK or prints the error. */
int cli_load_engine(moe_session *e, const char *dir, const model_options *opt, int n_slots, const char *cmd, int quiet);

/* The input as token ids, from exactly one of: ids ("5,17,300", used as given), prompt
 * text, or a text file. Text is encoded with DIR's tokenizer.json, BOS first when the
 * tokenizer config says so; a checkpoint without tokenizer.json (the random test
 * checkpoints) gets the text's UTF-8 bytes as ids, BOS first, and one note line on
 * stderr. An empty text is an error. On success *tok is the tokenizer (or NULL in byte
 * mode; caller frees both). Prints the error and returns MOE_FAIL otherwise. */
struct tokenizer;
int cli_input_tokens(const char *dir, const moe_config *cfg, const char *ids, const char *prompt, const char *file,
                     const char *cmd, int **tokens, int *n, struct tokenizer **tok);

/* Printable text of one token (byte mode: the byte), into buf. */
const char *cli_token_text(const struct tokenizer *tok, int id, char *buf, size_t cap);

/* Routing knobs shared by route / ppl: --experts-per-token K, --no-group-limit,
 * --no-route-bias. Returns 1 if argv[*i] was a knob (consumed), 0 if not, -1 on a bad value. */
int cli_route_knob(int argc, char **argv, int *i, const char *cmd, router_options *r);
/* Checks the knobs against the checkpoint (one error line, MOE_FAIL) and prints one
 * line on stderr per active knob. */
int cli_route_knobs_check(const moe_config *cfg, const router_options *r, const char *cmd);

/* Options that shape how a model is loaded and run, shared by every command that
 * loads one: -t/--threads N, --dtype auto|f32|bf16|q8|q4, --batch N, --numa MODE, and the
 * routing knobs. Returns 1 if argv[*i] was one (consumed, with its value), 0 if not,
 * -1 on a bad value (after printing one error line). */
/* --draft-dtype's value: same (WEIGHTS_AUTO) or a weight format; prints an error and returns -1 if bad. */
int cli_draft_dtype(const char *v, const char *cmd, weights_dtype *out);
int cli_model_option(int argc, char **argv, int *i, const char *cmd, model_options *o);
/* --act-lowp: turns the kernels' low-precision activations on and says so on stderr. */
void cli_act_lowp(const char *cmd);
/* Help lines for those options. */
void cli_model_options_usage(FILE *f);

/* Median of x[0..n) (0 when n is 0); x is not changed. */
double cli_median(const double *x, int n);

/* Monotonic seconds. */
double cli_now(void);

#endif
