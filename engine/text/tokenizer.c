/* tokenizer.c - byte-level BPE from a Hugging Face tokenizer.json.
 *
 * Notation / legend:
 *   text        UTF-8 input bytes with a length (may hold NULs and bad bytes)
 *   segment     text between added-token matches
 *   piece       what the pre-tokenizer hands to BPE, as (offset, length) into
 *               the encoder's work buffer
 *   byte-level  GPT-2's map of the 256 bytes to 256 printable characters; the
 *               vocabulary and merges are spelled in it ("Ġ" is the space)
 *   rank        position of a merge in the merges list; lower merges first
 *   symbol      a run of bytes during BPE, carrying its current token id
 *
 * The pipeline (as the Rust library runs it, for the parts V3 uses):
 *   1. added tokens that are not `normalized` are found in the raw text
 *      (leftmost-longest); the gaps are searched for the `normalized` ones
 *   2. each remaining segment is cut at bytes that are not valid UTF-8
 *   3. the pre-tokenizer steps (Split regexes, ByteLevel) cut it into pieces
 *   4. each piece is BPE-merged on byte ids with a min-heap of (rank, pos)
 */
#include "tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* ======================================================================
 * Small containers: string -> int map, (id, id) -> merge map, growable arrays
 * ====================================================================== */

typedef struct {
    uint64_t h;   /* hash of the key, | 1 (0 marks an empty slot) */
    uint32_t off; /* key offset in the map's arena */
    uint32_t len; /* key length in bytes */
    int val;      /* the value */
} strmap_slot;

typedef struct {
    strmap_slot *slots; /* open addressing, linear probing */
    size_t cap;         /* slots, a power of two */
    size_t n;           /* keys stored */
    char *arena;        /* the key bytes, back to back */
    size_t alen, acap;  /* bytes used / allocated in arena */
} strmap;

static uint64_t hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return (h ^ (h >> 29)) | 1;
}

static int strmap_init(strmap *m, size_t expect) {
    memset(m, 0, sizeof *m);
    m->cap = 16;
    while (m->cap < expect * 2) m->cap *= 2;
    m->slots = calloc(m->cap, sizeof *m->slots);
    return m->slots ? 0 : -1;
}

static void strmap_free(strmap *m) {
    free(m->slots);
    free(m->arena);
    memset(m, 0, sizeof *m);
}

static strmap_slot *strmap_find_slot(const strmap *m, const char *k, size_t len, uint64_t h) {
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        strmap_slot *s = &m->slots[i];
        if (!s->h) return s;
        if (s->h == h && s->len == len && !memcmp(m->arena + s->off, k, len)) return s;
    }
}

/* Value for key, or -1. */
static int strmap_get(const strmap *m, const char *k, size_t len) {
    strmap_slot *s = strmap_find_slot(m, k, len, hash_bytes(k, len));
    return s->h ? s->val : -1;
}

static int strmap_grow(strmap *m) {
    strmap_slot *old = m->slots;
    size_t ocap = m->cap;
    m->cap *= 2;
    m->slots = calloc(m->cap, sizeof *m->slots);
    if (!m->slots) { m->slots = old; m->cap = ocap; return -1; }
    for (size_t i = 0; i < ocap; i++) {
        if (!old[i].h) continue;
        size_t mask = m->cap - 1, j = old[i].h & mask;
        while (m->slots[j].h) j = (j + 1) & mask;
        m->slots[j] = old[i];
    }
    free(old);
    return 0;
}

/* Sets key -> val (overwrites). Returns 0, or -1 when out of memory. */
static int strmap_put(strmap *m, const char *k, size_t len, int val) {
    uint64_t h = hash_bytes(k, len);
    strmap_slot *s = strmap_find_slot(m, k, len, h);
    if (s->h) { s->val = val; return 0; }
    if ((m->n + 1) * 2 > m->cap) {
        if (strmap_grow(m)) return -1;
        s = strmap_find_slot(m, k, len, h);
    }
    if (m->alen + len > m->acap) {
        size_t nc = m->acap ? m->acap : 4096;
        while (nc < m->alen + len) nc *= 2;
        char *a = realloc(m->arena, nc);
        if (!a) return -1;
        m->arena = a;
        m->acap = nc;
    }
    if (len) memcpy(m->arena + m->alen, k, len);   /* an empty key ("" in a vocab) may come before any arena */
    s->h = h;
    s->off = (uint32_t)m->alen;
    s->len = (uint32_t)len;
    s->val = val;
    m->alen += len;
    m->n++;
    return 0;
}

typedef struct {
    uint64_t key; /* (left id << 32 | right id) + 1; 0 marks an empty slot */
    int rank;     /* merge priority, lower first */
    int new_id;   /* id of the merged token */
} pair_slot;

typedef struct {
    pair_slot *slots; /* open addressing, linear probing, never grows */
    size_t cap;       /* a power of two, at least twice the merges */
} pairmap;

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static pair_slot *pairmap_slot(const pairmap *m, int a, int b) {
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t mask = m->cap - 1;
    for (size_t i = mix64(key) & mask;; i = (i + 1) & mask)
        if (m->slots[i].key == key || !m->slots[i].key) return &m->slots[i];
}

static const pair_slot *pairmap_get(const pairmap *m, int a, int b) {
    if (!m->cap) return NULL;
    const pair_slot *s = pairmap_slot(m, a, b);
    return s->key ? s : NULL;
}

/* growable arrays */
#define VEC_RESERVE(ptr, cap, need)                                            \
    ((need) <= (cap) ? 0 : vec_reserve((void **)&(ptr), &(cap), (need), sizeof *(ptr)))

static int vec_reserve(void **p, size_t *cap, size_t need, size_t elem) {
    size_t nc = *cap ? *cap : 16;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, nc * elem);
    if (!q) return -1;
    *p = q;
    *cap = nc;
    return 0;
}

/* ======================================================================
 * Byte-level alphabet (GPT-2): byte <-> code point
 * ====================================================================== */

/* bytes 33..126, 161..172, 174..255 stand for themselves; the other 68 bytes
 * get code points 256, 257, ... in byte order. */
static void bytelevel_tables(int byte_cp[256], int cp_byte[324]) {
    int n = 0;
    for (int i = 0; i < 324; i++) cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int self = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        byte_cp[b] = self ? b : 256 + n++;
        cp_byte[byte_cp[b]] = b;
    }
}

static size_t utf8_put(char *o, int cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xc0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 63)); o[2] = (char)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 63));
    o[2] = (char)(0x80 | ((cp >> 6) & 63)); o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

/* Length of the valid UTF-8 character at s[0..n), or 0 if the bytes there do
 * not start one (overlong forms, surrogates and > U+10FFFF are invalid). */
static size_t utf8_valid_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    if (c < 0xc2 || c > 0xf4) return 0;
    size_t need = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if (n < need) return 0;
    for (size_t i = 1; i < need; i++) if ((s[i] & 0xc0) != 0x80) return 0;
    if (c == 0xe0 && s[1] < 0xa0) return 0;
    if (c == 0xed && s[1] >= 0xa0) return 0;
    if (c == 0xf0 && s[1] < 0x90) return 0;
    if (c == 0xf4 && s[1] >= 0x90) return 0;
    return need;
}

/* Decodes one UTF-8 character of valid text; returns its length. */
static size_t utf8_get(const unsigned char *s, int *cp) {
    if (s[0] < 0x80) { *cp = s[0]; return 1; }
    if (s[0] < 0xe0) { *cp = (s[0] & 31) << 6 | (s[1] & 63); return 2; }
    if (s[0] < 0xf0) { *cp = (s[0] & 15) << 12 | (s[1] & 63) << 6 | (s[2] & 63); return 3; }
    *cp = (s[0] & 7) << 18 | (s[1] & 63) << 12 | (s[2] & 63) << 6 | (s[3] & 63);
    return 4;
}

/* ======================================================================
 * The tokenizer
 * ====================================================================== */

enum { SPLIT_ISOLATED, SPLIT_REMOVED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };

typedef struct {
    int prefix_space;   /* 1: this step is ByteLevel's add_prefix_space (no regex) */
    pcre2_code *re;     /* Split pattern (NULL for a prefix_space step) */
    pcre2_code *re_newer; /* the same with the newer_unicode ranges, used for pieces that have
                             such characters; NULL when the pattern has no \p{L,M,N,P,S} */
    const char *cats;   /* the categories among L M N P S that the pattern names */
    int behavior;       /* SPLIT_* */
    int invert;         /* 1: the pieces are what the pattern does not match */
} pretok_step;

typedef struct {
    int id;             /* its token id */
    char *content;      /* the text matched (bytes, NUL-terminated) */
    size_t len;         /* bytes in content */
    int special;        /* `special`: skipped by nothing here, reported by tokenizer_is_special */
    int lstrip, rstrip; /* also swallow whitespace on the left / right */
    int single_word;    /* only match when not inside a word */
} added_token;

typedef struct {
    int child;          /* first child node, -1 for none */
    int sibling;        /* next sibling node, -1 for none */
    int token;          /* index in tokenizer.added of the token ending here, or -1 */
    unsigned char byte; /* the edge byte into this node */
} trie_node;

typedef struct {
    trie_node *nodes;   /* node 0 is the root */
    size_t n, cap;      /* nodes used / allocated */
} trie;

typedef struct {
    uint32_t off;       /* first id in bpe_cache.ids */
    uint32_t cnt;       /* number of ids */
} cache_entry;

typedef struct {
    strmap map;         /* piece bytes -> index in ent */
    int *ids;           /* the cached ids, back to back */
    size_t nids, capids;
    cache_entry *ent;   /* one per cached piece */
    size_t n, cap;      /* entries used / allocated */
} bpe_cache;

#define TOKENIZER_MAX_VOCAB (1 << 24)    /* as config.json dims; V3 has 129,280 */
#define TOKENIZER_MAX_FILE (256u << 20) /* V3's tokenizer.json is 7.5 MB */
#define CACHE_MAX_PIECE 64        /* longer pieces are not cached */
#define CACHE_MAX_ENTRIES 200000  /* the cache stops growing here */

struct tokenizer {
    char path[1024];         /* the tokenizer.json read, for error messages */
    char config_path[1024];  /* the tokenizer_config.json read, or "" */
    strmap vocab;            /* token spelling (byte-level) -> id: model vocab, then added tokens */
    pairmap merges;          /* (left id, right id) -> rank, merged id */
    int byte_id[256];        /* byte -> id of its single-byte token, -1 if the vocab lacks it */
    int byte_cp[256];        /* byte -> byte-level code point */
    int ignore_merges;       /* model.ignore_merges: a piece that is a whole token is not merged */
    int model_vocab_n;       /* entries in model.vocab (added tokens get ids from here up) */
    pretok_step *steps;      /* pre-tokenizer, in order */
    int nsteps;
    added_token *added;      /* added_tokens, in file order */
    int nadded;
    trie raw_trie;           /* added tokens with normalized=false */
    trie norm_trie;          /* added tokens with normalized=true */
    int vocab_size;          /* max id + 1 */
    char *dec_bytes;         /* decoded bytes of every token, back to back */
    uint32_t *dec_off;       /* per id: offset in dec_bytes */
    uint32_t *dec_len;       /* per id: length; UINT32_MAX for an id with no token */
    unsigned char *special;  /* per id: 1 for special added tokens */
    int bos_id, eos_id;      /* from tokenizer_config.json, -1 if unknown */
    int add_bos;             /* tokenizer_config.json add_bos_token (default 1) */
    char *bos_str, *eos_str; /* their strings ("" if unknown) */
    char *chat_template;     /* tokenizer_config.json chat_template, or NULL */
};

