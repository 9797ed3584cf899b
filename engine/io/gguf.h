/* gguf.h - GGUF files (llama.cpp's checkpoint format): a validating reader over a
 * read-only mmap, and a writer.
 *
 * File layout (version 3; version 2 is the same byte layout and is accepted), all
 * little-endian, no padding except where said:
 *   "GGUF"  u32 version  u64 n_tensors  u64 n_kv
 *   n_kv x      { str key, u32 value type, value }
 *   n_tensors x { str name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset }
 *   zero padding to general.alignment (u32 key, default 32, a power of two)
 *   the data section: tensor t's bytes at data + offset, offsets aligned
 * where str = u64 length + bytes (no NUL) and an array value = u32 element type,
 * u64 count, the elements (arrays of arrays and of strings are allowed).
 *
 * Notation:
 *   ne[0]   the fastest-varying dimension (a row); GGUF lists dims in ggml order,
 *           the reverse of the safetensors / numpy shape: numpy [rows, cols]
 *           is ne = {cols, rows}
 *   block   the quantization unit of a ggml type: blck elements stored in
 *           type_bytes bytes (F32: 1 in 4; Q8_0: 32 in 34; Q4_K: 256 in 144)
 *
 * Everything is checked before use; each failure is one line naming the file and
 * the problem. Limits (a real checkpoint is far below each): at most 2^20 tensors
 * and 2^20 keys; a key 1..255 bytes, a tensor name 1..63 bytes (ggml's
 * GGML_MAX_NAME - 1), neither holding a NUL byte;
 * a string value at most 1 MiB, except the elements of an array (e.g. tokens) which
 * count against 2^24 array elements in the whole file (V3: 129,280 tokens +
 * 127,741 merges + 129,280 types); arrays nested at most 4 deep; n_dims <= 4,
 * each ne[i] <= 2^40, the element count < 2^62; a row (ne[0]) a whole number of
 * blocks; tensor data aligned, inside the file, not overlapping; names unique;
 * bools 0 or 1.
 */
#ifndef MOE_GGUF_H
#define MOE_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define GGUF_MAX_TENSORS (1 << 20)
#define GGUF_MAX_KV (1 << 20)
#define GGUF_MAX_NAME 64                 /* tensor names are < 64 bytes, as ggml requires */
#define GGUF_MAX_KEY 256                  /* keys are < 256 bytes */
#define GGUF_MAX_STRING (1u << 20)        /* one string value (chat templates are ~10 KB) */
#define GGUF_MAX_ARRAY_ELEMS (1u << 24)   /* all array elements of the file together */
#define GGUF_MAX_DEPTH 4                  /* array of array of ... */
#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

/* ---------------------------------------------------------------- value types */

typedef enum {
    GGUF_VAL_U8 = 0, GGUF_VAL_I8 = 1, GGUF_VAL_U16 = 2, GGUF_VAL_I16 = 3, GGUF_VAL_U32 = 4, GGUF_VAL_I32 = 5,
    GGUF_VAL_F32 = 6, GGUF_VAL_BOOL = 7, GGUF_VAL_STRING = 8, GGUF_VAL_ARRAY = 9, GGUF_VAL_U64 = 10,
    GGUF_VAL_I64 = 11, GGUF_VAL_F64 = 12, GGUF_VAL_COUNT
} gguf_vtype;

const char *gguf_vtype_name(uint32_t t);   /* "u32", "string", "array", ...; "?" if unknown */

/* ---------------------------------------------------------------- ggml tensor types */

typedef enum {
    GGML_TYPE_F32 = 0, GGML_TYPE_F16 = 1, GGML_TYPE_Q4_0 = 2, GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q5_0 = 6, GGML_TYPE_Q5_1 = 7, GGML_TYPE_Q8_0 = 8, GGML_TYPE_Q8_1 = 9,
    GGML_TYPE_Q2_K = 10, GGML_TYPE_Q3_K = 11, GGML_TYPE_Q4_K = 12, GGML_TYPE_Q5_K = 13,
    GGML_TYPE_Q6_K = 14, GGML_TYPE_Q8_K = 15, GGML_TYPE_IQ2_XXS = 16, GGML_TYPE_IQ2_XS = 17,
    GGML_TYPE_IQ3_XXS = 18, GGML_TYPE_IQ1_S = 19, GGML_TYPE_IQ4_NL = 20, GGML_TYPE_IQ3_S = 21,
    GGML_TYPE_IQ2_S = 22, GGML_TYPE_IQ4_XS = 23, GGML_TYPE_I8 = 24, GGML_TYPE_I16 = 25,
    GGML_TYPE_I32 = 26, GGML_TYPE_I64 = 27, GGML_TYPE_F64 = 28, GGML_TYPE_IQ1_M = 29,
    GGML_TYPE_BF16 = 30, GGML_TYPE_TQ1_0 = 34, GGML_TYPE_TQ2_0 = 35, GGML_TYPE_MXFP4 = 39,
    GGML_TYPE_NVFP4 = 40, GGML_TYPE_Q1_0 = 41, GGML_TYPE_Q2_0 = 42,
    GGML_TYPE_COUNT = 43
} ggml_type;

