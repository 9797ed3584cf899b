/* error.h - how library code reports failure.
 *
 * Library functions never exit(): they return MOE_OK (0) or MOE_FAIL (-1) and,
 * on failure, fill a moe_error with one line that names the file (or the
 * input) and what is wrong. Only tools/moe/moe.c turns an error into an exit code.
 */
#ifndef MOE_ERROR_H
#define MOE_ERROR_H

#define MOE_OK 0
#define MOE_FAIL (-1)

typedef struct {
    char msg[1024];   /* one line, no trailing newline; "" when no error */
} moe_error;

/* Sets err->msg printf-style (err may be NULL) and returns MOE_FAIL. */
int moe_error_set(moe_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefixes an existing message: "<prefix>: <old message>". Returns MOE_FAIL. */
int moe_error_prefix(moe_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