/* ---------------------------------------------------------------- trie */

static int trie_add(trie *tr, const char *s, size_t len, int token) {
    if (!tr->n) {
        if (VEC_RESERVE(tr->nodes, tr->cap, 1)) return -1;
        tr->nodes[0] = (trie_node){-1, -1, -1, 0};
        tr->n = 1;
    }
    int node = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char b = (unsigned char)s[i];
        int c = tr->nodes[node].child;
        while (c >= 0 && tr->nodes[c].byte != b) c = tr->nodes[c].sibling;
        if (c < 0) {
            if (VEC_RESERVE(tr->nodes, tr->cap, tr->n + 1)) return -1;
            c = (int)tr->n++;
            tr->nodes[c] = (trie_node){-1, tr->nodes[node].child, -1, b};
            tr->nodes[node].child = c;
        }
        node = c;
    }
    if (tr->nodes[node].token < 0) tr->nodes[node].token = token; /* first one wins */
    return 0;
}

/* Longest added token starting at s[0..n): its index in t->added, or -1. */
static int trie_longest(const trie *tr, const char *s, size_t n, size_t *mlen) {
    if (!tr->n) return -1;
    int node = 0, best = -1;
    for (size_t i = 0; i < n; i++) {
        int c = tr->nodes[node].child;
        while (c >= 0 && tr->nodes[c].byte != (unsigned char)s[i]) c = tr->nodes[c].sibling;
        if (c < 0) break;
        node = c;
        if (tr->nodes[c].token >= 0) { best = tr->nodes[c].token; *mlen = i + 1; }
    }
    return best;
}

/* ======================================================================
 * Loading
 * ====================================================================== */

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static const char *behavior_names[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"};

/* Code points that the official library's regex engine (Oniguruma, with
 * Unicode 16) puts in a general category but PCRE2 10.42 (Unicode 14) leaves
 * unassigned: Unicode 15.0-16.0 additions such as CJK extensions H and I,
 * Garay, Tulu-Tigalari, new symbols. Made by tools/tokenizer/unicode_table.js
 * (which asks the official pre-tokenizer); with a newer PCRE2 they are simply
 * redundant. */
typedef struct {
    char cat;          /* general category: 'L', 'M', 'N', 'P' or 'S' */
    uint32_t lo, hi;   /* the code point range, inclusive */
} unicode_range;

static const unicode_range newer_unicode[] = {
    {'M', 0x897, 0x897}, {'M', 0xCF3, 0xCF3}, {'M', 0xECE, 0xECE}, {'P', 0x1B4E, 0x1B4F}, {'P', 0x1B7F, 0x1B7F},
    {'L', 0x1C89, 0x1C8A}, {'S', 0x2427, 0x2429}, {'S', 0x2FFC, 0x2FFF}, {'S', 0x31E4, 0x31E5},
    {'S', 0x31EF, 0x31EF}, {'L', 0xA7CB, 0xA7CD}, {'L', 0xA7DA, 0xA7DC}, {'L', 0x105C0, 0x105F3},
    {'N', 0x10D40, 0x10D49}, {'L', 0x10D4A, 0x10D65}, {'M', 0x10D69, 0x10D6D}, {'P', 0x10D6E, 0x10D6E},
    {'L', 0x10D6F, 0x10D85}, {'S', 0x10D8E, 0x10D8F}, {'L', 0x10EC2, 0x10EC4}, {'M', 0x10EFC, 0x10EFF},
    {'L', 0x1123F, 0x11240}, {'M', 0x11241, 0x11241}, {'L', 0x11380, 0x11389}, {'L', 0x1138B, 0x1138B},
    {'L', 0x1138E, 0x1138E}, {'L', 0x11390, 0x113B5}, {'L', 0x113B7, 0x113B7}, {'M', 0x113B8, 0x113C0},
    {'M', 0x113C2, 0x113C2}, {'M', 0x113C5, 0x113C5}, {'M', 0x113C7, 0x113CA}, {'M', 0x113CC, 0x113D0},
    {'L', 0x113D1, 0x113D1}, {'M', 0x113D2, 0x113D2}, {'L', 0x113D3, 0x113D3}, {'P', 0x113D4, 0x113D5},
    {'P', 0x113D7, 0x113D8}, {'M', 0x113E1, 0x113E2}, {'N', 0x116D0, 0x116E3}, {'P', 0x11B00, 0x11B09},
    {'L', 0x11BC0, 0x11BE0}, {'P', 0x11BE1, 0x11BE1}, {'N', 0x11BF0, 0x11BF9}, {'M', 0x11F00, 0x11F01},
    {'L', 0x11F02, 0x11F02}, {'M', 0x11F03, 0x11F03}, {'L', 0x11F04, 0x11F10}, {'L', 0x11F12, 0x11F33},
    {'M', 0x11F34, 0x11F3A}, {'M', 0x11F3E, 0x11F42}, {'P', 0x11F43, 0x11F4F}, {'N', 0x11F50, 0x11F59},
    {'M', 0x11F5A, 0x11F5A}, {'L', 0x1342F, 0x1342F}, {'M', 0x13440, 0x13440}, {'L', 0x13441, 0x13446},
    {'M', 0x13447, 0x13455}, {'L', 0x13460, 0x143FA}, {'L', 0x16100, 0x1611D}, {'M', 0x1611E, 0x1612F},
    {'N', 0x16130, 0x16139}, {'L', 0x16D40, 0x16D6C}, {'P', 0x16D6D, 0x16D6F}, {'N', 0x16D70, 0x16D79},
    {'L', 0x18CFF, 0x18CFF}, {'L', 0x1B132, 0x1B132}, {'L', 0x1B155, 0x1B155}, {'S', 0x1CC00, 0x1CCEF},
    {'N', 0x1CCF0, 0x1CCF9}, {'S', 0x1CD00, 0x1CEB3}, {'N', 0x1D2C0, 0x1D2D3}, {'L', 0x1DF25, 0x1DF2A},
    {'L', 0x1E030, 0x1E06D}, {'M', 0x1E08F, 0x1E08F}, {'L', 0x1E4D0, 0x1E4EB}, {'M', 0x1E4EC, 0x1E4EF},
    {'N', 0x1E4F0, 0x1E4F9}, {'L', 0x1E5D0, 0x1E5ED}, {'M', 0x1E5EE, 0x1E5EF}, {'L', 0x1E5F0, 0x1E5F0},
    {'N', 0x1E5F1, 0x1E5FA}, {'P', 0x1E5FF, 0x1E5FF}, {'S', 0x1F6DC, 0x1F6DC}, {'S', 0x1F774, 0x1F776},
    {'S', 0x1F77B, 0x1F77F}, {'S', 0x1F7D9, 0x1F7D9}, {'S', 0x1F8B2, 0x1F8BB}, {'S', 0x1F8C0, 0x1F8C1},
    {'S', 0x1FA75, 0x1FA77}, {'S', 0x1FA87, 0x1FA89}, {'S', 0x1FA8F, 0x1FA8F}, {'S', 0x1FAAD, 0x1FAAF},
    {'S', 0x1FABB, 0x1FABF}, {'S', 0x1FAC6, 0x1FAC6}, {'S', 0x1FACE, 0x1FACF}, {'S', 0x1FADA, 0x1FADC},
    {'S', 0x1FADF, 0x1FADF}, {'S', 0x1FAE8, 0x1FAE9}, {'S', 0x1FAF7, 0x1FAF8}, {'S', 0x1FBCB, 0x1FBEF},
    {'L', 0x2B739, 0x2B739}, {'L', 0x2EBF0, 0x2EE5D}, {'L', 0x31350, 0x323AF},
};

/* Rewrites a Split regex so PCRE2 classifies characters as Oniguruma does:
 *   \p{L} \p{M} \p{N} \p{P} \p{S}  with newer: also take the newer_unicode
 *                                  ranges of their category (inside a class
 *                                  too); that is slower, so it is compiled
 *                                  apart and used only on text that has them
 *   \s, \S (outside classes)       exclude / include U+180E, which PCRE2's \s
 *                                  matches but Unicode White_Space does not
 * Returns a malloc'd pattern (*olen bytes), or NULL when out of memory. */
static char *translate_pattern(const char *p, size_t n, int newer, size_t *olen) {
    static const char sp[] = "(?:(?!\\x{180e})\\s)", nsp[] = "(?:\\S|\\x{180e})";
    const size_t nr = sizeof newer_unicode / sizeof newer_unicode[0];
    size_t cap = n * sizeof sp + 1, k = 0;
    for (size_t i = 0; i + 1 < n; i++) if (p[i] == '\\' && p[i + 1] == 'p') cap += nr * 24 + 8;
    char *o = malloc(cap);
    int in_class = 0;
    if (!o) return NULL;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[i + 1];
            if (!in_class && (d == 's' || d == 'S')) {
                const char *r = d == 's' ? sp : nsp;
                memcpy(o + k, r, strlen(r));
                k += strlen(r);
            } else if (newer && d == 'p' && i + 4 < n && p[i + 2] == '{' && p[i + 4] == '}' && strchr("LMNPS", p[i + 3])) {
                if (!in_class) o[k++] = '[';
                memcpy(o + k, p + i, 5);
                k += 5;
                for (size_t r = 0; r < nr; r++)
                    if (newer_unicode[r].cat == p[i + 3])
                        k += (size_t)sprintf(o + k, "\\x{%x}-\\x{%x}", (unsigned)newer_unicode[r].lo, (unsigned)newer_unicode[r].hi);
                if (!in_class) o[k++] = ']';
                i += 4;
                continue;
            } else {
                o[k++] = c;
                o[k++] = d;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = 1;
            o[k++] = c;
            if (i + 1 < n && p[i + 1] == '^') o[k++] = p[++i];
            if (i + 1 < n && p[i + 1] == ']') o[k++] = p[++i]; /* a leading ] is a literal */
            continue;
        }
        if (in_class && c == ']') in_class = 0;
        o[k++] = c;
    }
    o[k] = 0;
    *olen = k;
    return o;
}

