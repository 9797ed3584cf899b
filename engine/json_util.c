/* json_util.c - file reading and typed JSON field access (see json_util.h). */
#include "json_util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int file_read_all(const char *path, size_t max_bytes, char **out, size_t *len, moe_error *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return moe_error_set(err, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return moe_error_set(err, "%s: cannot seek", path); }
    long size = ftell(f);
    if (size < 0) { fclose(f); return moe_error_set(err, "%s: cannot tell size", path); }
    if ((size_t)size > max_bytes) {
        fclose(f);
        return moe_error_set(err, "%s: file is %ld bytes, more than the limit of %zu", path, size, max_bytes);
    }
    rewind(f);
    char *buf = malloc((size_t)size + 1);
    if (!buf) { fclose(f); return moe_error_set(err, "%s: out of memory reading %ld bytes", path, size); }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        fclose(f);
        return moe_error_set(err, "%s: read error", path);
    }
    fclose(f);
    buf[size] = 0;
    *out = buf;
    if (len) *len = (size_t)size;
    return MOE_OK;
}

json_t *json_parse_text(const char *text, size_t len, const char *path, moe_error *err) {
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        moe_error_set(err, "%s: invalid JSON at line %d column %d: %s", path, je.line, je.column, je.text);
        return NULL;
    }
    return root;
}

static const json_t *field(const json_t *obj, const char *key) {
    const json_t *v = json_object_get(obj, key);
    return (v && !json_is_null(v)) ? v : NULL;
}

int json_get_int(const json_t *obj, const char *key, int required, long long def, long long lo, long long hi,
                 long long *out, const char *path, moe_error *err) {
    const json_t *v = field(obj, key);
    if (!v) {
        if (required) return moe_error_set(err, "%s: missing required field \"%s\"", path, key);
        *out = def;
        return MOE_OK;
    }
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) {
        x = (long long)json_real_value(v);
    } else {
        return moe_error_set(err, "%s: field \"%s\" must be an integer", path, key);
    }
    if (x < lo || x > hi)
        return moe_error_set(err, "%s: field \"%s\" = %lld is out of range [%lld, %lld]", path, key, x, lo, hi);
    *out = x;
    return MOE_OK;
}

int json_get_double(const json_t *obj, const char *key, int required, double def, double *out,
                    const char *path, moe_error *err) {
    const json_t *v = field(obj, key);
    if (!v) {
        if (required) return moe_error_set(err, "%s: missing required field \"%s\"", path, key);
        *out = def;
        return MOE_OK;
    }
    if (!json_is_number(v)) return moe_error_set(err, "%s: field \"%s\" must be a number", path, key);
    *out = json_number_value(v);
    if (!isfinite(*out)) return moe_error_set(err, "%s: field \"%s\" is not finite", path, key);
    return MOE_OK;
}

int json_get_bool(const json_t *obj, const char *key, int required, int def, int *out, const char *path,
                  moe_error *err) {
    const json_t *v = field(obj, key);
    if (!v) {
        if (required) return moe_error_set(err, "%s: missing required field \"%s\"", path, key);
        *out = def;
        return MOE_OK;
    }
    if (!json_is_boolean(v)) return moe_error_set(err, "%s: field \"%s\" must be true or false", path, key);
    *out = json_is_true(v);
    return MOE_OK;
}

int json_get_string(const json_t *obj, const char *key, int required, const char *def, char *buf, size_t n,
                    const char *path, moe_error *err) {
    const json_t *v = field(obj, key);
    const char *s = def;
    if (!v) {
        if (required) return moe_error_set(err, "%s: missing required field \"%s\"", path, key);
    } else if (!json_is_string(v)) {
        return moe_error_set(err, "%s: field \"%s\" must be a string", path, key);
    } else {
        s = json_string_value(v);
    }
    if (strlen(s) >= n) return moe_error_set(err, "%s: field \"%s\" is too long", path, key);
    snprintf(buf, n, "%s", s);
    return MOE_OK;
}
