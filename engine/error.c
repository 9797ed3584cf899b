/* error.c - one-line error messages (see error.h). */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int moe_error_set(moe_error *err, const char *fmt, ...) {
    if (!err) return MOE_FAIL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return MOE_FAIL;
}

int moe_error_prefix(moe_error *err, const char *fmt, ...) {
    if (!err) return MOE_FAIL;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%.500s: %.500s", prefix, old);
    return MOE_FAIL;
}