static int compile_regex(tokenizer *t, const char *pat, size_t len, int literal, int newer, pcre2_code **out,
                         moe_error *err) {
    int ec;
    PCRE2_SIZE eo;
    uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    size_t tl = len;
    char *tp = literal ? NULL : translate_pattern(pat, len, newer, &tl);
    if (!literal && !tp) return moe_error_set(err, "%s: out of memory", t->path);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)(tp ? tp : pat), tl, opt, &ec, &eo, NULL);
    free(tp);
    if (!re && tp) { /* report the error against the pattern as written */
        pcre2_code *orig = pcre2_compile((PCRE2_SPTR)pat, len, opt, &ec, &eo, NULL);
        if (orig) { pcre2_code_free(orig); eo = 0; }
    }
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return moe_error_set(err, "%s: pre_tokenizer regex does not compile at offset %zu: %s", t->path,
                             (size_t)eo, (char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is unavailable */
    *out = re;
    return MOE_OK;
}

/* Which of \p{L}, \p{M}, \p{N}, \p{P}, \p{S} the pattern uses, as a
 * static string of their letters ("" for none). */
static const char *class_escapes(const char *p) {
    static const char *sets[32] = {"", "L", "M", "LM", "N", "LN", "MN", "LMN", "P", "LP", "MP", "LMP", "NP", "LNP",
                                   "MNP", "LMNP", "S", "LS", "MS", "LMS", "NS", "LNS", "MNS", "LMNS", "PS", "LPS",
                                   "MPS", "LMPS", "NPS", "LNPS", "MNPS", "LMNPS"};
    int mask = 0;
    for (; (p = strstr(p, "\\p{")); p += 3)
        if (p[3] && strchr("LMNPS", p[3]) && p[4] == '}') mask |= 1 << (strchr("LMNPS", p[3]) - "LMNPS");
    return sets[mask];
}

/* Does valid UTF-8 text s[0..n) hold a character of newer_unicode in one of
 * the categories cats? */
static int has_newer_unicode(const unsigned char *s, size_t n, const char *cats) {
    const size_t nr = sizeof newer_unicode / sizeof newer_unicode[0];
    for (size_t i = 0; i < n;) {
        if (s[i] < 0xe0) { i += s[i] < 0x80 ? 1 : 2; continue; } /* < U+0800: below the table */
        int cp;
        i += utf8_get(s + i, &cp);
        if ((uint32_t)cp < newer_unicode[0].lo) continue;
        size_t lo = 0, hi = nr;
        while (lo < hi) { /* the first range ending at or after cp */
            size_t mid = (lo + hi) / 2;
            if (newer_unicode[mid].hi < (uint32_t)cp) lo = mid + 1; else hi = mid;
        }
        if (lo < nr && newer_unicode[lo].lo <= (uint32_t)cp && strchr(cats, newer_unicode[lo].cat)) return 1;
    }
    return 0;
}

static int add_step(tokenizer *t, pretok_step st, moe_error *err) {
    pretok_step *s = realloc(t->steps, (size_t)(t->nsteps + 1) * sizeof *s);
    if (!s) {
        if (st.re) pcre2_code_free(st.re);
        if (st.re_newer) pcre2_code_free(st.re_newer);
        return moe_error_set(err, "%s: out of memory", t->path);
    }
    t->steps = s;
    t->steps[t->nsteps++] = st;
    return MOE_OK;
}

/* GPT-2's pre-tokenizer pattern, used by ByteLevel when use_regex is true. */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Appends a Split step: pattern pat[0..len) (a regex, or literal text), SPLIT_* behavior. */
static int add_split(tokenizer *t, const char *pat, size_t len, int literal, int behavior, int invert, moe_error *err) {
    pretok_step st = {.behavior = behavior, .invert = invert};
    if (compile_regex(t, pat, len, literal, 0, &st.re, err)) return MOE_FAIL;
    st.cats = literal ? "" : class_escapes(pat);
    if (*st.cats && compile_regex(t, pat, len, 0, 1, &st.re_newer, err)) {
        pcre2_code_free(st.re);
        return MOE_FAIL;
    }
    return add_step(t, st, err);
}

static int load_pretok(tokenizer *t, json_t *p, int *have_bytelevel, moe_error *err) {
    if (!p || json_is_null(p)) return MOE_OK;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type) return moe_error_set(err, "%s: pre_tokenizer without a type", t->path);
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(p, "pretokenizers");
        if (!json_is_array(arr)) return moe_error_set(err, "%s: pre_tokenizer Sequence without pretokenizers", t->path);
        for (size_t i = 0; i < json_array_size(arr); i++)
            if (load_pretok(t, json_array_get(arr, i), have_bytelevel, err)) return MOE_FAIL;
        return MOE_OK;
    }
    if (!strcmp(type, "Split")) {
        pretok_step st = {0};
        json_t *pat = json_object_get(p, "pattern");
        json_t *rx = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
        const char *beh = json_string_value(json_object_get(p, "behavior"));
        if (!json_is_string(rx) && !json_is_string(lit))
            return moe_error_set(err, "%s: Split pre_tokenizer needs a pattern {\"Regex\"|\"String\": ...}", t->path);
        st.behavior = -1;
        for (int i = 0; beh && i < 5; i++) if (!strcmp(beh, behavior_names[i])) st.behavior = i;
        if (st.behavior < 0)
            return moe_error_set(err, "%s: Split pre_tokenizer behavior '%s' is not supported", t->path,
                                 beh ? beh : "(none)");
        json_t *s = rx ? rx : lit;
        return add_split(t, json_string_value(s), json_string_length(s), !rx, st.behavior,
                         json_is_true(json_object_get(p, "invert")), err);
    }
    if (!strcmp(type, "ByteLevel")) {
        *have_bytelevel = 1;
        if (json_is_true(json_object_get(p, "add_prefix_space")))
            if (add_step(t, (pretok_step){.prefix_space = 1}, err)) return MOE_FAIL;
        json_t *ur = json_object_get(p, "use_regex");
        if (!ur || json_is_true(ur)) { /* the library's default is true */
            pretok_step st = {.behavior = SPLIT_ISOLATED, .cats = class_escapes(gpt2_pattern)};
            if (compile_regex(t, gpt2_pattern, sizeof gpt2_pattern - 1, 0, 0, &st.re, err)) return MOE_FAIL;
            if (compile_regex(t, gpt2_pattern, sizeof gpt2_pattern - 1, 0, 1, &st.re_newer, err)) {
                pcre2_code_free(st.re);
                return MOE_FAIL;
            }
            return add_step(t, st, err);
        }
        return MOE_OK;
    }
    return moe_error_set(err, "%s: pre_tokenizer type '%s' is not supported", t->path, type);
}

static int check_normalizer(tokenizer *t, json_t *n, moe_error *err) {
    if (!n || json_is_null(n)) return MOE_OK;
    const char *type = json_string_value(json_object_get(n, "type"));
    if (type && !strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(n, "normalizers");
        for (size_t i = 0; i < json_array_size(arr); i++)
            if (check_normalizer(t, json_array_get(arr, i), err)) return MOE_FAIL;
        return MOE_OK;
    }
    return moe_error_set(err, "%s: normalizer type '%s' is not supported (only none)", t->path, type ? type : "?");
}

/* ----------------------------------------------------------------------
 * Fast reading of model.vocab and model.merges
 *
 * They are 99% of the file (V3: 128k vocab entries, 127k merges) and jansson
 * takes most of a second to build a DOM of them. So tokenizer_load finds
 * their byte ranges first, moves them out of the text (leaving {} and [] and
 * their newlines, so jansson's line numbers stay right) and reads them here
 * with a small scanner; jansson reads the rest. If the ranges cannot be
 * found (malformed JSON, unusual layout), everything goes through jansson,
 * which then reports the error.
 * ---------------------------------------------------------------------- */

typedef struct {
    char *p;         /* next byte */
    char *end;       /* end of the text */
} jscan;

typedef struct {
    const char *a, *b; /* the two halves of a merge (not NUL-terminated) */
    size_t na, nb;     /* their lengths */
} merge_ref;

typedef struct {
    const char *key;   /* a vocab spelling (not NUL-terminated) */
    size_t len;        /* its length */
    long long id;      /* its id */
} vocab_ref;

static void js_ws(jscan *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t')) s->p++;
}

/* Skips a string starting at '"'; returns 0, or -1 if unterminated. */
static int js_skip_string(jscan *s) {
    for (s->p++; s->p < s->end; s->p++) {
        if (*s->p == '\\') { s->p++; continue; }
        if (*s->p == '"') { s->p++; return 0; }
    }
    return -1;
}

/* Skips any value (structure only, contents unchecked). */
static int js_skip(jscan *s) {
    int depth = 0;
    js_ws(s);
    do {
        if (s->p >= s->end) return -1;
        char c = *s->p;
        if (c == '"') { if (js_skip_string(s)) return -1; }
        else if (c == '{' || c == '[') { depth++; s->p++; }
        else if (c == '}' || c == ']') { if (--depth < 0) return -1; s->p++; }
        else if (c == ',' || c == ':' || c == ' ' || c == '\n' || c == '\r' || c == '\t') { if (!depth) return -1; s->p++; }
        else if (!c) return -1; /* a NUL outside a string: not JSON (strchr would match it and never advance) */
        else { while (s->p < s->end && *s->p && !strchr(",:{}[] \n\r\t\"", *s->p)) s->p++; }
        if (depth) js_ws(s);
    } while (depth);
    return 0;
}

/* Reads a string at '"', unescaping it in place into (*out, *len). */
static int js_string(jscan *s, const char **out, size_t *len) {
    js_ws(s);
    if (s->p >= s->end || *s->p != '"') return -1;
    char *w = ++s->p, *start = w;
    while (s->p < s->end && *s->p != '"') {
        if (*s->p != '\\') { *w++ = *s->p++; continue; }
        if (++s->p >= s->end) return -1;
        char e = *s->p++;
        switch (e) {
        case 'n': *w++ = '\n'; break;
        case 't': *w++ = '\t'; break;
        case 'r': *w++ = '\r'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case '"': case '\\': case '/': *w++ = e; break;
        case 'u': {
            unsigned cp = 0;
            for (int pass = 0; pass < 2; pass++) {
                unsigned v = 0;
                if (s->end - s->p < 4) return -1;
                for (int k = 0; k < 4; k++) {
                    char h = *s->p++;
                    v = v * 16 + (unsigned)(h >= '0' && h <= '9' ? h - '0' : (h | 32) >= 'a' && (h | 32) <= 'f' ? (h | 32) - 'a' + 10 : 99);
                    if (v > 0xffff) return -1;
                }
                if (pass == 0) {
                    cp = v;
                    if (v < 0xd800 || v > 0xdbff) break;
                    if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u') return -1; /* lone high surrogate */
                    s->p += 2;
                } else {
                    if (v < 0xdc00 || v > 0xdfff) return -1;
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (v - 0xdc00);
                }
            }
            if (cp >= 0xdc00 && cp <= 0xdfff) return -1;
            w += utf8_put(w, (int)cp);
            break;
        }
        default: return -1;
        }
    }
    if (s->p >= s->end) return -1;
    s->p++;
    *out = start;
    *len = (size_t)(w - start);
    return 0;
}

