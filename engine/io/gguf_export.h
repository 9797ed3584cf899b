/* gguf_export.h - a loaded model written as a GGUF file of llama.cpp's `deepseek2`
 * architecture (moe convert), so that llama.cpp runs the same weights.
 *
 * Notation as in config.h. The tensors are named and shaped as llama.cpp's converter
 * writes them (engine/io/layout.c LAYOUT_GGUF): experts stacked per layer, kv_b split into
 * attn_k_b [nh][R][dn] (W_UK transposed per head) and attn_v_b [nh][dv][R]; norms, the
 * router and its bias stay F32 (the converter's rule); the MTP module is left out, as
 * the converter does. The tokenizer comes from DIR/tokenizer.json (+ tokenizer_config.json):
 * tokens by id, their types, merges "a b", BOS/EOS, add_bos, the chat template.
 * Memory: the output is built in memory before it is written (about the file's size).
 */
#ifndef MOE_GGUF_EXPORT_H
#define MOE_GGUF_EXPORT_H

#include <stdint.h>

#include "gguf.h"
#include "model.h"

/* m must be loaded with --dtype f32 (every matrix f32 rows). type: the ggml type of the
 * 2-D weights (GGML_TYPE_F32, BF16, Q8_0, Q4_0, ... any the type table can write).
 * tokenizer_dir: where tokenizer.json is (NULL: no tokenizer metadata). */
int gguf_export_model(const moe_model *m, const char *tokenizer_dir, uint32_t type, const char *out, moe_error *err);

/* Adds tokenizer.ggml.* for DIR/tokenizer.json to w. */
int gguf_put_tokenizer(gguf_writer *w, const char *dir, moe_error *err);

#endif
