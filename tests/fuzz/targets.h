/* targets.h - the fuzz targets, one function per parser (tests/fuzz/README.md).
 *
 * Each takes arbitrary bytes, runs them through one parser (and, when the parse
 * succeeds, through what uses its result), checks the invariants that must hold
 * either way (an error is one non-empty line; accepted data stays inside its
 * buffers) and abort()s when one does not. fuzz_<name>.c wraps one of them as a
 * libFuzzer target; tests/test_fuzz_regress.c replays tests/fuzz/regress/<name>/
 * and tests/fuzz/corpus/<name>/ through them in the normal test builds.
 *
 * Fixtures are read relative to the repository root (run from there), or from
 * $MOE_FUZZ_ROOT.
 */
#ifndef MOE_FUZZ_TARGETS_H
#define MOE_FUZZ_TARGETS_H

#include <stddef.h>
#include <stdint.h>

typedef int (*fuzz_fn)(const uint8_t *data, size_t size);

int fuzz_safetensors(const uint8_t *data, size_t size);       /* a .safetensors file */
int fuzz_st_index(const uint8_t *data, size_t size);          /* model.safetensors.index.json vs 2 shards in memory */
int fuzz_config(const uint8_t *data, size_t size);            /* config.json */
int fuzz_tokenizer_json(const uint8_t *data, size_t size);    /* tokenizer.json */
int fuzz_tokenizer_config(const uint8_t *data, size_t size);  /* tokenizer_config.json beside a tiny tokenizer.json */
int fuzz_encode(const uint8_t *data, size_t size);            /* text through DeepSeek-V3's tokenizer */
int fuzz_chat(const uint8_t *data, size_t size);              /* a chat template, rendered over a fixed conversation */
int fuzz_eplb_plan(const uint8_t *data, size_t size);         /* plan.json of moe eplb (engine/ep/eplb.h) */
int fuzz_eplb_counts(const uint8_t *data, size_t size);       /* routing counts CSV, then planned on 1-2 ranks */
int fuzz_gguf(const uint8_t *data, size_t size);              /* a .gguf file: header, metadata, tensor infos, config, tokenizer */
int fuzz_serve_request(const uint8_t *data, size_t size);     /* a moe serve request body (chat or completion by parity) */

typedef struct { const char *name; fuzz_fn fn; } fuzz_target;
extern const fuzz_target fuzz_targets[];   /* terminated by {NULL, NULL} */

/* Frees the fixtures (the V3 tokenizer, ...), for leak checkers. */
void fuzz_cleanup(void);

#endif