static int js_char(jscan *s, char c) {
    js_ws(s);
    if (s->p < s->end && *s->p == c) { s->p++; return 1; }
    return 0;
}

/* Byte ranges of model.vocab and model.merges in text[0..n): 0 when both are found. */
static int locate_tables(char *text, size_t n, size_t rng[2][2]) {
    jscan s = {text, text + n};
    int found = 0;
    if (!js_char(&s, '{')) return -1;
    if (js_char(&s, '}')) return -1;
    do {
        const char *k;
        size_t kl;
        char *kstart = s.p;
        js_ws(&s);
        kstart = s.p;
        if (js_skip_string(&s) || !js_char(&s, ':')) return -1;
        k = kstart + 1;
        kl = (size_t)(s.p - kstart);
        int is_model = !strncmp(k, "model\"", 6);
        (void)kl;
        js_ws(&s);
        if (is_model && s.p < s.end && *s.p == '{') {
            s.p++;
            if (js_char(&s, '}')) continue;
            do {
                js_ws(&s);
                char *ks = s.p;
                if (js_skip_string(&s) || !js_char(&s, ':')) return -1;
                int which = !strncmp(ks, "\"vocab\"", 7) ? 0 : !strncmp(ks, "\"merges\"", 8) ? 1 : -1;
                js_ws(&s);
                char *vs = s.p;
                if (js_skip(&s)) return -1;
                if (which >= 0) { rng[which][0] = (size_t)(vs - text); rng[which][1] = (size_t)(s.p - text); found |= 1 << which; }
            } while (js_char(&s, ','));
            if (!js_char(&s, '}')) return -1;
        } else if (js_skip(&s)) return -1;
    } while (js_char(&s, ','));
    return found == 3 && text[rng[0][0]] == '{' && text[rng[1][0]] == '[' ? 0 : -1;
}

/* ---------------------------------------------------------------------- */

/* A merge entry, "a b" or ["a", "b"], as two strings. */
static int merge_parts(json_t *m, const char **a, size_t *na, const char **b, size_t *nb) {
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        const char *sp = memchr(s, ' ', json_string_length(m));
        if (!sp || sp == s) return -1;
        *a = s; *na = (size_t)(sp - s);
        *b = sp + 1; *nb = json_string_length(m) - *na - 1;
        return 0;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0)); *na = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1)); *nb = json_string_length(json_array_get(m, 1));
        return 0;
    }
    return -1;
}

/* The vocab and merges as refs, from the fast tables text (vocab at
 * tables[0..split), merges after) or else from the JSON. *nm = -1 and
 * *bad = index marks a malformed merge; a malformed vocab is an error. */
static int read_tables(tokenizer *t, json_t *model, char *tables, size_t split, size_t tlen, vocab_ref **vr,
                       size_t *nv, merge_ref **mr, size_t *nm, moe_error *err) {
    size_t capv = 0, capm = 0;
    *vr = NULL; *mr = NULL; *nv = *nm = 0;
    if (tables) {
        jscan s = {tables, tables + split};
        if (!js_char(&s, '{')) return moe_error_set(err, "%s: model \"vocab\" is not an object", t->path);
        if (!js_char(&s, '}')) {
          do {
            vocab_ref v;
            char *q;
            if (js_string(&s, &v.key, &v.len) || !js_char(&s, ':')) goto bad_vocab;
            js_ws(&s);
            v.id = strtoll(s.p, &q, 10);
            if (q == s.p || (q < s.end && (*q == '.' || *q == 'e' || *q == 'E'))) goto bad_vocab;
            s.p = q;
            if (VEC_RESERVE(*vr, capv, *nv + 1)) return moe_error_set(err, "%s: out of memory", t->path);
            (*vr)[(*nv)++] = v;
          } while (js_char(&s, ','));
          if (!js_char(&s, '}')) goto bad_vocab;
        }
        s = (jscan){tables + split, tables + tlen};
        if (!js_char(&s, '[')) return moe_error_set(err, "%s: model \"merges\" is not an array", t->path);
        if (!js_char(&s, ']')) {
          do {
            merge_ref m = {0};
            js_ws(&s);
            if (s.p < s.end && *s.p == '[') {
                s.p++;
                if (js_string(&s, &m.a, &m.na) || !js_char(&s, ',') || js_string(&s, &m.b, &m.nb) || !js_char(&s, ']'))
                    goto bad_merge;
            } else {
                const char *str, *sp;
                size_t l;
                if (js_string(&s, &str, &l)) goto bad_merge;
                if (!(sp = memchr(str, ' ', l)) || sp == str) goto bad_merge;
                m = (merge_ref){str, sp + 1, (size_t)(sp - str), l - (size_t)(sp - str) - 1};
            }
            if (VEC_RESERVE(*mr, capm, *nm + 1)) return moe_error_set(err, "%s: out of memory", t->path);
            (*mr)[(*nm)++] = m;
          } while (js_char(&s, ','));
          if (!js_char(&s, ']')) goto bad_merge;
        }
        return MOE_OK;
    bad_vocab:
        return moe_error_set(err, "%s: model \"vocab\" entry %zu is not \"token\": id", t->path, *nv);
    bad_merge:
        return moe_error_set(err, "%s: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", t->path, *nm);
    }
    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab)) return moe_error_set(err, "%s: model has no \"vocab\" object", t->path);
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val)) return moe_error_set(err, "%s: vocab entry '%s' has no valid id", t->path, key);
        if (VEC_RESERVE(*vr, capv, *nv + 1)) return moe_error_set(err, "%s: out of memory", t->path);
        (*vr)[(*nv)++] = (vocab_ref){key, strlen(key), json_integer_value(val)};
    }
    json_t *merges = json_object_get(model, "merges");
    if (merges && !json_is_array(merges)) return moe_error_set(err, "%s: model \"merges\" is not an array", t->path);
    for (size_t i = 0; i < json_array_size(merges); i++) {
        merge_ref m;
        if (merge_parts(json_array_get(merges, i), &m.a, &m.na, &m.b, &m.nb))
            return moe_error_set(err, "%s: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", t->path, i);
        if (VEC_RESERVE(*mr, capm, *nm + 1)) return moe_error_set(err, "%s: out of memory", t->path);
        (*mr)[(*nm)++] = m;
    }
    return MOE_OK;
}

static int load_merges(tokenizer *t, const merge_ref *mr, size_t nm, moe_error *err) {
    t->merges.cap = 16;
    while (t->merges.cap < nm * 2 + 2) t->merges.cap *= 2;
    t->merges.slots = calloc(t->merges.cap, sizeof *t->merges.slots);
    if (!t->merges.slots) return moe_error_set(err, "%s: out of memory", t->path);
    char *buf = NULL;
    size_t bufcap = 0;
    for (size_t i = 0; i < nm; i++) {
        const char *a = mr[i].a, *b = mr[i].b;
        size_t na = mr[i].na, nb = mr[i].nb;
        int ia = strmap_get(&t->vocab, a, na), ib = strmap_get(&t->vocab, b, nb);
        if (VEC_RESERVE(buf, bufcap, na + nb + 1)) { free(buf); return moe_error_set(err, "%s: out of memory", t->path); }
        memcpy(buf, a, na);
        memcpy(buf + na, b, nb);
        int ic = strmap_get(&t->vocab, buf, na + nb);
        if (ia < 0 || ib < 0 || ic < 0) {
            const char *what = ia < 0 ? a : ib < 0 ? b : buf;
            int wl = (int)(ia < 0 ? na : ib < 0 ? nb : na + nb);
            int r = moe_error_set(err, "%s: merge %zu names token '%.*s' that is not in the vocab", t->path, i, wl, what);
            free(buf);
            return r;
        }
        pair_slot *s = pairmap_slot(&t->merges, ia, ib);
        s->key = (((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib) + 1;
        s->rank = (int)i; /* a repeated pair keeps its last rank, as the library does */
        s->new_id = ic;
    }
    free(buf);
    return MOE_OK;
}

/* tables: the fast-path text of vocab (tables[0..split)) and merges, or NULL. */
static int load_model(tokenizer *t, json_t *model, char *tables, size_t split, size_t tlen, moe_error *err) {
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!json_is_object(model)) return moe_error_set(err, "%s: no \"model\" object", t->path);
    if (!type && json_object_get(model, "merges")) type = "BPE"; /* older files omit the type */
    if (!type || strcmp(type, "BPE"))
        return moe_error_set(err, "%s: model type '%s' is not supported (only BPE)", t->path, type ? type : "?");
    if (json_is_true(json_object_get(model, "byte_fallback")))
        return moe_error_set(err, "%s: BPE byte_fallback is not supported", t->path);
    json_t *dr = json_object_get(model, "dropout");
    if (json_is_number(dr) && json_number_value(dr) > 0)
        return moe_error_set(err, "%s: BPE dropout is not supported", t->path);
    const char *cont = json_string_value(json_object_get(model, "continuing_subword_prefix"));
    const char *eow = json_string_value(json_object_get(model, "end_of_word_suffix"));
    if ((cont && *cont) || (eow && *eow))
        return moe_error_set(err, "%s: BPE continuing_subword_prefix/end_of_word_suffix are not supported", t->path);
    t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));

    vocab_ref *vr;
    merge_ref *mr;
    size_t nv, nm;
    int rc = read_tables(t, model, tables, split, tlen, &vr, &nv, &mr, &nm, err);
    if (!rc && strmap_init(&t->vocab, nv + 4096)) rc = moe_error_set(err, "%s: out of memory", t->path);
    for (size_t i = 0; i < nv && !rc; i++) {
        if (vr[i].id < 0 || vr[i].id >= TOKENIZER_MAX_VOCAB)
            rc = moe_error_set(err, "%s: vocab entry '%.*s' has id %lld, outside [0, %d)", t->path, (int)vr[i].len,
                               vr[i].key, (long long)vr[i].id, TOKENIZER_MAX_VOCAB);
        else if (strmap_put(&t->vocab, vr[i].key, vr[i].len, (int)vr[i].id))
            rc = moe_error_set(err, "%s: out of memory", t->path);
        else if (vr[i].id + 1 > t->vocab_size) t->vocab_size = (int)vr[i].id + 1;
    }
    t->model_vocab_n = (int)t->vocab.n;
    if (!rc) rc = load_merges(t, mr, nm, err);
    free(vr);
    free(mr);
    return rc;
}

