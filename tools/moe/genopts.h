/* genopts.h - the options `generate` and `chat` share: model, threads, context,
 * weight format, sampling. */
#ifndef MOE_GENOPTS_H
#define MOE_GENOPTS_H

#include <stdio.h>

#include "generate.h"
#include "model.h"
#include "sampler.h"

typedef struct {
    const char *model_dir;
    model_options model;
    sampler_params sampling;
    int seed_given;
    int max_new;          /* -n */
    int verbose;
    int mtp;              /* 0 off, MTP_AUTO (--mtp), MTP_ALWAYS (--mtp-mode always) */
    int draft_len;        /* --draft N: chained drafts per speculative step (1..MTP_DRAFT_MAX; 0: 1) */
} genopts;

void genopts_defaults(genopts *o);
/* Tries to consume argv[*i] (and its value); returns 1 if consumed, 0 if not ours, -1 on a bad value. */
int genopts_parse(genopts *o, int argc, char **argv, int *i, const char *cmd);
/* Parses --mtp-mode's value (always | auto) into *mode; prints an error and returns -1 if neither. */
int genopts_mtp_mode(const char *v, const char *cmd, int *mode);
/* Help text of the shared options. */
void genopts_usage(FILE *f);
/* Final checks and derived values (a random seed when none was given). */
int genopts_finish(genopts *o, const char *cmd);

#endif
