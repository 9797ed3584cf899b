/* error.c - one-line error messages (see error.h). */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Messages quote names taken from input files (tensor, shard and token names), which may
 * hold control characters: replace them so the message stays one printable line. */
static void one_line(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = '?';
}

int moe_error_set(moe_error *err, const char *fmt, ...) {
    if (!err) return MOE_FAIL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    one_line(err->msg);
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
    one_line(err->msg);
    return MOE_FAIL;
}