static int load_added(tokenizer *t, json_t *arr, moe_error *err) {
    if (!arr || json_is_null(arr)) return MOE_OK;
    if (!json_is_array(arr)) return moe_error_set(err, "%s: \"added_tokens\" is not an array", t->path);
    t->added = calloc(json_array_size(arr) + 1, sizeof *t->added);
    if (!t->added) return moe_error_set(err, "%s: out of memory", t->path);
    int max_added = -1;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *a = json_array_get(arr, i);
        json_t *c = json_object_get(a, "content"), *id = json_object_get(a, "id");
        if (!json_is_string(c) || !json_is_integer(id) || json_integer_value(id) < 0 ||
            !json_string_length(c))
            return moe_error_set(err, "%s: added_tokens[%zu] needs a non-empty content and an id", t->path, i);
        added_token *at = &t->added[t->nadded];
        at->content = malloc(json_string_length(c) + 1);
        if (!at->content) return moe_error_set(err, "%s: out of memory", t->path);
        t->nadded++;
        at->len = json_string_length(c);
        memcpy(at->content, json_string_value(c), at->len + 1);
        /* the id, as the library assigns it (the file's id is only a hint
         * there): the spelling's existing id, else one past the largest added
         * id, but at least the number of model vocab entries */
        at->id = strmap_get(&t->vocab, at->content, at->len);
        if (at->id < 0) at->id = max_added + 1 >= t->model_vocab_n && t->model_vocab_n ? max_added + 1 : t->model_vocab_n;
        if (at->id > max_added) max_added = at->id;
        (void)id;
        at->special = json_is_true(json_object_get(a, "special"));
        at->lstrip = json_is_true(json_object_get(a, "lstrip"));
        at->rstrip = json_is_true(json_object_get(a, "rstrip"));
        at->single_word = json_is_true(json_object_get(a, "single_word"));
        json_t *norm = json_object_get(a, "normalized");
        int normalized = norm ? json_is_true(norm) : !at->special;
        if (trie_add(normalized ? &t->norm_trie : &t->raw_trie, at->content, at->len, t->nadded - 1) ||
            strmap_put(&t->vocab, at->content, at->len, at->id))
            return moe_error_set(err, "%s: out of memory", t->path);
        if (at->id + 1 > t->vocab_size) t->vocab_size = at->id + 1;
    }
    return MOE_OK;
}

static int check_decoder(tokenizer *t, json_t *d, moe_error *err) {
    if (!d || json_is_null(d)) return MOE_OK;
    const char *type = json_string_value(json_object_get(d, "type"));
    if (type && !strcmp(type, "ByteLevel")) return MOE_OK;
    if (type && !strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(d, "decoders");
        for (size_t i = 0; i < json_array_size(arr); i++)
            if (check_decoder(t, json_array_get(arr, i), err)) return MOE_FAIL;
        return MOE_OK;
    }
    return moe_error_set(err, "%s: decoder type '%s' is not supported (only ByteLevel)", t->path, type ? type : "?");
}

/* The decoded bytes of every id: the byte-level spelling mapped back to bytes
 * when every character is in the byte-level alphabet, else the raw UTF-8
 * spelling (as the library's ByteLevel decoder does, e.g. for "<｜User｜>"). */
static int build_decode(tokenizer *t, moe_error *err) {
    int cp_byte[324];
    bytelevel_tables(t->byte_cp, cp_byte);
    size_t n = (size_t)t->vocab_size;
    t->dec_off = calloc(n + 1, sizeof *t->dec_off);
    t->dec_len = malloc((n + 1) * sizeof *t->dec_len);
    t->special = calloc(n + 1, 1);
    t->dec_bytes = malloc(t->vocab.alen + 1);
    if (!t->dec_off || !t->dec_len || !t->special || !t->dec_bytes) return moe_error_set(err, "%s: out of memory", t->path);
    for (size_t i = 0; i < n; i++) t->dec_len[i] = UINT32_MAX;
    /* model vocab first, then added tokens override (they were put last) */
    size_t used = 0;
    for (size_t i = 0; i < t->vocab.cap; i++) {
        const strmap_slot *s = &t->vocab.slots[i];
        if (!s->h) continue;
        const unsigned char *k = (const unsigned char *)t->vocab.arena + s->off;
        char *o = t->dec_bytes + used;
        size_t j = 0, on = 0;
        int all = 1;
        while (j < s->len) {
            size_t l = utf8_valid_len(k + j, s->len - j);
            int cp;
            if (!l) { all = 0; break; }
            utf8_get(k + j, &cp);
            if (cp >= 324 || cp_byte[cp] < 0) { all = 0; break; }
            o[on++] = (char)cp_byte[cp];
            j += l;
        }
        if (!all) { memcpy(o, k, s->len); on = s->len; }
        t->dec_off[s->val] = (uint32_t)used;
        t->dec_len[s->val] = (uint32_t)on;
        used += on;
    }
    for (int i = 0; i < t->nadded; i++) t->special[t->added[i].id] = (unsigned char)t->added[i].special;
    for (int b = 0; b < 256; b++) {
        char s[4];
        size_t l = utf8_put(s, t->byte_cp[b]);
        t->byte_id[b] = strmap_get(&t->vocab, s, l);
    }
    return MOE_OK;
}

/* bos_token / eos_token in tokenizer_config.json: a string or {"content": ...}. */
static const char *config_token(json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_string_value(v);
}

/* tokenizer_config.json text (NULL: none). */
static int load_config(tokenizer *t, const char *text, size_t len, const char *cpath, moe_error *err) {
    t->add_bos = 1;
    t->bos_id = t->eos_id = -1;
    if (!text) return MOE_OK; /* optional */
    snprintf(t->config_path, sizeof t->config_path, "%s", cpath);
    json_error_t je;
    json_t *cfg = json_loadb(text, len, 0, &je);
    if (!cfg) return moe_error_set(err, "%s: line %d: %s", cpath, je.line, je.text);
    int rc = MOE_OK;
    const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
    json_t *ab = json_object_get(cfg, "add_bos_token");
    if (json_is_boolean(ab)) t->add_bos = json_is_true(ab);
    json_t *ct = json_object_get(cfg, "chat_template");
    if (json_is_array(ct)) { /* [{"name": ..., "template": ...}]: take "default" */
        json_t *def = NULL;
        for (size_t i = 0; i < json_array_size(ct); i++) {
            json_t *e = json_array_get(ct, i);
            const char *nm = json_string_value(json_object_get(e, "name"));
            if (nm && !strcmp(nm, "default")) def = json_object_get(e, "template");
        }
        ct = def;
    }
    if (bos && !(t->bos_str = xstrdup(bos))) rc = moe_error_set(err, "%s: out of memory", cpath);
    if (eos && !(t->eos_str = xstrdup(eos))) rc = moe_error_set(err, "%s: out of memory", cpath);
    if (json_is_string(ct) && !(t->chat_template = xstrdup(json_string_value(ct))))
        rc = moe_error_set(err, "%s: out of memory", cpath);
    if (bos && (t->bos_id = tokenizer_token_id(t, bos)) < 0)
        rc = moe_error_set(err, "%s: bos_token '%s' is not a token", cpath, bos);
    if (eos && (t->eos_id = tokenizer_token_id(t, eos)) < 0)
        rc = moe_error_set(err, "%s: eos_token '%s' is not a token", cpath, eos);
    json_decref(cfg);
    return rc;
}

/* Reads a whole file (at most max bytes) into a malloc'd buffer. */
static int read_file(const char *path, size_t max, char **out, size_t *len, moe_error *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return moe_error_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) { fclose(f); return moe_error_set(err, "%s: not a regular file", path); }
    if ((uint64_t)st.st_size > max) {
        fclose(f);
        return moe_error_set(err, "%s: file is %lld bytes, more than the limit of %zu", path, (long long)st.st_size, max);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) { fclose(f); return moe_error_set(err, "%s: out of memory", path); }
    size_t got = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    if (got != (size_t)st.st_size) { free(buf); return moe_error_set(err, "%s: read error", path); }
    buf[got] = 0;
    *out = buf;
    *len = got;
    return MOE_OK;
}

int tokenizer_load(tokenizer **out, const char *path, moe_error *err) {
    *out = NULL;
    char tpath[1024], cpath[1024];
    struct stat st;
    if (strlen(path) > 900) return moe_error_set(err, "%.100s...: path too long", path);
    size_t pl = strlen(path);
    int is_dir = stat(path, &st) == 0 ? S_ISDIR(st.st_mode) : !(pl >= 5 && !strcmp(path + pl - 5, ".json"));
    if (is_dir) {
        snprintf(tpath, sizeof tpath, "%s/tokenizer.json", path);
        snprintf(cpath, sizeof cpath, "%s/tokenizer_config.json", path);
    } else {
        snprintf(tpath, sizeof tpath, "%s", path);
        const char *sl = strrchr(path, '/');
        if (sl) snprintf(cpath, sizeof cpath, "%.*s/tokenizer_config.json", (int)(sl - path), path);
        else snprintf(cpath, sizeof cpath, "tokenizer_config.json");
    }
    char *text = NULL, *ctext = NULL;
    size_t len = 0, clen = 0;
    if (read_file(tpath, TOKENIZER_MAX_FILE, &text, &len, err)) return MOE_FAIL;
    if (stat(cpath, &st) == 0 && read_file(cpath, TOKENIZER_MAX_FILE, &ctext, &clen, err)) { free(text); return MOE_FAIL; }
    int rc = tokenizer_load_buffer(out, text, len, tpath, ctext, clen, cpath, err);
    free(text);
    free(ctext);
    return rc;
}

int tokenizer_load_buffer(tokenizer **out, const char *json, size_t len, const char *path, const char *config_json,
                          size_t config_len, const char *config_path, moe_error *err) {
    *out = NULL;
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) return moe_error_set(err, "%s: out of memory", path);
    snprintf(t->path, sizeof t->path, "%s", path);
    json_t *root = NULL;
    int rc = MOE_FAIL;
    char *text = NULL, *tables = NULL;
    size_t n = 0, rng[2][2], split = 0, tlen = 0;
    /* a writable copy: the big tables are cut out of it in place */
    if (!(text = malloc(len + 1))) { moe_error_set(err, "%s: out of memory", t->path); goto done; }
    memcpy(text, json, len);
    n = len;
    /* move the two big tables out of the text (see "Fast reading") */
    if (!locate_tables(text, n, rng)) {
        size_t lv = rng[0][1] - rng[0][0], lm = rng[1][1] - rng[1][0];
        if (!(tables = malloc(lv + lm + 1))) { moe_error_set(err, "%s: out of memory", t->path); goto done; }
        memcpy(tables, text + rng[0][0], lv);
        memcpy(tables + lv, text + rng[1][0], lm);
        split = lv;
        tlen = lv + lm;
        /* squeeze each range to {} / [] plus its newlines, in place */
        int first = rng[0][0] < rng[1][0] ? 0 : 1;
        size_t w = rng[first][0], r = w;
        for (int k = 0; k < 2; k++) {
            int q = k ? !first : first;
            while (r < rng[q][0]) text[w++] = text[r++]; /* the text between the ranges */
            text[w++] = q ? '[' : '{';
            text[w++] = q ? ']' : '}';
            for (; r < rng[q][1]; r++) if (text[r] == '\n') text[w++] = '\n';
        }
        while (r < n) text[w++] = text[r++];
        n = w;
    }
    json_error_t je;
    root = json_loadb(text, n, JSON_ALLOW_NUL, &je);
    if (!root) { moe_error_set(err, "%s: line %d: %s", t->path, je.line, je.text); goto done; }
    if (!json_is_object(root)) { moe_error_set(err, "%s: not a JSON object", t->path); goto done; }
    int have_bl = 0;
    if (check_normalizer(t, json_object_get(root, "normalizer"), err)) goto done;
    if (load_model(t, json_object_get(root, "model"), tables, split, tlen, err)) goto done;
    if (load_added(t, json_object_get(root, "added_tokens"), err)) goto done;
    if (load_pretok(t, json_object_get(root, "pre_tokenizer"), &have_bl, err)) goto done;
    if (!have_bl) { moe_error_set(err, "%s: pre_tokenizer has no ByteLevel step (only byte-level BPE is supported)", t->path); goto done; }
    if (check_decoder(t, json_object_get(root, "decoder"), err)) goto done;
    if (build_decode(t, err)) goto done;
    if (load_config(t, config_json, config_len, config_path ? config_path : "tokenizer_config.json", err)) goto done;
    rc = MOE_OK;