/* The ggml type table (ggml.h / gguf-py GGML_QUANT_SIZES of llama.cpp 80fb11a): name,
 * elements per block and bytes per block; 0 / "?" for ids that are not types
 * (4, 5, 31-33, 36-38 were removed from ggml, and anything >= GGML_TYPE_COUNT). */
const char *gguf_type_name(uint32_t type);
int gguf_type_block(uint32_t type);          /* elements per block, 0 if unknown */
size_t gguf_type_block_bytes(uint32_t type); /* bytes per block, 0 if unknown */
/* 1 for the types moe can compute with: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K. */
int gguf_type_supported(uint32_t type);

/* ---------------------------------------------------------------- reading */

/* One metadata value (a key's value, or an element of an array), as a view into the
 * file. Scalars and array elements are read with the gguf_val_* / gguf_arr_* helpers. */
typedef struct {
    uint32_t type;            /* gguf_vtype */
    uint32_t elem;            /* arrays: the element type */
    uint64_t n;               /* arrays: the element count; 1 for scalars */
    const uint8_t *p;         /* scalars: the value; strings: the bytes (len in n_bytes);
                                 arrays: the first element */
    uint64_t n_bytes;         /* strings: the length; others: bytes of the value from p */
    const uint64_t *idx;      /* arrays of strings / arrays at the top level: byte offset of element
                                 i from p (owned by the file); NULL otherwise (then element access walks) */
} gguf_value;

typedef struct {
    char *key;                /* NUL-terminated copy */
    gguf_value v;
} gguf_kv;

typedef struct {
    char *name;               /* NUL-terminated copy */
    int n_dims;               /* 1..4 (0 is read as a scalar: 1 element) */
    int64_t ne[GGUF_MAX_DIMS]; /* ne[0] = row length; unused dims 1 */
    uint32_t type;            /* ggml_type id */
    uint64_t offset;          /* from the start of the data section */
    uint64_t n_elems;         /* product of ne */
    size_t n_bytes;           /* n_elems / block * block bytes */
    const void *data;         /* inside the file's mapping */
} gguf_tensor;

typedef struct {
    char *path;               /* owned copy */
    const uint8_t *buf;       /* the whole file */
    size_t size;              /* its bytes */
    void *map;                /* our mmap of it, or NULL when the buffer is the caller's */
    uint32_t version;         /* 2 or 3 */
    uint32_t alignment;       /* general.alignment */
    size_t data_offset;       /* file offset of the data section (aligned) */
    gguf_kv *kv; int n_kv;
    gguf_tensor *tensors; int n_tensors;
    uint64_t *idx_pool;       /* storage of the gguf_value.idx tables */
    int *kv_hash; int *t_hash; int kv_cap, t_cap;   /* open addressing: index or -1 */
} gguf_file;

/* Opens and validates a .gguf file (mmap'd read-only until gguf_close). */
int gguf_open(gguf_file *g, const char *path, moe_error *err);
/* The same for a file held in memory (tests, fuzzing); buf is not owned and must
 * outlive g. `path` is only used in messages. */
int gguf_parse_buffer(gguf_file *g, const void *buf, size_t size, const char *path, moe_error *err);
void gguf_close(gguf_file *g);

const gguf_kv *gguf_find_kv(const gguf_file *g, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *g, const char *name);

/* Typed access by key. Missing key: required -> error "missing required key ..."; else
 * *out = def and MOE_OK. A key of another type is always an error naming the key, its
 * type and the type wanted. Integers: any integer type whose value fits; floats: f32 or
 * f64; bool: bool only; string: string only (a copy is not made: *out points into the
 * file and is NOT NUL-terminated; *len gives its length). */
