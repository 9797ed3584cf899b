/* tokenizer.h - byte-level BPE tokenizer read from a Hugging Face tokenizer.json.
 *
 * Notation:
 *   text      UTF-8 bytes (not NUL-terminated: always with a length)
 *   id        token id, 0 <= id < tokenizer_vocab_size()
 *   piece     a run of text that the pre-tokenizer hands to BPE on its own
 *   added     an `added_tokens` entry (special or not), matched in the raw
 *             text before pre-tokenization and never split by BPE
 *
 * What is supported (and what DeepSeek-V3 uses): normalizer null or an empty
 * Sequence; pre-tokenizer Split (Regex or String pattern, every behavior,
 * invert), ByteLevel (add_prefix_space, use_regex) and Sequences of those;
 * model BPE (vocab, merges as "a b" or ["a","b"], ignore_merges, no dropout,
 * no byte_fallback); decoder ByteLevel. Anything else fails at load time with
 * a one-line error naming the file.
 *
 * Unicode: the regexes run on PCRE2 but classify characters as the official
 * library's regex engine does (Unicode 16; see newer_unicode in tokenizer.c),
 * checked over every code point up to U+323AF (tools/tokenizer/diffcheck.sh).
 *
 * Invalid UTF-8 in the text to encode: every byte that is not part of a valid
 * UTF-8 character becomes a piece of its own (it ends any piece before it and
 * starts none after it) and is encoded as its byte-level token, so encoding
 * never fails on bytes and decoding gives the same bytes back. (The official
 * library only accepts valid strings; this is the project's choice.)
 *
 * Threads: a loaded tokenizer is read-only. encode keeps its cache of encoded
 * pieces in the call (not in the tokenizer), so any number of threads may
 * encode, decode and use the getters on one tokenizer at once.
 */
#ifndef MOE_TOKENIZER_H
#define MOE_TOKENIZER_H

#include <stddef.h>

#include "error.h"

typedef struct tokenizer tokenizer;

/* Loads PATH/tokenizer.json (+ PATH/tokenizer_config.json if present), or
 * PATH itself if it is a file (then tokenizer_config.json is looked for beside
 * it). The config gives bos/eos token strings, add_bos_token, chat_template. */
int tokenizer_load(tokenizer **out, const char *path, moe_error *err);
/* The same from text held in memory (for tests and fuzzing): tokenizer.json text
 * json[0..len) and tokenizer_config.json text (NULL: none); the paths are only
 * used in messages. Does not own the buffers. */
int tokenizer_load_buffer(tokenizer **out, const char *json, size_t len, const char *path, const char *config_json,
                          size_t config_len, const char *config_path, moe_error *err);
void tokenizer_free(tokenizer *t);

/* ---- construction from token arrays (GGUF's tokenizer.ggml.* metadata) ----
 * Token types are GGUF's (llama.cpp's llama_token_type). Normal and byte tokens
 * form the BPE vocabulary (spelled in the byte-level alphabet, as tokenizer.json's
 * model.vocab); control tokens become special added tokens and user-defined ones
 * non-special added tokens (matched in the raw text, spelled as plain text);
 * unused ones ([PAD...] placeholders) have no text: decoding one is an error and
 * they do not count in tokenizer_vocab_size. */
enum {
    TOKENIZER_TOKEN_NORMAL = 1, TOKENIZER_TOKEN_UNKNOWN = 2, TOKENIZER_TOKEN_CONTROL = 3,
    TOKENIZER_TOKEN_USER_DEFINED = 4, TOKENIZER_TOKEN_UNUSED = 5, TOKENIZER_TOKEN_BYTE = 6
};

typedef struct { const char *s; size_t len; } tokenizer_str;   /* bytes, not NUL-terminated */

typedef struct {
    const char *path;              /* for messages (e.g. the .gguf file) */
    int n_tokens;                  /* ids 0..n_tokens-1 */
    const tokenizer_str *tokens;   /* [n_tokens] spelling of each id */
    const int *types;              /* [n_tokens] TOKENIZER_TOKEN_*, or NULL: all normal */
    int n_merges;
    const tokenizer_str *merges;   /* [n_merges] "a b", highest priority first */
    const char *pre;               /* pre-tokenizer name: "deepseek-v3", "deepseek-llm" or "gpt-2" */
    int bos_id, eos_id;            /* -1: none */
    int add_bos;                   /* tokenizer_add_bos() */
    const char *chat_template;     /* NULL: none; chat_template_len bytes */
    size_t chat_template_len;
} tokenizer_vocab;

/* Builds a tokenizer from arrays (copied: v may be freed afterwards). */
int tokenizer_from_vocab(tokenizer **out, const tokenizer_vocab *v, moe_error *err);


/* Encodes text[0..len) into *ids (malloc'd, caller frees) of *n ids. No BOS is
 * added: the caller prepends tokenizer_bos_id() when it wants one. */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int **ids, int *n, moe_error *err);

/* Decodes ids into *text (malloc'd, NUL-terminated for convenience; *len
 * excludes the NUL). Special tokens are written out as their text. */
int tokenizer_decode(const tokenizer *t, const int *ids, int n, char **text, size_t *len, moe_error *err);

/* The bytes of one token (not NUL-terminated), or NULL for an id out of range. */
const char *tokenizer_token_bytes(const tokenizer *t, int id, size_t *len);

/* The id of an exact token string (added token or vocabulary entry, in the
 * tokenizer.json spelling), or -1. */
int tokenizer_token_id(const tokenizer *t, const char *token);

int tokenizer_vocab_size(const tokenizer *t);  /* max id + 1 */
int tokenizer_bos_id(const tokenizer *t);      /* -1 when unknown */
int tokenizer_eos_id(const tokenizer *t);      /* -1 when unknown */
int tokenizer_add_bos(const tokenizer *t);     /* tokenizer_config add_bos_token (default 1) */
int tokenizer_is_special(const tokenizer *t, int id);
const char *tokenizer_bos_str(const tokenizer *t);       /* "" when unknown */
const char *tokenizer_eos_str(const tokenizer *t);       /* "" when unknown */
const char *tokenizer_chat_template(const tokenizer *t); /* NULL when none */
const char *tokenizer_config_path(const tokenizer *t);   /* the config file read, or "" */

/* ---- streaming decode: print only whole UTF-8 characters ----------------
 * Push ids one at a time; each push gives back the bytes that now end on a
 * character boundary and holds back an incomplete trailing character until
 * the next push. Bytes that can never become a valid character are passed
 * through as they are. flush gives back whatever is held. */
typedef struct {
    unsigned char pend[4]; /* held-back start of an incomplete UTF-8 character */
    int npend;             /* bytes in pend */
    char *buf;             /* output of the last push/flush (owned) */
    size_t cap;            /* bytes allocated in buf */
} tokenizer_stream;

void tokenizer_stream_init(tokenizer_stream *s);
int tokenizer_stream_push(const tokenizer *t, tokenizer_stream *s, int id, const char **text, size_t *len,
                          moe_error *err);
void tokenizer_stream_flush(tokenizer_stream *s, const char **text, size_t *len);
void tokenizer_stream_free(tokenizer_stream *s);

#endif
