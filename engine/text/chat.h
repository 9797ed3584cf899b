/* chat.h - render a conversation into prompt text with the checkpoint's chat
 * template (tokenizer_config.json "chat_template", a Jinja template).
 *
 * Notation:
 *   message   {role, content}; role is "system", "user", "assistant" or "tool"
 *   template  the Jinja source; rendered by a small interpreter of the subset
 *             that chat templates use (see chat.c for the list). A template
 *             that uses anything else fails with a one-line error naming the
 *             template's source and line, never with wrong text.
 *
 * Rendering follows Hugging Face's apply_chat_template (as @huggingface/jinja
 * does it): trim_blocks and lstrip_blocks on, variables messages,
 * add_generation_prompt, bos_token, eos_token. The BOS text is part of the
 * result when the template writes it (DeepSeek-V3's does): encode the result
 * with tokenizer_encode and do not prepend another BOS.
 */
#ifndef MOE_CHAT_H
#define MOE_CHAT_H

#include <jansson.h>

#include "error.h"
#include "tokenizer.h"

typedef struct {
    const char *role;    /* "system", "user", "assistant", "tool" */
    const char *content; /* the text; NULL renders as none (an assistant turn with tool calls) */
} chat_message;

/* Renders messages with template source tmpl. src names the template in
 * errors (e.g. the config file). bos/eos: the special token strings (NULL =
 * undefined). *out is malloc'd and NUL-terminated. */
int chat_render(const char *tmpl, const char *src, const chat_message *msgs, int n, int add_generation_prompt,
                const char *bos, const char *eos, char **out, moe_error *err);

/* The same with messages as a JSON array of objects (so messages can carry
 * more fields, e.g. tool_calls) and extra top-level variables in vars (an
 * object, may be NULL). */
int chat_render_json(const char *tmpl, const char *src, json_t *messages, json_t *vars, int add_generation_prompt,
                     const char *bos, const char *eos, char **out, moe_error *err);

/* Renders with the tokenizer's own template and bos/eos strings; fails when
 * tokenizer_config.json has no chat_template. */
int chat_render_tokenizer(const tokenizer *t, const chat_message *msgs, int n, int add_generation_prompt, char **out,
                          moe_error *err);

#endif