done:
    json_decref(root);
    free(text);
    free(tables);
    if (rc) tokenizer_free(t);
    else *out = t;
    return rc;
}

void tokenizer_free(tokenizer *t) {
    if (!t) return;
    strmap_free(&t->vocab);
    free(t->merges.slots);
    for (int i = 0; i < t->nsteps; i++) {
        if (t->steps[i].re) pcre2_code_free(t->steps[i].re);
        if (t->steps[i].re_newer) pcre2_code_free(t->steps[i].re_newer);
    }
    free(t->steps);
    for (int i = 0; i < t->nadded; i++) free(t->added[i].content);
    free(t->added);
    free(t->raw_trie.nodes);
    free(t->norm_trie.nodes);
    free(t->dec_bytes);
    free(t->dec_off);
    free(t->dec_len);
    free(t->special);
    free(t->bos_str);
    free(t->eos_str);
    free(t->chat_template);
    free(t);
}

/* ======================================================================
 * Encoding
 * ====================================================================== */

typedef struct { uint32_t off, len; } span;

typedef struct { int rank, pos; } heap_item;

typedef struct {
    int id;   /* current token id; -1 once merged into its left neighbour */
    int prv;  /* index of the previous live symbol, -1 for none */
    int nxt;  /* index of the next live symbol, -1 for none */
} symbol;

typedef struct {
    const tokenizer *t;
    int *ids; size_t nids, capids;          /* the output */
    char *work; size_t wlen, wcap;          /* pieces' bytes during pre-tokenization */
    span *pcs, *pcs2; size_t npcs, cap1, cap2; /* current / next list of pieces */
    span *m; size_t capm;                   /* regex matches of one piece (len = is_match) */
    unsigned char *ism; size_t capism;      /* per match: 1 if it was a match */
    symbol *sym; size_t capsym;             /* BPE symbols of the piece being merged */
    heap_item *heap; size_t nheap, capheap; /* BPE candidate merges */
    pcre2_match_data *md;                   /* regex match data */
    pcre2_match_context *big;               /* made on demand for very long pieces: a large JIT stack, */
    pcre2_jit_stack *jit;                   /* no match limit (NULL until needed) */
    bpe_cache cache;                        /* this call's piece cache (map.slots NULL until the first piece) */
    moe_error *err;
} encoder;

static int enc_oom(encoder *e) { return moe_error_set(e->err, "%s: out of memory while encoding", e->t->path); }

static int emit(encoder *e, int id) {
    if (VEC_RESERVE(e->ids, e->capids, e->nids + 1)) return enc_oom(e);
    e->ids[e->nids++] = id;
    return MOE_OK;
}

/* ---------------------------------------------------------------- BPE */

static int heap_less(heap_item a, heap_item b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(encoder *e, int rank, int pos) {
    heap_item *h = e->heap;
    size_t i = e->nheap++;
    h[i] = (heap_item){rank, pos};
    while (i && heap_less(h[i], h[(i - 1) / 2])) {
        heap_item x = h[i]; h[i] = h[(i - 1) / 2]; h[(i - 1) / 2] = x;
        i = (i - 1) / 2;
    }
}

static heap_item heap_pop(encoder *e) {
    heap_item *h = e->heap, top = h[0];
    h[0] = h[--e->nheap];
    size_t i = 0, n = e->nheap;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && heap_less(h[l], h[m])) m = l;
        if (r < n && heap_less(h[r], h[m])) m = r;
        if (m == i) break;
        heap_item x = h[i]; h[i] = h[m]; h[m] = x;
        i = m;
    }
    return top;
}

static void try_pair(encoder *e, int pos) {
    int nx = e->sym[pos].nxt;
    if (nx < 0) return;
    const pair_slot *s = pairmap_get(&e->t->merges, e->sym[pos].id, e->sym[nx].id);
    if (s) heap_push(e, s->rank, pos);
}

/* Merges the bytes p[0..n) and appends their ids. */
static int bpe_merge(encoder *e, const unsigned char *p, size_t n) {
    const tokenizer *t = e->t;
    /* every merge adds at most two candidates, so 3n bounds the heap */
    if (VEC_RESERVE(e->sym, e->capsym, n) || VEC_RESERVE(e->heap, e->capheap, 3 * n)) return enc_oom(e);
    symbol *y = e->sym;
    int ns = 0;
    for (size_t i = 0; i < n; i++) {
        int id = t->byte_id[p[i]];
        if (id < 0) continue; /* a byte the vocab lacks is dropped (no unk token) */
        y[ns] = (symbol){id, ns - 1, ns + 1};
        ns++;
    }
    if (!ns) return MOE_OK;
    y[ns - 1].nxt = -1;
    e->nheap = 0;
    for (int i = 0; i + 1 < ns; i++) try_pair(e, i);
    while (e->nheap) {
        heap_item top = heap_pop(e);
        int a = top.pos, b = y[a].nxt;
        if (y[a].id < 0 || b < 0) continue; /* merged away / at the end */
        const pair_slot *s = pairmap_get(&t->merges, y[a].id, y[b].id);
        if (!s || s->rank != top.rank) continue; /* stale: a neighbour changed */
        y[a].id = s->new_id;
        y[b].id = -1;
        y[a].nxt = y[b].nxt;
        if (y[b].nxt >= 0) y[y[b].nxt].prv = a;
        if (y[a].prv >= 0) try_pair(e, y[a].prv);
        try_pair(e, a);
    }
    for (int i = 0; i >= 0; i = y[i].nxt)
        if (emit(e, y[i].id)) return MOE_FAIL;
    return MOE_OK;
}

/* Encodes one piece (through the cache) and appends its ids. */
static int bpe_piece(encoder *e, const char *p, size_t n) {
    const tokenizer *t = e->t;
    bpe_cache *c = &e->cache;
    int ci = -1;
    if (!c->map.slots && strmap_init(&c->map, 256)) return enc_oom(e);
    if (n <= CACHE_MAX_PIECE && (ci = strmap_get(&c->map, p, n)) >= 0) {
        cache_entry ce = c->ent[ci];
        if (VEC_RESERVE(e->ids, e->capids, e->nids + ce.cnt)) return enc_oom(e);
        if (ce.cnt) memcpy(e->ids + e->nids, c->ids + ce.off, ce.cnt * sizeof(int));
        e->nids += ce.cnt;
        return MOE_OK;
    }
    size_t first = e->nids;
    int whole = -1;
    if (t->ignore_merges) { /* a piece that is itself a token stays whole */
        char buf[4 * 256];
        size_t bl = 0;
        for (size_t i = 0; i < n && n <= 256; i++) bl += utf8_put(buf + bl, t->byte_cp[(unsigned char)p[i]]);
        if (n <= 256) whole = strmap_get(&t->vocab, buf, bl);
    }
    if (whole >= 0 ? emit(e, whole) : bpe_merge(e, (const unsigned char *)p, n)) return MOE_FAIL;
    if (n <= CACHE_MAX_PIECE && c->n < CACHE_MAX_ENTRIES) {
        size_t k = e->nids - first;
        if (VEC_RESERVE(c->ids, c->capids, c->nids + k) || VEC_RESERVE(c->ent, c->cap, c->n + 1)) return enc_oom(e);
        if (k) memcpy(c->ids + c->nids, e->ids + first, k * sizeof(int));
        c->ent[c->n] = (cache_entry){(uint32_t)c->nids, (uint32_t)k};
        c->nids += k;
        if (strmap_put(&c->map, p, n, (int)c->n)) return enc_oom(e);
        c->n++;
    }
    return MOE_OK;
}

/* ---------------------------------------------------------------- pre-tokenizer */

static int push_span(encoder *e, span **v, size_t *n, size_t *cap, uint32_t off, uint32_t len) {
    if (VEC_RESERVE(*v, *cap, *n + 1)) return enc_oom(e);
    (*v)[(*n)++] = (span){off, len};
    return MOE_OK;
}

