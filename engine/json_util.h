/* json_util.h - small helpers over jansson for reading config-like files:
 * whole-file reading and typed field access with one-line errors. */
#ifndef MOE_JSON_UTIL_H
#define MOE_JSON_UTIL_H

#include <jansson.h>
#include <stddef.h>

#include "error.h"

/* Reads the whole file into a malloc'ed, NUL-terminated buffer (caller frees).
 * max_bytes bounds the size; larger files are an error. */
int file_read_all(const char *path, size_t max_bytes, char **out, size_t *len, moe_error *err);

/* Parses JSON text; on error the message names `path`, line and column. Caller json_decref()s. */
json_t *json_parse_text(const char *text, size_t len, const char *path, moe_error *err);

/* Typed getters. Missing key (or null) -> *out = def and returns MOE_OK when optional,
 * error when required. A present value of the wrong type is always an error. */
int json_get_int(const json_t *obj, const char *key, int required, long long def, long long lo, long long hi,
                 long long *out, const char *path, moe_error *err);
int json_get_double(const json_t *obj, const char *key, int required, double def, double *out,
                    const char *path, moe_error *err);
int json_get_bool(const json_t *obj, const char *key, int required, int def, int *out, const char *path,
                  moe_error *err);
/* Copies a string value into buf (size n); missing -> def. */
int json_get_string(const json_t *obj, const char *key, int required, const char *def, char *buf, size_t n,
                    const char *path, moe_error *err);

#endif
