/* test_fuzz_regress.c - replays every file in tests/fuzz/regress/<target>/ (inputs that
 * once crashed or misbehaved, see tests/fuzz/README.md) and tests/fuzz/corpus/<target>/
 * (the seed corpora) through the fuzz target bodies of tests/fuzz/targets.c, in the
 * normal test builds: optimized and under ASan + UBSan. A target abort()s on a broken
 * invariant, so a regression fails this suite.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "targets.h"

static int replay_dir(const char *dir, fuzz_fn fn) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "README.md")) continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        FILE *f = fopen(p, "rb");
        assert_non_null(f);
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        rewind(f);
        uint8_t *buf = malloc((size_t)len + 1);
        assert_non_null(buf);
        assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
        fclose(f);
        fn(buf, (size_t)len);
        free(buf);
        n++;
    }
    closedir(d);
    return n;
}

static void replay(void **state) {
    const fuzz_target *t = *state;
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fuzz/regress/%s", t->name);
    int nr = replay_dir(dir, t->fn);
    snprintf(dir, sizeof dir, "tests/fuzz/corpus/%s", t->name);
    int nc = replay_dir(dir, t->fn);
    assert_true(nc > 0);   /* every target has a committed corpus */
    printf("  %s: %d regression inputs, %d corpus inputs\n", t->name, nr, nc);
}

int main(void) {
    struct CMUnitTest tests[16];
    int n = 0;
    for (const fuzz_target *t = fuzz_targets; t->name && n < 16; t++)
        tests[n++] = (struct CMUnitTest){ t->name, replay, NULL, NULL, (void *)t };
    int rc = _cmocka_run_group_tests("fuzz regressions", tests, (size_t)n, NULL, NULL);
    fuzz_cleanup();
    return rc;
}
