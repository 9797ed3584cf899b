/* pcre_classes.c - prints, for every code point (surrogates skipped), the
 * class PCRE2 (UTF+UCP) gives it: one of L M N P S Z (\\s) or '-'. Input to
 * unicode_table.js. Build: gcc -O2 pcre_classes.c -o pcre_classes -lpcre2-8
 * (not part of the moe build: tools/tokenizer/ is outside its wildcards). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <string.h>
static size_t put(char *o, int cp) {
    if (cp < 0x80) { o[0] = cp; return 1; }
    if (cp < 0x800) { o[0] = 0xc0 | cp >> 6; o[1] = 0x80 | (cp & 63); return 2; }
    if (cp < 0x10000) { o[0] = 0xe0 | cp >> 12; o[1] = 0x80 | ((cp >> 6) & 63); o[2] = 0x80 | (cp & 63); return 3; }
    o[0] = 0xf0 | cp >> 18; o[1] = 0x80 | ((cp >> 12) & 63); o[2] = 0x80 | ((cp >> 6) & 63); o[3] = 0x80 | (cp & 63); return 4;
}
int main(void) {
    const char *pats[] = {"\\p{L}", "\\p{M}", "\\p{N}", "\\p{P}", "\\p{S}", "\\s"};
    const char *names = "LMNPSZ";
    pcre2_code *re[6]; int ec; PCRE2_SIZE eo;
    for (int i = 0; i < 6; i++) { re[i] = pcre2_compile((PCRE2_SPTR)pats[i], PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &ec, &eo, NULL); }
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    for (int cp = 0; cp <= 0x10ffff; cp++) {
        if (cp >= 0xd800 && cp <= 0xdfff) continue;
        char b[4]; size_t n = put(b, cp); char cls = '-';
        for (int i = 0; i < 6; i++) if (pcre2_match(re[i], (PCRE2_SPTR)b, n, 0, 0, md, NULL) >= 0) { cls = names[i]; break; }
        printf("%c", cls);
    }
    return 0;
}