/* Splits piece pc by step st into e->pcs2 (the library's Split semantics). */
static int split_piece(encoder *e, const pretok_step *st, span pc, size_t *n2) {
    const unsigned char *s = (const unsigned char *)e->work + pc.off;
    size_t len = pc.len, nm = 0, start = 0, prev = 0, last_end = SIZE_MAX;
    const pcre2_code *re = st->re_newer && has_newer_unicode(s, len, st->cats) ? st->re_newer : st->re;
    /* 1. the matches and the gaps between them, in order */
    while (start <= len) {
        int rc = pcre2_match(re, s, len, start, PCRE2_NO_UTF_CHECK, e->md, e->big);
        if ((rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
             rc == PCRE2_ERROR_HEAPLIMIT) && !e->big) {
            /* a long run of one character class (e.g. a megabyte of spaces): retry with room */
            e->big = pcre2_match_context_create(NULL);
            e->jit = pcre2_jit_stack_create(64 * 1024, 1024 * 1024 * 1024, NULL);
            if (!e->big || !e->jit) return enc_oom(e);
            pcre2_jit_stack_assign(e->big, NULL, e->jit);
            pcre2_set_match_limit(e->big, UINT32_MAX);
            pcre2_set_depth_limit(e->big, UINT32_MAX);
            continue;
        }
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return moe_error_set(e->err, "%s: pre_tokenizer regex failed (pcre2 error %d)", e->t->path, rc);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t b = ov[0], en = ov[1];
        size_t step = en < len ? utf8_valid_len(s + en, len - en) : 1;
        if (b == en && last_end == en) { start = en + (step ? step : 1); continue; }
        if (VEC_RESERVE(e->m, e->capm, nm + 2) || VEC_RESERVE(e->ism, e->capism, nm + 2)) return enc_oom(e);
        if (b > prev) { e->m[nm] = (span){(uint32_t)prev, (uint32_t)(b - prev)}; e->ism[nm++] = 0; }
        e->m[nm] = (span){(uint32_t)b, (uint32_t)(en - b)}; e->ism[nm++] = 1;
        prev = last_end = en;
        start = b == en ? en + (step ? step : 1) : en;
    }
    if (VEC_RESERVE(e->m, e->capm, nm + 1) || VEC_RESERVE(e->ism, e->capism, nm + 1)) return enc_oom(e);
    if (prev < len || !len) { e->m[nm] = (span){(uint32_t)prev, (uint32_t)(len - prev)}; e->ism[nm++] = 0; }
    if (st->invert) for (size_t i = 0; i < nm; i++) e->ism[i] = !e->ism[i];

    /* 2. regroup by behavior; (off, len) relative to the piece, flag = remove */
    size_t first = *n2;
    int prev_match = 0;
    for (size_t k = 0; k < nm; k++) {
        size_t i = st->behavior == SPLIT_MERGED_NEXT ? nm - 1 - k : k; /* MergedWithNext folds from the right */
        span m = e->m[i];
        int is = e->ism[i], join = 0;
        switch (st->behavior) {
        case SPLIT_ISOLATED: break;
        case SPLIT_REMOVED: if (is) { prev_match = is; continue; } break;
        case SPLIT_CONTIGUOUS: join = is == prev_match && *n2 > first; break;
        case SPLIT_MERGED_PREV:
        case SPLIT_MERGED_NEXT: join = is && !prev_match && *n2 > first; break;
        }
        prev_match = is;
        if (join) {
            span *last = &e->pcs2[*n2 - 1];
            if (st->behavior == SPLIT_MERGED_NEXT) { last->len += last->off - m.off; last->off = m.off; }
            else last->len = m.off + m.len - last->off;
        } else if (push_span(e, &e->pcs2, n2, &e->cap2, m.off, m.len)) return MOE_FAIL;
    }
    if (st->behavior == SPLIT_MERGED_NEXT) /* folded right to left: put back in order */
        for (size_t i = first, j = *n2 - 1; i < j; i++, j--) { span x = e->pcs2[i]; e->pcs2[i] = e->pcs2[j]; e->pcs2[j] = x; }
    /* 3. make absolute, drop empty pieces */
    size_t w = first;
    for (size_t i = first; i < *n2; i++)
        if (e->pcs2[i].len) e->pcs2[w++] = (span){e->pcs2[i].off + pc.off, e->pcs2[i].len};
    *n2 = w;
    return MOE_OK;
}

/* Pre-tokenizes and BPE-encodes valid UTF-8 text s[0..n). */
static int encode_valid(encoder *e, const char *s, size_t n) {
    const tokenizer *t = e->t;
    e->wlen = 0;
    if (VEC_RESERVE(e->work, e->wcap, n)) return enc_oom(e);
    memcpy(e->work, s, n);
    e->wlen = n;
    e->npcs = 0;
    if (push_span(e, &e->pcs, &e->npcs, &e->cap1, 0, (uint32_t)n)) return MOE_FAIL;
    for (int k = 0; k < t->nsteps; k++) {
        const pretok_step *st = &t->steps[k];
        size_t n2 = 0;
        for (size_t i = 0; i < e->npcs; i++) {
            span pc = e->pcs[i];
            if (st->prefix_space) {
                if (pc.len && e->work[pc.off] == ' ') { if (push_span(e, &e->pcs2, &n2, &e->cap2, pc.off, pc.len)) return MOE_FAIL; continue; }
                if (VEC_RESERVE(e->work, e->wcap, e->wlen + pc.len + 1)) return enc_oom(e);
                e->work[e->wlen] = ' ';
                memmove(e->work + e->wlen + 1, e->work + pc.off, pc.len);
                if (push_span(e, &e->pcs2, &n2, &e->cap2, (uint32_t)e->wlen, pc.len + 1)) return MOE_FAIL;
                e->wlen += pc.len + 1;
            } else if (split_piece(e, st, pc, &n2)) return MOE_FAIL;
        }
        span *x = e->pcs; e->pcs = e->pcs2; e->pcs2 = x;
        size_t c = e->cap1; e->cap1 = e->cap2; e->cap2 = c;
        e->npcs = n2;
    }
    for (size_t i = 0; i < e->npcs; i++)
        if (e->pcs[i].len && bpe_piece(e, e->work + e->pcs[i].off, e->pcs[i].len)) return MOE_FAIL;
    return MOE_OK;
}

/* A segment without added tokens: valid runs go through the pre-tokenizer;
 * each byte that is not valid UTF-8 is a piece of its own. */
static int encode_segment(encoder *e, const char *s, size_t n) {
    size_t i = 0, run = 0;
    while (i < n) {
        size_t l = utf8_valid_len((const unsigned char *)s + i, n - i);
        if (l) { i += l; continue; }
        if (i > run && encode_valid(e, s + run, i - run)) return MOE_FAIL;
        if (bpe_piece(e, s + i, 1)) return MOE_FAIL;
        run = ++i;
    }
    if (n > run && encode_valid(e, s + run, n - run)) return MOE_FAIL;
    return MOE_OK;
}