int gguf_get_u32(const gguf_file *g, const char *key, int required, uint32_t def, uint32_t *out, moe_error *err);
int gguf_get_i64(const gguf_file *g, const char *key, int required, int64_t def, int64_t *out, moe_error *err);
int gguf_get_f32(const gguf_file *g, const char *key, int required, float def, float *out, moe_error *err);
int gguf_get_f64(const gguf_file *g, const char *key, int required, double def, double *out, moe_error *err);
int gguf_get_bool(const gguf_file *g, const char *key, int required, int def, int *out, moe_error *err);
int gguf_get_str(const gguf_file *g, const char *key, int required, const char **out, size_t *len, moe_error *err);
/* Copies a string value into buf[n] (NUL-terminated; too long is an error). */
int gguf_get_strbuf(const gguf_file *g, const char *key, int required, const char *def, char *buf, size_t n,
                    moe_error *err);
/* An array; elem_type GGUF_VAL_COUNT accepts any element type. *out is NULL when the
 * key is missing and not required. */
int gguf_get_arr(const gguf_file *g, const char *key, int required, uint32_t elem_type, const gguf_value **out,
                 moe_error *err);

/* Values: scalar readers (the value's type must be numeric / bool; checked by the
 * gguf_get_* callers above); array element i (0 <= i < a->n) as a value view. */
int gguf_val_int(const gguf_value *v, int64_t *out);      /* MOE_FAIL if not an integer or > INT64_MAX */
int gguf_val_float(const gguf_value *v, double *out);     /* MOE_FAIL if not f32/f64 */
gguf_value gguf_arr_at(const gguf_value *a, uint64_t i);

/* ---------------------------------------------------------------- writing */

/* Collects key/values and tensors (the data is referenced, not copied: it must live
 * until gguf_write_file), then writes them in order: header, KVs, tensor infos,
 * padding, each tensor's data padded to the alignment. general.alignment is written
 * as a key only when it is not the default. */
typedef struct {
    uint8_t *meta; size_t meta_len, meta_cap;   /* the encoded KV section */
    int n_kv;
    char **keys;                                /* for the duplicate check */
    struct gguf_wtensor {
        char *name; int n_dims; int64_t ne[GGUF_MAX_DIMS]; uint32_t type; const void *data; size_t n_bytes;
    } *tensors;
    int n_tensors;
    uint32_t alignment;
    moe_error err;                              /* first error of an add_*; reported by write */
    int failed;
} gguf_writer;

void gguf_writer_init(gguf_writer *w);
void gguf_writer_free(gguf_writer *w);
/* Adders return MOE_OK / MOE_FAIL; after a failure the writer refuses to write. */
int gguf_w_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_w_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_w_u64(gguf_writer *w, const char *key, uint64_t v);
int gguf_w_f32(gguf_writer *w, const char *key, float v);
int gguf_w_f64(gguf_writer *w, const char *key, double v);
int gguf_w_bool(gguf_writer *w, const char *key, int v);
int gguf_w_str(gguf_writer *w, const char *key, const char *s);
int gguf_w_strn(gguf_writer *w, const char *key, const char *s, size_t len);
/* An array of n numbers or bools of type elem (data packed little-endian, as in the file). */
int gguf_w_arr(gguf_writer *w, const char *key, uint32_t elem, const void *data, uint64_t n);
/* An array of n strings (lens NULL: NUL-terminated). */
int gguf_w_arr_str(gguf_writer *w, const char *key, const char *const *s, const size_t *lens, uint64_t n);
/* A value given as its encoded bytes (e.g. an array of arrays), of type vtype: for tests. */
int gguf_w_raw(gguf_writer *w, const char *key, uint32_t vtype, const void *bytes, size_t n);
/* Sets general.alignment (a power of two); call before any tensor is added. */
int gguf_w_alignment(gguf_writer *w, uint32_t alignment);
/* A tensor: ne in GGUF order, n_dims 1..4; data holds n_elems / block * block bytes. */
int gguf_w_tensor(gguf_writer *w, const char *name, int n_dims, const int64_t *ne, uint32_t type, const void *data);

int gguf_write_file(gguf_writer *w, const char *path, moe_error *err);
/* Into a malloc'd buffer (caller frees): for tests and fuzz seeds. */
int gguf_write_buffer(gguf_writer *w, uint8_t **out, size_t *len, moe_error *err);

#endif
