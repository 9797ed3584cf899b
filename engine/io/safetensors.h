/* safetensors.h - memory-mapped safetensors files and sharded checkpoints.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON header
 * {"name": {"dtype", "shape", "data_offsets": [begin, end)}, "__metadata__": {...}},
 * then the data buffer. Offsets are relative to the data buffer.
 * A checkpoint directory holds model.safetensors, or shards listed in
 * model.safetensors.index.json ({"weight_map": {name: shard file}}).
 * Everything is validated before use: header size, JSON, dtypes, shapes against
 * byte ranges, ranges inside the file, no overlaps, unique names.
 */
#ifndef MOE_SAFETENSORS_H
#define MOE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum {
    ST_F64, ST_F32, ST_F16, ST_BF16, ST_F8_E4M3, ST_F8_E5M2,
    ST_I64, ST_I32, ST_I16, ST_I8, ST_U64, ST_U32, ST_U16, ST_U8, ST_BOOL,
    ST_N_DTYPES
} st_dtype;

#define ST_MAX_DIMS 8

typedef struct {
    char *name;                 /* tensor name (owned) */
    st_dtype dtype;
    int ndim;                   /* 0 = scalar */
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;              /* product of shape */
    const void *data;           /* points into the file's read-only mapping */
    size_t nbytes;
    int file;                   /* index into st_set.files */
    int released;               /* st_tensor_release dropped its pages: not read again */
} st_tensor;

typedef struct {
    char *path;                 /* file path (owned) */
    void *map;                  /* whole-file read-only mmap */
    size_t size;                /* file size in bytes */
} st_file;

typedef struct {
    st_file *files;   int n_files;
    st_tensor *tensors; int n_tensors;
    int *hash;  int hash_cap;   /* open addressing: index into tensors or -1 */
} st_set;

const char *st_dtype_name(st_dtype dt);
size_t st_dtype_size(st_dtype dt);
/* Parses a dtype name ("F32", "BF16", ...); returns -1 if unknown. */
int st_dtype_parse(const char *s);

/* Opens one .safetensors file. */
int st_open_file(st_set *s, const char *path, moe_error *err);
/* Opens a checkpoint directory: model.safetensors.index.json (+ shards) if present, else model.safetensors. */
int st_open_dir(st_set *s, const char *dir, moe_error *err);
/* Parses a header held in memory (for tests and fuzzing): `buf` is the whole file. Does not own buf. */
int st_parse_buffer(st_set *s, const void *buf, size_t size, const char *path, moe_error *err);
/* Appends a file held in memory to s (not owned; s->files[i].map stays NULL). Call
 * st_apply_index (or st_parse_buffer's hash step) afterwards before st_find. */
int st_add_buffer(st_set *s, const void *buf, size_t size, const char *path, moe_error *err);
/* Applies model.safetensors.index.json text to s: every shard it names (DIR/name) that is
 * not already in s is opened from disk, then every indexed tensor must be in its shard.
 * Buffer-based so the index parser can be fuzzed against shards already in memory. */
int st_apply_index(st_set *s, const char *dir, const char *text, size_t len, const char *index_path, moe_error *err);
void st_close(st_set *s);

const st_tensor *st_find(const st_set *s, const char *name);
/* Drops the whole pages inside tensor t from this process's resident memory and marks it
 * released: for a tensor converted at load, whose bytes are not read again (the page
 * cache keeps them; a later read would map them back). Files held in memory
 * (st_add_buffer) are left alone. t must be one of s's tensors. */
void st_tensor_release(st_set *s, const st_tensor *t);
/* Path of the file holding tensor t. */
const char *st_tensor_path(const st_set *s, const st_tensor *t);

/* ---------------------------------------------------------------- writing */

typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;           /* numel * dtype size bytes */
} st_write_tensor;

int st_write(const char *path, const st_write_tensor *t, int n, moe_error *err);

#endif