static int is_space_at(const char *s, size_t n, size_t *l) {
    int cp;
    *l = utf8_valid_len((const unsigned char *)s, n);
    if (!*l) return 0;
    utf8_get((const unsigned char *)s, &cp);
    return cp == ' ' || (cp >= 9 && cp <= 13) || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

/* Word characters for single_word: ASCII letters/digits/underscore and any
 * non-ASCII byte (an approximation of Unicode alphanumerics). */
static int is_word_byte(unsigned char c) { return c >= 0x80 || c == '_' || (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z'); }

/* Finds the added tokens of trie `pass` (0 raw, 1 normalized) in s[0..n);
 * the text between them goes to pass 1, then to encode_segment. */
static int encode_added(encoder *e, const char *s, size_t n, int pass) {
    const tokenizer *t = e->t;
    const trie *tr = pass == 0 ? &t->raw_trie : &t->norm_trie;
    if (pass > 1 || !tr->n) return pass > 1 ? encode_segment(e, s, n) : encode_added(e, s, n, pass + 1);
    size_t done = 0; /* text before this is emitted */
    for (size_t i = 0; i < n; i++) {
        size_t ml = 0;
        int k = trie_longest(tr, s + i, n - i, &ml);
        if (k < 0) continue;
        const added_token *at = &t->added[k];
        size_t b = i, en = i + ml, l;
        if (at->single_word && ((b > 0 && is_word_byte((unsigned char)s[b - 1])) || (en < n && is_word_byte((unsigned char)s[en]))))
            continue;
        if (at->lstrip) /* swallow whitespace to the left, not past the last match */
            while (b > done) {
                size_t j = b - 1;
                while (j > done && ((unsigned char)s[j] & 0xc0) == 0x80) j--;
                if (!is_space_at(s + j, n - j, &l) || j + l != b) break;
                b = j;
            }
        if (at->rstrip) while (en < n && is_space_at(s + en, n - en, &l)) en += l;
        if (b > done && encode_added(e, s + done, b - done, pass + 1)) return MOE_FAIL;
        if (emit(e, at->id)) return MOE_FAIL;
        done = en;
        i = en - 1;
    }
    if (n > done && encode_added(e, s + done, n - done, pass + 1)) return MOE_FAIL;
    return MOE_OK;
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int **ids, int *n, moe_error *err) {
    encoder e = {.t = t, .err = err};
    *ids = NULL;
    *n = 0;
    if (len > (size_t)INT32_MAX / 2) return moe_error_set(err, "%s: text of %zu bytes is too long to encode", t->path, len);
    e.md = pcre2_match_data_create(1, NULL);
    int rc = e.md ? encode_added(&e, text, len, 0) : enc_oom(&e);
    pcre2_match_data_free(e.md);
    pcre2_match_context_free(e.big);
    pcre2_jit_stack_free(e.jit);
    free(e.work); free(e.pcs); free(e.pcs2); free(e.m); free(e.ism);
    free(e.sym); free(e.heap);
    strmap_free(&e.cache.map); free(e.cache.ids); free(e.cache.ent);
    if (rc) { free(e.ids); return rc; }
    if (!e.ids && !(e.ids = malloc(sizeof(int)))) return moe_error_set(err, "%s: out of memory", t->path);
    *ids = e.ids;
    *n = (int)e.nids;
    return MOE_OK;
}

/* ======================================================================
 * Decoding
 * ====================================================================== */

const char *tokenizer_token_bytes(const tokenizer *t, int id, size_t *len) {
    if (id < 0 || id >= t->vocab_size || t->dec_len[id] == UINT32_MAX) return NULL;
    *len = t->dec_len[id];
    return t->dec_bytes + t->dec_off[id];
}

int tokenizer_decode(const tokenizer *t, const int *ids, int n, char **text, size_t *len, moe_error *err) {
    size_t total = 0, l;
    *text = NULL;
    *len = 0;
    for (int i = 0; i < n; i++) {
        if (!tokenizer_token_bytes(t, ids[i], &l))
            return moe_error_set(err, "%s: token id %d is not in the vocabulary (size %d)", t->path, ids[i], t->vocab_size);
        total += l;
    }
    char *o = malloc(total + 1);
    if (!o) return moe_error_set(err, "%s: out of memory", t->path);
    size_t p = 0;
    for (int i = 0; i < n; i++) {
        const char *b = tokenizer_token_bytes(t, ids[i], &l);
        memcpy(o + p, b, l);
        p += l;
    }
    o[p] = 0;
    *text = o;
    *len = p;
    return MOE_OK;
}

/* ---------------------------------------------------------------- streaming */

void tokenizer_stream_init(tokenizer_stream *s) { memset(s, 0, sizeof *s); }

void tokenizer_stream_free(tokenizer_stream *s) {
    free(s->buf);
    memset(s, 0, sizeof *s);
}

/* How many bytes at the end of b[0..n) are the start of a UTF-8 character
 * that more bytes could still complete (0 if none). */
static size_t utf8_incomplete_tail(const unsigned char *b, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++) {
        unsigned c = b[n - k];
        if ((c & 0xc0) == 0x80) continue; /* continuation: look further back */
        size_t need = c >= 0xc2 && c < 0xe0 ? 2 : c >= 0xe0 && c < 0xf0 ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 1;
        if (need <= k) return 0;
        /* a valid prefix? (second byte range rules) */
        if (k >= 2) {
            unsigned d = b[n - k + 1];
            if ((c == 0xe0 && d < 0xa0) || (c == 0xed && d >= 0xa0) || (c == 0xf0 && d < 0x90) || (c == 0xf4 && d >= 0x90))
                return 0;
        }
        return k;
    }
    return 0;
}

int tokenizer_stream_push(const tokenizer *t, tokenizer_stream *s, int id, const char **text, size_t *len,
                          moe_error *err) {
    size_t l;
    const char *b = tokenizer_token_bytes(t, id, &l);
    *text = "";
    *len = 0;
    if (!b) return moe_error_set(err, "%s: token id %d is not in the vocabulary (size %d)", t->path, id, t->vocab_size);
    if (VEC_RESERVE(s->buf, s->cap, (size_t)s->npend + l + 1)) return moe_error_set(err, "%s: out of memory", t->path);
    memcpy(s->buf, s->pend, (size_t)s->npend);
    memcpy(s->buf + s->npend, b, l);
    size_t n = (size_t)s->npend + l, keep = utf8_incomplete_tail((unsigned char *)s->buf, n);
    memcpy(s->pend, s->buf + n - keep, keep);
    s->npend = (int)keep;
    s->buf[n - keep] = 0;
    *text = s->buf;
    *len = n - keep;
    return MOE_OK;
}

void tokenizer_stream_flush(tokenizer_stream *s, const char **text, size_t *len) {
    *text = "";
    *len = 0;
    if (VEC_RESERVE(s->buf, s->cap, (size_t)s->npend + 1)) return;
    memcpy(s->buf, s->pend, (size_t)s->npend);
    s->buf[s->npend] = 0;
    *text = s->buf;
    *len = (size_t)s->npend;
    s->npend = 0;
}

/* ======================================================================
 * Getters
 * ====================================================================== */

int tokenizer_token_id(const tokenizer *t, const char *token) {
    size_t n = strlen(token);
    for (int i = 0; i < t->nadded; i++) /* added tokens first, as the library does */
        if (t->added[i].len == n && !memcmp(t->added[i].content, token, n)) return t->added[i].id;
    return strmap_get(&t->vocab, token, n);
}
int tokenizer_vocab_size(const tokenizer *t) { return t->vocab_size; }
int tokenizer_bos_id(const tokenizer *t) { return t->bos_id; }
int tokenizer_eos_id(const tokenizer *t) { return t->eos_id; }
int tokenizer_add_bos(const tokenizer *t) { return t->add_bos; }
int tokenizer_is_special(const tokenizer *t, int id) { return id >= 0 && id < t->vocab_size && t->special[id]; }
const char *tokenizer_bos_str(const tokenizer *t) { return t->bos_str ? t->bos_str : ""; }
const char *tokenizer_eos_str(const tokenizer *t) { return t->eos_str ? t->eos_str : ""; }
const char *tokenizer_chat_template(const tokenizer *t) { return t->chat_template; }
const char *tokenizer_config_path(const tokenizer *t) { return t->config_path; }

/* ======================================================================
 * Construction from token arrays (GGUF metadata: tokenizer.ggml.*)
 * ====================================================================== */

/* The pre-tokenizers GGUF names (tokenizer.ggml.pre), as llama.cpp's llama-vocab.cpp
 * runs them: each regex is a Split with behavior Isolated, in order, then ByteLevel
 * without its own regex. "deepseek-v3" is exactly DeepSeek-V3's tokenizer.json. */
static const char *const pre_deepseek_v3[] = {
    "\\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
    NULL,
};
static const char *const pre_deepseek_llm[] = {
    "[\r\n]",
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
    "\\s+$",
    "[一-龥ࠀ-一가-퟿]+",
    "\\p{N}+",
    NULL,
};

static int set_pretok_name(tokenizer *t, const char *pre, moe_error *err) {
    const char *const *rx = NULL;
    if (!strcmp(pre, "deepseek-v3")) rx = pre_deepseek_v3;
    else if (!strcmp(pre, "deepseek-llm")) rx = pre_deepseek_llm;
    else if (!strcmp(pre, "gpt-2")) { /* GPT-2's regex, as the ByteLevel step with use_regex runs it */
        pretok_step st = {.behavior = SPLIT_ISOLATED, .cats = class_escapes(gpt2_pattern)};
        if (compile_regex(t, gpt2_pattern, sizeof gpt2_pattern - 1, 0, 0, &st.re, err)) return MOE_FAIL;
        if (compile_regex(t, gpt2_pattern, sizeof gpt2_pattern - 1, 0, 1, &st.re_newer, err)) {
            pcre2_code_free(st.re);
            return MOE_FAIL;
        }
        return add_step(t, st, err);
    } else
        return moe_error_set(err, "%s: pre-tokenizer \"%s\" is not supported (deepseek-v3, deepseek-llm, gpt-2)", t->path,
                             pre);
    for (int i = 0; rx[i]; i++)
        if (add_split(t, rx[i], strlen(rx[i]), 0, SPLIT_ISOLATED, 0, err)) return MOE_FAIL;
    return MOE_OK;
}

static int vocab_token(tokenizer *t, const tokenizer_vocab *v, int id, moe_error *err) {
    const tokenizer_str *s = &v->tokens[id];
    int type = v->types ? v->types[id] : TOKENIZER_TOKEN_NORMAL;
    if (type < TOKENIZER_TOKEN_NORMAL || type > TOKENIZER_TOKEN_BYTE)
        return moe_error_set(err, "%s: token %d has type %d (want 1..6)", t->path, id, type);
    if (s->len > UINT32_MAX / 2) return moe_error_set(err, "%s: token %d is too long", t->path, id);
    if (type == TOKENIZER_TOKEN_UNUSED) return MOE_OK;   /* a placeholder ([PAD...]): no text, never produced */
    if (id + 1 > t->vocab_size) t->vocab_size = id + 1;
    if (type != TOKENIZER_TOKEN_CONTROL && type != TOKENIZER_TOKEN_USER_DEFINED)
        return strmap_put(&t->vocab, s->s, s->len, id) ? moe_error_set(err, "%s: out of memory", t->path) : MOE_OK;
    return MOE_OK;   /* added tokens go in after the merges (as load_added comes after load_model) */
}

/* Control and user-defined tokens become added tokens: matched in the raw text before
 * pre-tokenization; control ones are special (and matched first, as HF's non-normalized
 * special tokens are), user-defined ones are not (HF's normalized added tokens). */
static int vocab_added(tokenizer *t, const tokenizer_vocab *v, moe_error *err) {
    int n = 0;
    for (int i = 0; i < v->n_tokens; i++) {
        int type = v->types ? v->types[i] : TOKENIZER_TOKEN_NORMAL;
        n += type == TOKENIZER_TOKEN_CONTROL || type == TOKENIZER_TOKEN_USER_DEFINED;
    }
    if (!(t->added = calloc((size_t)n + 1, sizeof *t->added))) return moe_error_set(err, "%s: out of memory", t->path);
    for (int i = 0; i < v->n_tokens; i++) {
        int type = v->types ? v->types[i] : TOKENIZER_TOKEN_NORMAL;
        if (type != TOKENIZER_TOKEN_CONTROL && type != TOKENIZER_TOKEN_USER_DEFINED) continue;
        const tokenizer_str *s = &v->tokens[i];
        added_token *at = &t->added[t->nadded];
        if (!(at->content = malloc(s->len + 1))) return moe_error_set(err, "%s: out of memory", t->path);
        t->nadded++;
        if (s->len) memcpy(at->content, s->s, s->len);
        at->content[s->len] = 0;
        at->len = s->len;
        at->id = i;
        at->special = type == TOKENIZER_TOKEN_CONTROL;
        if (s->len && trie_add(at->special ? &t->raw_trie : &t->norm_trie, at->content, at->len, t->nadded - 1))
            return moe_error_set(err, "%s: out of memory", t->path);
        if (strmap_put(&t->vocab, at->content, at->len, i)) return moe_error_set(err, "%s: out of memory", t->path);
    }
    return MOE_OK;
}

int tokenizer_from_vocab(tokenizer **out, const tokenizer_vocab *v, moe_error *err) {
    *out = NULL;
    const char *path = v->path ? v->path : "vocab";
    if (v->n_tokens < 1 || v->n_tokens > TOKENIZER_MAX_VOCAB)
        return moe_error_set(err, "%s: %d tokens, want 1..%d", path, v->n_tokens, TOKENIZER_MAX_VOCAB);
    if (v->n_merges < 0) return moe_error_set(err, "%s: negative merge count", path);
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) return moe_error_set(err, "%s: out of memory", path);
    snprintf(t->path, sizeof t->path, "%s", path);
    int rc = MOE_FAIL;
    merge_ref *mr = NULL;
    if (strmap_init(&t->vocab, (size_t)v->n_tokens + 16)) { moe_error_set(err, "%s: out of memory", t->path); goto done; }
    for (int i = 0; i < v->n_tokens; i++)
        if (vocab_token(t, v, i, err)) goto done;
    t->model_vocab_n = (int)t->vocab.n;
    if (!(mr = calloc((size_t)v->n_merges + 1, sizeof *mr))) { moe_error_set(err, "%s: out of memory", t->path); goto done; }
    for (int i = 0; i < v->n_merges; i++) {
        const char *s = v->merges[i].s, *sp = v->merges[i].len ? memchr(s, ' ', v->merges[i].len) : NULL;
        if (!sp || sp == s) { moe_error_set(err, "%s: merge %d is not \"a b\"", t->path, i); goto done; }
        mr[i] = (merge_ref){s, sp + 1, (size_t)(sp - s), v->merges[i].len - (size_t)(sp - s) - 1};
    }
    if (load_merges(t, mr, (size_t)v->n_merges, err) || vocab_added(t, v, err)) goto done;
    if (set_pretok_name(t, v->pre ? v->pre : "", err)) goto done;
    if (build_decode(t, err)) goto done;
    t->add_bos = v->add_bos;
    t->bos_id = t->eos_id = -1;
    for (int k = 0; k < 2; k++) {
        int id = k ? v->eos_id : v->bos_id;
        if (id < 0) continue;
        size_t l;
        const char *b = id < v->n_tokens && (!v->types || v->types[id] != TOKENIZER_TOKEN_UNUSED)
                            ? v->tokens[id].s : NULL;
        if (!b) { moe_error_set(err, "%s: %s token id %d is not a token", t->path, k ? "eos" : "bos", id); goto done; }
        l = v->tokens[id].len;
        char *str = malloc(l + 1);
        if (!str) { moe_error_set(err, "%s: out of memory", t->path); goto done; }
        memcpy(str, b, l);
        str[l] = 0;
        if (k) { t->eos_id = id; t->eos_str = str; } else { t->bos_id = id; t->bos_str = str; }
    }
    if (v->chat_template) {
        if (!(t->chat_template = malloc(v->chat_template_len + 1))) { moe_error_set(err, "%s: out of memory", t->path); goto done; }
        memcpy(t->chat_template, v->chat_template, v->chat_template_len);
        t->chat_template[v->chat_template_len] = 0;
    }
    rc = MOE_OK;
done:
    free(mr);
    if (rc) tokenizer_free(t);
    else *out = t;
    return rc;
}
