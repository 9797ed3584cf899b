/* chat.c - a small interpreter of the Jinja subset used by chat templates.
 *
 * Notation / legend:
 *   source    the template text after HF's preprocessing (trim_blocks,
 *             lstrip_blocks, one trailing newline dropped)
 *   token     lexer output: raw text, tag delimiters, names, literals, ops
 *   expr      an expression tree; node: a statement tree (text, output, if,
 *             for, set)
 *   value     a jansson json_t (NULL = undefined; json null = none); every
 *             eval_* result is a new reference the caller must json_decref
 *   scope     a JSON object of variables; a for loop pushes one, set writes
 *             to the innermost one (so, as in Jinja, a set inside a loop does
 *             not leak out: templates use namespace() for that)
 *
 * The subset: {{ expr }}, {% if/elif/else/endif %}, {% for x in e %} (also
 * "for k, v in d.items()", loop.index/index0/first/last/length, else),
 * {% set x = e %}, {% set ns.x = e %}, {# comments #}, whitespace control
 * "-"; literals (strings, integers, true/false/none, lists); a.b, a[b],
 * a[-1]; not and or == != < > <= >= + - ~ in "not in" "x if c else y";
 * tests is [not] defined/undefined/none/string/number/boolean/mapping/
 * iterable; filters trim length lower upper string; calls namespace(k=v..),
 * raise_exception(msg), str.split/strip/lstrip/rstrip/startswith/endswith/
 * upper/lower/replace, dict.items(), dict.get(k[, d]). Anything else is an
 * error naming the template line.
 */
#include "chat.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Limits against hostile templates (issue 8): a template is code from the internet.
 * Real chat templates stay far below each. */
#define CHAT_MAX_DEPTH 200            /* nesting of expressions, blocks, elif chains, values */
#define CHAT_MAX_STEPS 1000000        /* expressions evaluated + statements run + loop turns (+ the
                                         * length of lists and strings scanned); V3's template
                                         * takes about 60 a message, so 16,000 messages fit */
#define CHAT_MAX_TEXT (16u << 20)     /* one string value, and the rendered text */
#define CHAT_MAX_BYTES (256u << 20)   /* all string bytes built while rendering */
#define CHAT_MAX_LIST 1000000         /* items in a list built by + */

/* ======================================================================
 * Lexer
 * ====================================================================== */

enum { T_TEXT, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STRING, T_INT, T_OP, T_EOF };

typedef struct {
    int type;        /* T_* */
    int line;        /* 1-based line in the source */
    const char *s;   /* T_TEXT / T_NAME / T_OP: the bytes in the source; T_STRING: the decoded string (owned) */
    size_t len;      /* bytes in s */
    long long num;   /* T_INT: the value */
} token;

typedef struct {
    const char *src;   /* the template name for errors */
    moe_error *err;
    char *text;        /* the preprocessed template */
    token *toks;       /* all tokens */
    int ntoks, cap;
    int pos;           /* parser position in toks */
    void **owned;      /* everything to free at the end (nodes, exprs, strings) */
    int nowned, capowned;
    json_t *lits;      /* a JSON array holding every literal, to free them at once */
    int depth;         /* recursion depth of the parser */
} parser;

static int perr(parser *p, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int perr(parser *p, int line, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return moe_error_set(p->err, "%s: chat template line %d: %s", p->src, line, msg);
}

static void *own(parser *p, void *x) {
    if (!x) return NULL;
    if (p->nowned == p->capowned) {
        int nc = p->capowned ? p->capowned * 2 : 64;
        void **o = realloc(p->owned, sizeof *o * (size_t)nc);
        if (!o) { free(x); return NULL; }
        p->owned = o;
        p->capowned = nc;
    }
    p->owned[p->nowned++] = x;
    return x;
}

static void *palloc(parser *p, size_t n) { return own(p, calloc(1, n)); }

static int push_tok(parser *p, token t) {
    if (p->ntoks == p->cap) {
        int nc = p->cap ? p->cap * 2 : 256;
        token *q = realloc(p->toks, sizeof *q * (size_t)nc);
        if (!q) return moe_error_set(p->err, "%s: out of memory", p->src);
        p->toks = q;
        p->cap = nc;
    }
    p->toks[p->ntoks++] = t;
    return MOE_OK;
}

/* HF's preprocessing: drop one trailing newline; lstrip_blocks (spaces and tabs
 * at a line start before "{%", "{#"); trim_blocks (the newline after "%}", "#}"). */
static char *preprocess(const char *in) {
    size_t n = strlen(in);
    if (n && in[n - 1] == '\n') n--;
    char *o = malloc(n + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        if (i == 0 || in[i - 1] == '\n') { /* line start: look past blanks */
            size_t j = i;
            while (j < n && (in[j] == ' ' || in[j] == '\t')) j++;
            if (j + 1 < n && in[j] == '{' && (in[j + 1] == '%' || in[j + 1] == '#' || in[j + 1] == '-')) i = j;
        }
        if (i + 2 < n && (in[i] == '%' || in[i] == '#' || in[i] == '-') && in[i + 1] == '}' && in[i + 2] == '\n') {
            o[k++] = in[i];
            o[k++] = '}';
            i += 3;
            continue;
        }
        o[k++] = in[i++];
    }
    o[k] = 0;
    return o;
}

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
static int is_ident(char c, int first) {
    return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (!first && c >= '0' && c <= '9');
}

/* Lexes the inside of a tag from *i up to its closer; returns MOE_OK. */
static int lex_tag(parser *p, size_t *i, int *line, int is_block, int *strip_after) {
    const char *s = p->text;
    for (;;) {
        while (is_space(s[*i])) { if (s[*i] == '\n') (*line)++; (*i)++; }
        char c = s[*i];
        if (!c) return perr(p, *line, "unterminated tag");
        /* closer, with optional '-' */
        int dash = c == '-' && s[*i + 1] && ((is_block && s[*i + 1] == '%') || (!is_block && s[*i + 1] == '}')) &&
                   s[*i + 2] == '}';
        if (dash || (is_block && c == '%' && s[*i + 1] == '}') || (!is_block && c == '}' && s[*i + 1] == '}')) {
            *strip_after = dash;
            *i += dash ? 3 : 2;
            return push_tok(p, (token){is_block ? T_BLOCK_END : T_VAR_END, *line, NULL, 0, 0});
        }
        if (is_ident(c, 1)) {
            size_t b = *i;
            while (is_ident(s[*i], 0)) (*i)++;
            if (push_tok(p, (token){T_NAME, *line, s + b, *i - b, 0})) return MOE_FAIL;
        } else if (c >= '0' && c <= '9') {
            long long v = 0;
            while (s[*i] >= '0' && s[*i] <= '9') {
                if (v > (LLONG_MAX - (s[*i] - '0')) / 10) return perr(p, *line, "integer literal too large");
                v = v * 10 + (s[(*i)++] - '0');
            }
            if (s[*i] == '.') return perr(p, *line, "floating-point numbers are not supported");
            if (push_tok(p, (token){T_INT, *line, NULL, 0, v})) return MOE_FAIL;
        } else if (c == '\'' || c == '"') {
            size_t b = ++(*i), k = 0;
            char *o = own(p, malloc(strlen(s + b) + 1));
            if (!o) return moe_error_set(p->err, "%s: out of memory", p->src);
            while (s[*i] && s[*i] != c) {
                char d = s[(*i)++];
                if (d == '\n') (*line)++;
                if (d == '\\' && s[*i]) {
                    char e = s[(*i)++];
                    d = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e == '0' ? '\0' : e;
                    if (e != 'n' && e != 't' && e != 'r' && e != '\\' && e != '\'' && e != '"')
                        return perr(p, *line, "string escape '\\%c' is not supported", e);
                }
                o[k++] = d;
            }
            if (!s[*i]) return perr(p, *line, "unterminated string");
            (*i)++;
            o[k] = 0;
            if (push_tok(p, (token){T_STRING, *line, o, k, 0})) return MOE_FAIL;
        } else {
            static const char *ops2[] = {"==", "!=", "<=", ">=", "//", "**"};
            size_t l = 1;
            for (int k = 0; k < 6; k++) if (!strncmp(s + *i, ops2[k], 2)) l = 2;
            if (l == 1 && !strchr("()[]{}.,:=<>+-*/%~|!", c)) return perr(p, *line, "unexpected character '%c'", c);
            if (push_tok(p, (token){T_OP, *line, s + *i, l, 0})) return MOE_FAIL;
            *i += l;
        }
    }
}

static int lex(parser *p, const char *tmpl) {
    if (!(p->text = preprocess(tmpl))) return moe_error_set(p->err, "%s: out of memory", p->src);
    const char *s = p->text;
    size_t i = 0;
    int line = 1, strip_next = 0;
    while (s[i]) {
        /* raw text up to the next tag */
        size_t b = i;
        int tline = line;
        while (s[i] && !(s[i] == '{' && (s[i + 1] == '{' || s[i + 1] == '%' || s[i + 1] == '#'))) {
            if (s[i] == '\n') line++;
            i++;
        }
        size_t e = i;
        if (strip_next) while (b < e && is_space(s[b])) b++;
        strip_next = 0;
        int kind = s[i] ? s[i + 1] : 0;
        if (kind && s[i + 2] == '-') while (e > b && is_space(s[e - 1])) e--;
        if (e > b && push_tok(p, (token){T_TEXT, tline, s + b, e - b, 0})) return MOE_FAIL;
        if (!kind) break;
        i += 2;
        if (s[i] == '-' || s[i] == '+') i++;
        if (kind == '#') {
            const char *c = strstr(s + i, "#}");
            if (!c) return perr(p, line, "unterminated comment");
            for (const char *q = s + i; q < c; q++) if (*q == '\n') line++;
            strip_next = c > s + i && c[-1] == '-';
            i = (size_t)(c - s) + 2;
            continue;
        }
        if (push_tok(p, (token){kind == '%' ? T_BLOCK_BEGIN : T_VAR_BEGIN, line, NULL, 0, 0})) return MOE_FAIL;
        if (lex_tag(p, &i, &line, kind == '%', &strip_next)) return MOE_FAIL;
    }
    return push_tok(p, (token){T_EOF, line, NULL, 0, 0});
}

/* ======================================================================
 * Parser
 * ====================================================================== */

enum { E_LIT, E_NAME, E_ATTR, E_INDEX, E_CALL, E_FILTER, E_TEST, E_NOT, E_NEG, E_BIN, E_AND, E_OR, E_COND, E_LIST, E_DICT };

typedef struct expr expr;
struct expr {
    int kind;        /* E_* */
    int line;        /* for errors */
    json_t *lit;     /* E_LIT: the value (borrowed from parser.lits) */
    const char *name;/* E_NAME variable, E_ATTR attribute, E_FILTER filter, E_TEST test */
    char op[3];      /* E_BIN: "==", "+", "in", "ni" (not in), ... */
    int neg;         /* E_TEST: "is not" */
    expr *a, *b, *c; /* operands: E_ATTR/E_INDEX/E_CALL/E_FILTER/E_TEST object in a; E_INDEX key in b;
                        E_BIN a op b; E_COND: b if a else c */
    expr **args;     /* E_CALL / E_FILTER arguments, E_LIST items, E_DICT key, value, key, value... */
    const char **kw; /* E_CALL: keyword of each argument, or NULL for positional */
    int nargs;
};

enum { N_TEXT, N_OUT, N_IF, N_FOR, N_SET };

typedef struct node node;
typedef struct {
    node **v;        /* statements in order */
    int n, cap;
} block;

struct node {
    int kind;        /* N_* */
    int line;        /* for errors */
    const char *text;/* N_TEXT: the bytes */
    size_t len;      /* N_TEXT: their length */
    expr *e;         /* N_OUT value, N_IF condition, N_FOR iterable, N_SET value */
    block body;      /* N_IF then-branch, N_FOR body */
    block els;       /* N_IF else-branch (an elif is an N_IF inside it), N_FOR else */
    const char *var; /* N_FOR loop variable / N_SET target */
    const char *var2;/* N_FOR second variable (for k, v in ...) */
    const char *attr;/* N_SET: the attribute in "set ns.attr = ..." */
};

static token *peek(parser *p) { return &p->toks[p->pos]; }
static token *next(parser *p) { token *t = &p->toks[p->pos]; if (t->type != T_EOF) p->pos++; return t; }

static int tok_is(const token *t, int type, const char *s) {
    return t->type == type && (!s || (t->len == strlen(s) && !memcmp(t->s, s, t->len)));
}
static int accept(parser *p, int type, const char *s) {
    if (!tok_is(peek(p), type, s)) return 0;
    next(p);
    return 1;
}
static int expect(parser *p, int type, const char *s) {
    if (accept(p, type, s)) return MOE_OK;
    return perr(p, peek(p)->line, "expected '%s'", s ? s : type == T_NAME ? "a name" : type == T_BLOCK_END ? "%}" : "}}");
}

static const char *tok_str(parser *p, const token *t) {
    char *s = own(p, malloc(t->len + 1));
    if (s) { memcpy(s, t->s, t->len); s[t->len] = 0; }
    return s;
}

static expr *new_expr(parser *p, int kind, int line) {
    expr *e = palloc(p, sizeof *e);
    if (e) { e->kind = kind; e->line = line; }
    else moe_error_set(p->err, "%s: out of memory", p->src);
    return e;
}

static json_t *keep_lit(parser *p, json_t *v) {
    if (v) json_array_append_new(p->lits, v);
    return v;
}

static expr *parse_expr(parser *p);

/* (args) after a callee: positional and name=value arguments */
static int parse_args(parser *p, expr *call) {
    int cap = 0;
    while (!accept(p, T_OP, ")")) {
        if (call->nargs && expect(p, T_OP, ",")) return MOE_FAIL;
        if (call->nargs == cap) {
            cap = cap ? cap * 2 : 4;
            expr **a = palloc(p, sizeof *a * (size_t)cap);
            const char **k = palloc(p, sizeof *k * (size_t)cap);
            if (!a || !k) return moe_error_set(p->err, "%s: out of memory", p->src);
            if (call->nargs) { memcpy(a, call->args, sizeof *a * (size_t)call->nargs); memcpy(k, call->kw, sizeof *k * (size_t)call->nargs); }
            call->args = a;
            call->kw = k;
        }
        const char *kw = NULL;
        if (peek(p)->type == T_NAME && tok_is(&p->toks[p->pos + 1], T_OP, "=")) {
            kw = tok_str(p, next(p));
            next(p);
        }
        expr *v = parse_expr(p);
        if (!v) return MOE_FAIL;
        call->kw[call->nargs] = kw;
        call->args[call->nargs++] = v;
    }
    return MOE_OK;
}

static expr *parse_primary(parser *p) {
    token *t = next(p);
    expr *e = NULL;
    if (t->type == T_STRING) {
        if ((e = new_expr(p, E_LIT, t->line))) e->lit = keep_lit(p, json_stringn(t->s, t->len));
        if (e && !e->lit) { perr(p, t->line, "string literal is not valid UTF-8"); return NULL; }
        /* adjacent string literals concatenate */
        while (e && peek(p)->type == T_STRING) {
            token *u = next(p);
            size_t a = json_string_length(e->lit);
            char *cat = own(p, malloc(a + u->len + 1));
            if (!cat) return NULL;
            memcpy(cat, json_string_value(e->lit), a);
            memcpy(cat + a, u->s, u->len);
            e->lit = keep_lit(p, json_stringn(cat, a + u->len));
            if (!e->lit) { perr(p, u->line, "string literal is not valid UTF-8"); return NULL; }
        }
    } else if (t->type == T_INT) {
        if ((e = new_expr(p, E_LIT, t->line))) e->lit = keep_lit(p, json_integer(t->num));
    } else if (t->type == T_NAME) {
        if (tok_is(t, T_NAME, "true") || tok_is(t, T_NAME, "True")) { if ((e = new_expr(p, E_LIT, t->line))) e->lit = keep_lit(p, json_true()); }
        else if (tok_is(t, T_NAME, "false") || tok_is(t, T_NAME, "False")) { if ((e = new_expr(p, E_LIT, t->line))) e->lit = keep_lit(p, json_false()); }
        else if (tok_is(t, T_NAME, "none") || tok_is(t, T_NAME, "None")) { if ((e = new_expr(p, E_LIT, t->line))) e->lit = keep_lit(p, json_null()); }
        else if ((e = new_expr(p, E_NAME, t->line))) e->name = tok_str(p, t);
    } else if (tok_is(t, T_OP, "(")) {
        e = parse_expr(p);
        if (e && expect(p, T_OP, ")")) return NULL;
    } else if (tok_is(t, T_OP, "[") || tok_is(t, T_OP, "{")) {
        int dict = t->s[0] == '{';
        if (!(e = new_expr(p, dict ? E_DICT : E_LIST, t->line))) return NULL;
        expr *tmp[64];
        while (!accept(p, T_OP, dict ? "}" : "]")) {
            if (e->nargs && expect(p, T_OP, ",")) return NULL;
            if (e->nargs >= 62) { perr(p, t->line, "list or dict literal too long"); return NULL; }
            if (!(tmp[e->nargs++] = parse_expr(p))) return NULL;
            if (dict && (expect(p, T_OP, ":") || !(tmp[e->nargs++] = parse_expr(p)))) return NULL;
        }
        e->args = palloc(p, sizeof *e->args * (size_t)(e->nargs + 1));
        if (!e->args) return NULL;
        memcpy(e->args, tmp, sizeof *tmp * (size_t)e->nargs);
    } else {
        perr(p, t->line, "unexpected %s in expression", t->type == T_OP ? "operator" : "end of tag");
        return NULL;
    }
    if (!e || (e->kind == E_LIT && !e->lit)) return NULL;
    /* postfix: .name  [index]  (call) */
    for (;;) {
        int line = peek(p)->line;
        if (accept(p, T_OP, ".")) {
            if (peek(p)->type != T_NAME) { perr(p, line, "expected a name after '.'"); return NULL; }
            expr *a = new_expr(p, E_ATTR, line);
            if (!a) return NULL;
            a->a = e;
            a->name = tok_str(p, next(p));
            e = a;
        } else if (accept(p, T_OP, "[")) {
            expr *a = new_expr(p, E_INDEX, line);
            if (!a) return NULL;
            if (tok_is(peek(p), T_OP, ":")) { perr(p, line, "slices are not supported"); return NULL; }
            a->a = e;
            if (!(a->b = parse_expr(p))) return NULL;
            if (tok_is(peek(p), T_OP, ":")) { perr(p, line, "slices are not supported"); return NULL; }
            if (expect(p, T_OP, "]")) return NULL;
            e = a;
        } else if (accept(p, T_OP, "(")) {
            expr *a = new_expr(p, E_CALL, line);
            if (!a) return NULL;
            a->a = e;
            if (parse_args(p, a)) return NULL;
            e = a;
        } else return e;
    }
}

static expr *parse_unary_(parser *p);
static expr *parse_unary(parser *p) {   /* every primary passes here: the recursion guard */
    if (p->depth >= CHAT_MAX_DEPTH) { perr(p, peek(p)->line, "expression nested too deep"); return NULL; }
    p->depth++;
    expr *e = parse_unary_(p);
    p->depth--;
    return e;
}

static expr *parse_unary_(parser *p) {
    int line = peek(p)->line;
    if (accept(p, T_OP, "-")) {
        expr *e = new_expr(p, E_NEG, line);
        if (e && !(e->a = parse_unary(p))) return NULL;
        return e;
    }
    expr *e = parse_primary(p);
    /* filters and tests bind tighter than operators */
    while (e) {
        line = peek(p)->line;
        if (accept(p, T_OP, "|")) {
            if (peek(p)->type != T_NAME) { perr(p, line, "expected a filter name"); return NULL; }
            expr *f = new_expr(p, E_FILTER, line);
            if (!f) return NULL;
            f->a = e;
            f->name = tok_str(p, next(p));
            if (accept(p, T_OP, "(") && parse_args(p, f)) return NULL;
            e = f;
        } else if (accept(p, T_NAME, "is")) {
            expr *t = new_expr(p, E_TEST, line);
            if (!t) return NULL;
            t->a = e;
            t->neg = accept(p, T_NAME, "not");
            if (peek(p)->type != T_NAME) { perr(p, line, "expected a test name after 'is'"); return NULL; }
            t->name = tok_str(p, next(p));
            e = t;
        } else break;
    }
    return e;
}

static expr *bin(parser *p, const char *op, int line, expr *a, expr *b) {
    if (!a || !b) return NULL;
    expr *e = new_expr(p, E_BIN, line);
    if (!e) return NULL;
    snprintf(e->op, sizeof e->op, "%s", op);
    e->a = a;
    e->b = b;
    return e;
}

/* Jinja's precedence, loosest first: + -, then ~, then * %, then unary */
static expr *parse_term(parser *p) {
    expr *e = parse_unary(p);
    for (;;) {
        int line = peek(p)->line;
        const char *op = accept(p, T_OP, "*") ? "*" : accept(p, T_OP, "%") ? "%" : NULL;
        if (!op || !e) return e;
        e = bin(p, op, line, e, parse_unary(p));
    }
}

static expr *parse_concat(parser *p) {
    expr *e = parse_term(p);
    for (;;) {
        int line = peek(p)->line;
        if (!e || !accept(p, T_OP, "~")) return e;
        e = bin(p, "~", line, e, parse_term(p));
    }
}

static expr *parse_arith(parser *p) {
    expr *e = parse_concat(p);
    for (;;) {
        int line = peek(p)->line;
        const char *op = accept(p, T_OP, "+") ? "+" : accept(p, T_OP, "-") ? "-" : NULL;
        if (!op || !e) return e;
        e = bin(p, op, line, e, parse_concat(p));
    }
}

static expr *parse_compare(parser *p) {
    expr *e = parse_arith(p);
    for (;;) {
        int line = peek(p)->line;
        static const char *ops[] = {"==", "!=", "<=", ">=", "<", ">"};
        const char *op = NULL;
        for (int k = 0; k < 6 && !op; k++) if (accept(p, T_OP, ops[k])) op = ops[k];
        if (!op && accept(p, T_NAME, "in")) op = "in";
        if (!op && tok_is(peek(p), T_NAME, "not") && tok_is(&p->toks[p->pos + 1], T_NAME, "in")) {
            p->pos += 2;
            op = "ni";
        }
        if (!op || !e) return e;
        e = bin(p, op, line, e, parse_arith(p));
    }
}

static expr *parse_not(parser *p) {
    int line = peek(p)->line;
    if (accept(p, T_NAME, "not")) {
        if (p->depth >= CHAT_MAX_DEPTH) { perr(p, line, "expression nested too deep"); return NULL; }
        expr *e = new_expr(p, E_NOT, line);
        p->depth++;
        if (e && !(e->a = parse_not(p))) e = NULL;
        p->depth--;
        return e;
    }
    return parse_compare(p);
}

static expr *parse_and(parser *p) {
    expr *e = parse_not(p);
    while (e && tok_is(peek(p), T_NAME, "and")) {
        expr *a = new_expr(p, E_AND, next(p)->line);
        if (!a) return NULL;
        a->a = e;
        if (!(a->b = parse_not(p))) return NULL;
        e = a;
    }
    return e;
}

static expr *parse_or(parser *p) {
    expr *e = parse_and(p);
    while (e && tok_is(peek(p), T_NAME, "or")) {
        expr *a = new_expr(p, E_OR, next(p)->line);
        if (!a) return NULL;
        a->a = e;
        if (!(a->b = parse_and(p))) return NULL;
        e = a;
    }
    return e;
}

static expr *parse_expr(parser *p) { /* x if c else y */
    expr *e = parse_or(p);
    if (e && tok_is(peek(p), T_NAME, "if")) {
        expr *c = new_expr(p, E_COND, next(p)->line);
        if (!c) return NULL;
        c->b = e;
        if (!(c->a = parse_or(p))) return NULL;
        if (accept(p, T_NAME, "else") && !(c->c = parse_expr(p))) return NULL;
        e = c;
    }
    return e;
}

static int block_add(parser *p, block *b, node *n) {
    if (!n) return MOE_FAIL;
    if (b->n == b->cap) {
        int nc = b->cap ? b->cap * 2 : 8;
        node **v = palloc(p, sizeof *v * (size_t)nc);
        if (!v) return moe_error_set(p->err, "%s: out of memory", p->src);
        if (b->n) memcpy(v, b->v, sizeof *v * (size_t)b->n);
        b->v = v;
        b->cap = nc;
    }
    b->v[b->n++] = n;
    return MOE_OK;
}

static node *new_node(parser *p, int kind, int line) {
    node *n = palloc(p, sizeof *n);
    if (n) { n->kind = kind; n->line = line; }
    else moe_error_set(p->err, "%s: out of memory", p->src);
    return n;
}

/* Parses statements into b until a {% tag %} whose name is one of the
 * space-separated words in ends (or EOF when ends is NULL); leaves the parser
 * just after that tag's name and returns it in *end. */
static int parse_block_(parser *p, block *b, const char *ends, const char **end);
static int parse_block(parser *p, block *b, const char *ends, const char **end) {
    if (p->depth >= CHAT_MAX_DEPTH) return perr(p, peek(p)->line, "blocks nested too deep");
    p->depth++;
    int rc = parse_block_(p, b, ends, end);
    p->depth--;
    return rc;
}

static int parse_block_(parser *p, block *b, const char *ends, const char **end) {
    for (;;) {
        token *t = next(p);
        if (t->type == T_EOF) {
            if (ends) return perr(p, t->line, "missing {%% %s %%}", ends);
            return MOE_OK;
        }
        if (t->type == T_TEXT) {
            node *n = new_node(p, N_TEXT, t->line);
            if (!n) return MOE_FAIL;
            n->text = t->s;
            n->len = t->len;
            if (block_add(p, b, n)) return MOE_FAIL;
        } else if (t->type == T_VAR_BEGIN) {
            node *n = new_node(p, N_OUT, t->line);
            if (!n || !(n->e = parse_expr(p)) || expect(p, T_VAR_END, NULL) || block_add(p, b, n)) return MOE_FAIL;
        } else if (t->type == T_BLOCK_BEGIN) {
            token *kw = next(p);
            if (kw->type != T_NAME) return perr(p, kw->line, "expected a tag name after {%%");
            const char *name = tok_str(p, kw);
            if (!name) return moe_error_set(p->err, "%s: out of memory", p->src);
            if (ends) { /* one of the tags that close this block? */
                size_t l = strlen(name);
                for (const char *w = ends; *w;) {
                    const char *sp = strchr(w, ' ');
                    size_t wl = sp ? (size_t)(sp - w) : strlen(w);
                    if (wl == l && !memcmp(w, name, l)) { *end = name; return MOE_OK; }
                    w += wl + (sp ? 1 : 0);
                }
            }
            node *n = NULL;
            if (!strcmp(name, "if")) {
                n = new_node(p, N_IF, kw->line);
                const char *e2;
                node *cur = n;
                if (!n || !(n->e = parse_expr(p)) || expect(p, T_BLOCK_END, NULL)) return MOE_FAIL;
                for (;;) {
                    if (parse_block(p, &cur->body, "elif else endif", &e2)) return MOE_FAIL;
                    if (!strcmp(e2, "elif")) {
                        node *el = new_node(p, N_IF, peek(p)->line);
                        if (!el || !(el->e = parse_expr(p)) || expect(p, T_BLOCK_END, NULL) || block_add(p, &cur->els, el))
                            return MOE_FAIL;
                        cur = el;
                        continue;
                    }
                    if (expect(p, T_BLOCK_END, NULL)) return MOE_FAIL;
                    if (!strcmp(e2, "else")) {
                        if (parse_block(p, &cur->els, "endif", &e2) || expect(p, T_BLOCK_END, NULL)) return MOE_FAIL;
                    }
                    break;
                }
            } else if (!strcmp(name, "for")) {
                n = new_node(p, N_FOR, kw->line);
                const char *e2;
                if (!n) return MOE_FAIL;
                if (peek(p)->type != T_NAME) return perr(p, kw->line, "expected a loop variable");
                n->var = tok_str(p, next(p));
                if (accept(p, T_OP, ",")) {
                    if (peek(p)->type != T_NAME) return perr(p, kw->line, "expected a second loop variable");
                    n->var2 = tok_str(p, next(p));
                }
                if (expect(p, T_NAME, "in") || !(n->e = parse_or(p))) return MOE_FAIL;
                if (tok_is(peek(p), T_NAME, "if") || tok_is(peek(p), T_NAME, "recursive"))
                    return perr(p, kw->line, "loop filters and recursive loops are not supported");
                if (expect(p, T_BLOCK_END, NULL) || parse_block(p, &n->body, "else endfor", &e2) ||
                    expect(p, T_BLOCK_END, NULL))
                    return MOE_FAIL;
                if (!strcmp(e2, "else") && (parse_block(p, &n->els, "endfor", &e2) || expect(p, T_BLOCK_END, NULL)))
                    return MOE_FAIL;
            } else if (!strcmp(name, "set")) {
                n = new_node(p, N_SET, kw->line);
                if (!n) return MOE_FAIL;
                if (peek(p)->type != T_NAME) return perr(p, kw->line, "expected a name after set");
                n->var = tok_str(p, next(p));
                if (accept(p, T_OP, ".")) {
                    if (peek(p)->type != T_NAME) return perr(p, kw->line, "expected an attribute after '.'");
                    n->attr = tok_str(p, next(p));
                }
                if (!tok_is(peek(p), T_OP, "=")) return perr(p, kw->line, "block set ({%% set x %%}...) is not supported");
                next(p);
                if (!(n->e = parse_expr(p)) || expect(p, T_BLOCK_END, NULL)) return MOE_FAIL;
            } else {
                return perr(p, kw->line, "unsupported tag '%s'", name);
            }
            if (block_add(p, b, n)) return MOE_FAIL;
        } else {
            return perr(p, t->line, "unexpected token");
        }
    }
}

/* ======================================================================
 * Evaluation
 * ====================================================================== */

typedef struct {
    parser *p;
    json_t *scopes[64];    /* variable scopes, innermost last */
    int nscopes;
    char *out;             /* the rendered text */
    size_t len, cap;
    int depth;             /* recursion depth of eval / exec_block */
    long steps;            /* work done, against CHAT_MAX_STEPS */
    size_t bytes;          /* string bytes built, against CHAT_MAX_BYTES */
} renderer;

static int rerr(renderer *r, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int rerr(renderer *r, int line, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return perr(r->p, line, "%s", msg);
}

/* Accounts for a string of n bytes about to be built; fails past the limits. */
static int charge(renderer *r, int line, size_t n) {
    if (n > CHAT_MAX_TEXT) return rerr(r, line, "text longer than %u MB", CHAT_MAX_TEXT >> 20);
    r->bytes += n;
    if (r->bytes > CHAT_MAX_BYTES) return rerr(r, line, "the template builds more than %u MB of text", CHAT_MAX_BYTES >> 20);
    return MOE_OK;
}

static int emit(renderer *r, const char *s, size_t n) {
    if (r->len + n > CHAT_MAX_TEXT)
        return moe_error_set(r->p->err, "%s: chat template: rendered text longer than %u MB", r->p->src, CHAT_MAX_TEXT >> 20);
    if (r->len + n + 1 > r->cap) {
        size_t nc = r->cap ? r->cap : 1024;
        while (nc < r->len + n + 1) nc *= 2;
        char *o = realloc(r->out, nc);
        if (!o) return moe_error_set(r->p->err, "%s: out of memory", r->p->src);
        r->out = o;
        r->cap = nc;
    }
    memcpy(r->out + r->len, s, n);
    r->len += n;
    r->out[r->len] = 0;
    return MOE_OK;
}

static int truthy(json_t *v) {
    if (!v) return 0;
    switch (json_typeof(v)) {
    case JSON_NULL: case JSON_FALSE: return 0;
    case JSON_TRUE: return 1;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0;
    case JSON_STRING: return json_string_length(v) != 0;
    case JSON_ARRAY: return json_array_size(v) != 0;
    case JSON_OBJECT: return json_object_size(v) != 0;
    }
    return 0;
}

/* The text of a value as {{ }} prints it, as @huggingface/jinja does: none
 * and undefined print nothing, booleans print true/false (Python's Jinja
 * would print None/True/False). */
static char *to_text(json_t *v, size_t *len) {
    char buf[64];
    const char *s = "";
    if (!v) s = "";
    else if (json_is_string(v)) { *len = json_string_length(v); char *o = malloc(*len + 1); if (o) memcpy(o, json_string_value(v), *len + 1); return o; }
    else if (json_is_null(v)) s = "";
    else if (json_is_true(v)) s = "true";
    else if (json_is_false(v)) s = "false";
    else if (json_is_integer(v)) { snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v)); s = buf; }
    else return NULL; /* lists, dicts, reals: not printable here */
    *len = strlen(s);
    char *o = malloc(*len + 1);
    if (o) memcpy(o, s, *len + 1);
    return o;
}

static json_t *lookup(renderer *r, const char *name) {
    for (int i = r->nscopes - 1; i >= 0; i--) {
        json_t *v = json_object_get(r->scopes[i], name);
        if (v) return json_incref(v);
    }
    return NULL;
}

static int eval(renderer *r, const expr *e, json_t **out);

static json_t *str_new(const char *s, size_t n) { return json_stringn(s, n); }

/* Python's str.strip/lstrip/rstrip with the default (whitespace) or given characters. */
static json_t *str_strip(json_t *s, const char *chars, int left, int right) {
    const char *v = json_string_value(s);
    size_t b = 0, e = json_string_length(s);
    #define STRIPPABLE(c) (chars ? (c) && strchr(chars, (c)) != NULL : is_space(c))
    if (left) while (b < e && STRIPPABLE(v[b])) b++;
    if (right) while (e > b && STRIPPABLE(v[e - 1])) e--;
    #undef STRIPPABLE
    return str_new(v + b, e - b);
}

/* obj.name(args) for strings and dicts */
static int call_method(renderer *r, const expr *e, json_t *obj, const char *m, json_t **args, int nargs, json_t **out) {
    int line = e->line;
    if (json_is_string(obj)) {
        const char *s = json_string_value(obj);
        size_t n = json_string_length(obj);
        const char *a0 = nargs > 0 && json_is_string(args[0]) ? json_string_value(args[0]) : NULL;
        size_t l0 = a0 ? json_string_length(args[0]) : 0;
        if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
            *out = str_strip(obj, a0, m[0] != 'r', m[0] != 'l');
            return MOE_OK;
        }
        if ((!strcmp(m, "startswith") || !strcmp(m, "endswith")) && a0) {
            int ok = l0 <= n && !memcmp(m[0] == 's' ? s : s + n - l0, a0, l0);
            *out = json_boolean(ok);
            return MOE_OK;
        }
        if (!strcmp(m, "upper") || !strcmp(m, "lower")) {
            if (charge(r, line, n)) return MOE_FAIL;
            char *o = malloc(n + 1);
            if (!o) return moe_error_set(r->p->err, "%s: out of memory", r->p->src);
            for (size_t i = 0; i < n; i++) {
                char c = s[i];
                o[i] = m[0] == 'u' ? (c >= 'a' && c <= 'z' ? c - 32 : c) : (c >= 'A' && c <= 'Z' ? c + 32 : c);
            }
            *out = str_new(o, n);
            free(o);
            return MOE_OK;
        }
        if (!strcmp(m, "split") && a0 && l0) {
            if (charge(r, line, n)) return MOE_FAIL;
            json_t *list = json_array();
            size_t b = 0;
            for (size_t i = 0; i + l0 <= n;) {
                if (!memcmp(s + i, a0, l0)) { json_array_append_new(list, str_new(s + b, i - b)); i += l0; b = i; }
                else i++;
            }
            json_array_append_new(list, str_new(s + b, n - b));
            *out = list;
            return MOE_OK;
        }
        if (!strcmp(m, "replace") && nargs == 2 && a0 && l0 && json_is_string(args[1])) {
            const char *to = json_string_value(args[1]);
            size_t lt = json_string_length(args[1]), hits = 0;
            for (size_t i = 0; i + l0 <= n;) {   /* the exact length first, against the limits */
                if (!memcmp(s + i, a0, l0)) { hits++; i += l0; } else i++;
            }
            if (hits && lt > l0 && (lt - l0) > (CHAT_MAX_TEXT - n) / hits) return rerr(r, line, "text longer than %u MB", CHAT_MAX_TEXT >> 20);
            if (charge(r, line, n - hits * l0 + hits * lt)) return MOE_FAIL;
            char *o = malloc(n - hits * l0 + hits * lt + 1);
            size_t k = 0;
            if (!o) return moe_error_set(r->p->err, "%s: out of memory", r->p->src);
            for (size_t i = 0; i < n;) {
                if (i + l0 <= n && !memcmp(s + i, a0, l0)) { memcpy(o + k, to, lt); k += lt; i += l0; }
                else o[k++] = s[i++];
            }
            *out = str_new(o, k);
            free(o);
            return MOE_OK;
        }
    }
    if (json_is_object(obj)) {
        if (!strcmp(m, "items") && nargs == 0) {
            r->steps += (long)json_object_size(obj);
            json_t *list = json_array();
            const char *k;
            json_t *v;
            json_object_foreach(obj, k, v) json_array_append_new(list, json_pack("[sO]", k, v));
            *out = list;
            return MOE_OK;
        }
        if (!strcmp(m, "get") && (nargs == 1 || nargs == 2) && json_is_string(args[0])) {
            json_t *v = json_object_get(obj, json_string_value(args[0]));
            *out = v ? json_incref(v) : nargs == 2 ? json_incref(args[1]) : json_null();
            return MOE_OK;
        }
    }
    return rerr(r, line, "method '%s' is not supported here", m);
}

static int eval_call(renderer *r, const expr *e, json_t **out) {
    json_t *args[16] = {0};
    int rc = MOE_OK;
    if (e->nargs > 16) return rerr(r, e->line, "too many arguments");
    for (int i = 0; i < e->nargs && !rc; i++) rc = eval(r, e->args[i], &args[i]);
    if (!rc) {
        const expr *f = e->a;
        if (f->kind == E_NAME && !strcmp(f->name, "namespace")) {
            json_t *ns = json_object();
            for (int i = 0; i < e->nargs; i++) {
                if (!e->kw[i]) { rc = rerr(r, e->line, "namespace() takes only name=value arguments"); break; }
                json_object_set(ns, e->kw[i], args[i] ? args[i] : json_null());
            }
            if (!rc) *out = ns;
            else json_decref(ns);
        } else if (f->kind == E_NAME && !strcmp(f->name, "raise_exception")) {
            rc = rerr(r, e->line, "template raised: %s", e->nargs && json_is_string(args[0]) ? json_string_value(args[0]) : "?");
        } else if (f->kind == E_ATTR) {
            json_t *obj = NULL;
            rc = eval(r, f->a, &obj);
            if (!rc) {
                for (int i = 0; i < e->nargs && !rc; i++)
                    if (e->kw[i]) rc = rerr(r, e->line, "keyword arguments to methods are not supported");
                if (!rc && !obj) rc = rerr(r, e->line, "calling '%s' on an undefined value", f->name);
                if (!rc) rc = call_method(r, e, obj, f->name, args, e->nargs, out);
            }
            json_decref(obj);
        } else {
            rc = rerr(r, e->line, "function '%s' is not supported", f->kind == E_NAME ? f->name : "?");
        }
    }
    for (int i = 0; i < e->nargs; i++) json_decref(args[i]);
    return rc;
}

static int eval_filter(renderer *r, const expr *e, json_t *v, json_t **out) {
    const char *f = e->name;
    if (e->nargs) return rerr(r, e->line, "filter '%s' with arguments is not supported", f);
    if (!strcmp(f, "trim") && json_is_string(v)) { *out = str_strip(v, NULL, 1, 1); return MOE_OK; }
    if (!strcmp(f, "length") && (json_is_string(v) || json_is_array(v) || json_is_object(v))) {
        size_t n = json_is_array(v) ? json_array_size(v) : json_is_object(v) ? json_object_size(v) : 0;
        if (json_is_string(v)) { /* characters, not bytes */
            const unsigned char *s = (const unsigned char *)json_string_value(v);
            for (size_t i = 0; i < json_string_length(v); i++) n += (s[i] & 0xc0) != 0x80;
        }
        *out = json_integer((json_int_t)n);
        return MOE_OK;
    }
    if (!strcmp(f, "string")) {
        size_t n;
        char *s = to_text(v, &n);
        if (!s) return rerr(r, e->line, "filter 'string' on a list or mapping is not supported");
        if (charge(r, e->line, n)) { free(s); return MOE_FAIL; }
        *out = str_new(s, n);
        free(s);
        return MOE_OK;
    }
    if ((!strcmp(f, "upper") || !strcmp(f, "lower")) && json_is_string(v))
        return call_method(r, e, v, f, NULL, 0, out);
    return rerr(r, e->line, "filter '%s' is not supported here", f);
}

static int eval_test(const expr *e, json_t *v, int *res) {
    const char *t = e->name;
    if (!strcmp(t, "defined")) *res = v != NULL;
    else if (!strcmp(t, "undefined")) *res = v == NULL;
    else if (!strcmp(t, "none")) *res = v && json_is_null(v);
    else if (!strcmp(t, "string")) *res = v && json_is_string(v);
    else if (!strcmp(t, "number")) *res = v && json_is_number(v);
    else if (!strcmp(t, "boolean")) *res = v && json_is_boolean(v);
    else if (!strcmp(t, "mapping")) *res = v && json_is_object(v);
    else if (!strcmp(t, "iterable")) *res = v && (json_is_array(v) || json_is_object(v) || json_is_string(v));
    else return -1;
    if (e->neg) *res = !*res;
    return 0;
}

static int eval_bin(renderer *r, const expr *e, json_t *a, json_t *b, json_t **out) {
    const char *op = e->op;
    if (a && b && (!strcmp(op, "==") || !strcmp(op, "!=") || !strcmp(op, "in") || !strcmp(op, "ni")))
        /* comparing and searching scan their operands: charge for it */
        r->steps += (long)((json_is_array(b) ? json_array_size(b) : json_is_object(b) ? json_object_size(b) : 0) +
                           (json_is_string(b) ? json_string_length(b) / 64 : 0) +
                           (json_is_array(a) ? json_array_size(a) : json_is_string(a) ? json_string_length(a) / 64 : 0));
    if (!strcmp(op, "==") || !strcmp(op, "!=")) {
        int eq = (!a && !b) || (a && b && json_equal(a, b));
        *out = json_boolean(op[0] == '=' ? eq : !eq);
        return MOE_OK;
    }
    if (!strcmp(op, "~")) {
        size_t la, lb;
        char *sa = to_text(a, &la), *sb = to_text(b, &lb);
        int rc = MOE_OK;
        if (sa && sb && charge(r, e->line, la + lb)) rc = MOE_FAIL;
        else if (sa && sb) {
            char *c = malloc(la + lb + 1);
            if (c) { memcpy(c, sa, la); memcpy(c + la, sb, lb); *out = str_new(c, la + lb); free(c); }
            else rc = moe_error_set(r->p->err, "%s: out of memory", r->p->src);
        } else rc = rerr(r, e->line, "'~' on a list or mapping is not supported");
        free(sa); free(sb);
        return rc;
    }
    if (!strcmp(op, "in") || !strcmp(op, "ni")) {
        int found = 0;
        if (a && b && json_is_string(b) && json_is_string(a))
            found = memmem(json_string_value(b), json_string_length(b), json_string_value(a), json_string_length(a)) != NULL;
        else if (a && b && json_is_array(b)) {
            for (size_t i = 0; i < json_array_size(b) && !found; i++) found = json_equal(a, json_array_get(b, i));
        } else if (a && b && json_is_object(b) && json_is_string(a)) found = json_object_get(b, json_string_value(a)) != NULL;
        else return rerr(r, e->line, "'in' needs a string, list or mapping on its right");
        *out = json_boolean(op[0] == 'i' ? found : !found);
        return MOE_OK;
    }
    if (!a || !b) return rerr(r, e->line, "'%s' on an undefined value", op);
    if (json_is_integer(a) && json_is_integer(b)) {
        long long x = json_integer_value(a), y = json_integer_value(b), z;
        if (!strcmp(op, "+") || !strcmp(op, "-") || !strcmp(op, "*")) {
            if (op[0] == '+' ? __builtin_add_overflow(x, y, &z) : op[0] == '-' ? __builtin_sub_overflow(x, y, &z)
                                                                                : __builtin_mul_overflow(x, y, &z))
                return rerr(r, e->line, "integer overflow in '%s'", op);
            *out = json_integer(z);
        }
        else if (!strcmp(op, "%")) {   /* Python's sign rule: the result takes y's sign */
            if (!y) return rerr(r, e->line, "modulo by zero");
            z = y == -1 ? 0 : x % y;
            *out = json_integer(z != 0 && (z < 0) != (y < 0) ? z + y : z);
        }
        else if (!strcmp(op, "<")) *out = json_boolean(x < y);
        else if (!strcmp(op, ">")) *out = json_boolean(x > y);
        else if (!strcmp(op, "<=")) *out = json_boolean(x <= y);
        else if (!strcmp(op, ">=")) *out = json_boolean(x >= y);
        else return rerr(r, e->line, "operator '%s' is not supported", op);
        return MOE_OK;
    }
    if (!strcmp(op, "+") && json_is_string(a) && json_is_string(b)) {
        size_t la = json_string_length(a), lb = json_string_length(b);
        if (charge(r, e->line, la + lb)) return MOE_FAIL;
        char *c = malloc(la + lb + 1);
        if (!c) return moe_error_set(r->p->err, "%s: out of memory", r->p->src);
        memcpy(c, json_string_value(a), la);
        memcpy(c + la, json_string_value(b), lb);
        *out = str_new(c, la + lb);
        free(c);
        return MOE_OK;
    }
    if (!strcmp(op, "+") && json_is_array(a) && json_is_array(b)) {
        if (json_array_size(a) + json_array_size(b) > CHAT_MAX_LIST) return rerr(r, e->line, "list longer than %d items", CHAT_MAX_LIST);
        r->steps += (long)(json_array_size(a) + json_array_size(b)) / 16;   /* copying costs */
        *out = json_copy(a);
        json_array_extend(*out, b);
        return MOE_OK;
    }
    return rerr(r, e->line, "operator '%s' on these types is not supported", op);
}

static int eval_(renderer *r, const expr *e, json_t **out);
static int eval(renderer *r, const expr *e, json_t **out) {   /* the guard on every evaluation */
    *out = NULL;
    if (r->depth >= CHAT_MAX_DEPTH) return rerr(r, e->line, "expression nested too deep");
    if (++r->steps > CHAT_MAX_STEPS) return rerr(r, e->line, "the template runs more than %d steps", CHAT_MAX_STEPS);
    r->depth++;
    int rc = eval_(r, e, out);
    r->depth--;
    return rc;
}

static int eval_(renderer *r, const expr *e, json_t **out) {
    json_t *a = NULL, *b = NULL;
    int rc = MOE_OK;
    *out = NULL;
    switch (e->kind) {
    case E_LIT: *out = json_incref(e->lit); return MOE_OK;
    case E_NAME: *out = lookup(r, e->name); return MOE_OK;
    case E_ATTR:
    case E_INDEX:
        if ((rc = eval(r, e->a, &a))) return rc;
        if (e->kind == E_INDEX && (rc = eval(r, e->b, &b))) { json_decref(a); return rc; }
        if (!a) { /* an attribute of undefined is undefined, as Jinja's default Undefined chains */
        } else if (json_is_object(a)) {
            const char *k = e->kind == E_ATTR ? e->name : json_string_value(b);
            if (k) { json_t *v = json_object_get(a, k); *out = v ? json_incref(v) : NULL; }
            else rc = rerr(r, e->line, "a mapping index must be a string");
        } else if (json_is_array(a) && e->kind == E_INDEX && b && json_is_integer(b)) {
            long long i = json_integer_value(b), n = (long long)json_array_size(a);
            if (i < 0) i += n;
            json_t *v = i >= 0 && i < n ? json_array_get(a, (size_t)i) : NULL;
            *out = v ? json_incref(v) : NULL;
        } else if (!(e->kind == E_ATTR && json_is_string(a))) {
            rc = rerr(r, e->line, "cannot index this value");
        }
        break;
    case E_CALL: return eval_call(r, e, out);
    case E_FILTER:
        if ((rc = eval(r, e->a, &a))) return rc;
        rc = eval_filter(r, e, a, out);
        break;
    case E_TEST: {
        int res;
        if ((rc = eval(r, e->a, &a))) return rc;
        if (eval_test(e, a, &res)) rc = rerr(r, e->line, "test '%s' is not supported", e->name);
        else *out = json_boolean(res);
        break;
    }
    case E_NOT:
        if ((rc = eval(r, e->a, &a))) return rc;
        *out = json_boolean(!truthy(a));
        break;
    case E_NEG:
        if ((rc = eval(r, e->a, &a))) return rc;
        if (a && json_is_integer(a) && json_integer_value(a) == LLONG_MIN) rc = rerr(r, e->line, "integer overflow in '-'");
        else if (a && json_is_integer(a)) *out = json_integer(-json_integer_value(a));
        else rc = rerr(r, e->line, "unary '-' needs an integer");
        break;
    case E_AND:
    case E_OR: /* Python semantics: the deciding operand itself */
        if ((rc = eval(r, e->a, &a))) return rc;
        if (truthy(a) == (e->kind == E_OR)) { *out = a; return MOE_OK; }
        json_decref(a);
        return eval(r, e->b, out);
    case E_COND:
        if ((rc = eval(r, e->a, &a))) return rc;
        rc = truthy(a) ? eval(r, e->b, out) : e->c ? eval(r, e->c, out) : MOE_OK;
        break;
    case E_LIST:
        *out = json_array();
        for (int i = 0; i < e->nargs && !rc; i++) {
            json_t *v;
            if (!(rc = eval(r, e->args[i], &v))) json_array_append_new(*out, v ? v : json_null());
        }
        break;
    case E_DICT:
        *out = json_object();
        for (int i = 0; i + 1 < e->nargs && !rc; i += 2) {
            json_t *k, *v;
            if ((rc = eval(r, e->args[i], &k))) break;
            if (!k || !json_is_string(k)) rc = rerr(r, e->line, "dict keys must be strings");
            else if (!(rc = eval(r, e->args[i + 1], &v))) json_object_set_new(*out, json_string_value(k), v ? v : json_null());
            json_decref(k);
        }
        break;
    case E_BIN:
        if ((rc = eval(r, e->a, &a)) || (rc = eval(r, e->b, &b))) break;
        rc = eval_bin(r, e, a, b, out);
        break;
    }
    json_decref(a);
    json_decref(b);
    if (rc) { json_decref(*out); *out = NULL; }
    return rc;
}

static int exec_block(renderer *r, const block *b);

static int exec_for(renderer *r, const node *n) {
    json_t *it = NULL;
    int rc = eval(r, n->e, &it);
    if (rc) return rc;
    if (it && json_is_object(it)) { /* iterating a mapping gives its keys */
        json_t *keys = json_array();
        const char *k;
        json_t *v;
        json_object_foreach(it, k, v) json_array_append_new(keys, json_string(k));
        json_decref(it);
        it = keys;
    }
    if (it && !json_is_array(it)) { json_decref(it); return rerr(r, n->line, "can only loop over a list or mapping"); }
    size_t len = it ? json_array_size(it) : 0;
    if (r->nscopes == 64) { json_decref(it); return rerr(r, n->line, "loops nested too deep"); }
    json_t *scope = json_object();
    r->scopes[r->nscopes++] = scope;
    for (size_t i = 0; i < len && !rc; i++) {
        json_t *v = json_array_get(it, i);
        r->steps += 8;   /* a loop turn builds the loop object: it costs like several steps */
        if (r->steps > CHAT_MAX_STEPS) { rc = rerr(r, n->line, "the template runs more than %d steps", CHAT_MAX_STEPS); break; }
        if (n->var2) {
            if (!json_is_array(v) || json_array_size(v) != 2) { rc = rerr(r, n->line, "cannot unpack the loop item into two names"); break; }
            json_object_set(scope, n->var, json_array_get(v, 0));
            json_object_set(scope, n->var2, json_array_get(v, 1));
        } else json_object_set(scope, n->var, v);
        json_object_set_new(scope, "loop", json_pack("{s:I,s:I,s:b,s:b,s:I}", "index", (json_int_t)i + 1, "index0",
                                                      (json_int_t)i, "first", i == 0, "last", i + 1 == len, "length",
                                                      (json_int_t)len));
        rc = exec_block(r, &n->body);
    }
    r->nscopes--;
    json_decref(scope);
    json_decref(it);
    if (!rc && !len) rc = exec_block(r, &n->els);
    return rc;
}

/* Depth of v (0 for a scalar), or -1 when it reaches `limit` levels or holds `target`. */
static int value_depth(renderer *r, json_t *v, json_t *target, int limit) {
    if (!json_is_array(v) && !json_is_object(v)) return 0;
    if (v == target || limit <= 0) return -1;
    r->steps++;
    int d = 0;
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            int k = value_depth(r, json_array_get(v, i), target, limit - 1);
            if (k < 0) return -1;
            if (k > d) d = k;
        }
    } else {
        const char *key;
        json_t *x;
        json_object_foreach(v, key, x) {
            int k = value_depth(r, x, target, limit - 1);
            if (k < 0) return -1;
            if (k > d) d = k;
        }
    }
    return d + 1;
}

static int exec_block_(renderer *r, const block *b);
static int exec_block(renderer *r, const block *b) {   /* elif chains nest: the recursion guard */
    if (r->depth >= CHAT_MAX_DEPTH) return rerr(r, b->n ? b->v[0]->line : 0, "blocks nested too deep");
    r->depth++;
    int rc = exec_block_(r, b);
    r->depth--;
    return rc;
}

static int exec_block_(renderer *r, const block *b) {
    for (int i = 0; i < b->n; i++) {
        const node *n = b->v[i];
        json_t *v = NULL;
        int rc = MOE_OK;
        if (++r->steps > CHAT_MAX_STEPS) return rerr(r, n->line, "the template runs more than %d steps", CHAT_MAX_STEPS);
        switch (n->kind) {
        case N_TEXT: rc = emit(r, n->text, n->len); break;
        case N_OUT: {
            if ((rc = eval(r, n->e, &v))) break;
            size_t len;
            char *s = to_text(v, &len);
            if (!s) rc = rerr(r, n->line, "printing a list or mapping is not supported");
            else rc = emit(r, s, len);
            free(s);
            break;
        }
        case N_IF:
            if ((rc = eval(r, n->e, &v))) break;
            rc = exec_block(r, truthy(v) ? &n->body : &n->els);
            break;
        case N_FOR: rc = exec_for(r, n); break;
        case N_SET:
            if ((rc = eval(r, n->e, &v))) break;
            if (n->attr) {
                json_t *ns = lookup(r, n->var);
                if (!ns || !json_is_object(ns)) rc = rerr(r, n->line, "'%s' is not a namespace", n->var);
                else if (value_depth(r, v, ns, 32) < 0)   /* ns inside itself would never be freed */
                    rc = rerr(r, n->line, "the value set to %s.%s contains %s or is nested too deep", n->var, n->attr, n->var);
                else json_object_set(ns, n->attr, v ? v : json_null());
                json_decref(ns);
            } else if (value_depth(r, v, NULL, 32) < 0) {
                rc = rerr(r, n->line, "the value set to %s is nested too deep", n->var);
            } else json_object_set(r->scopes[r->nscopes - 1], n->var, v ? v : json_null());
            break;
        }
        json_decref(v);
        if (rc) return rc;
    }
    return MOE_OK;
}

/* ======================================================================
 * Entry points
 * ====================================================================== */

int chat_render_json(const char *tmpl, const char *src, json_t *messages, json_t *vars, int add_generation_prompt,
                     const char *bos, const char *eos, char **out, moe_error *err) {
    parser p = {.src = src ? src : "chat template", .err = err};
    renderer r = {.p = &p};
    block top = {0};
    int rc;
    *out = NULL;
    if (!tmpl) return moe_error_set(err, "%s: no chat_template", p.src);
    if (!(p.lits = json_array())) return moe_error_set(err, "%s: out of memory", p.src);
    rc = lex(&p, tmpl);
    if (!rc) rc = parse_block(&p, &top, NULL, NULL);
    if (!rc) {
        json_t *g = vars ? json_deep_copy(vars) : json_object();
        json_object_set(g, "messages", messages ? messages : json_array());
        json_object_set_new(g, "add_generation_prompt", json_boolean(add_generation_prompt));
        if (bos) json_object_set_new(g, "bos_token", json_string(bos));
        if (eos) json_object_set_new(g, "eos_token", json_string(eos));
        r.scopes[r.nscopes++] = g;
        rc = exec_block(&r, &top);
        json_decref(g);
    }
    if (!rc && !r.out) rc = emit(&r, "", 0);
    if (rc) free(r.out);
    else *out = r.out;
    for (int i = 0; i < p.nowned; i++) free(p.owned[i]);
    free(p.owned);
    free(p.toks);
    free(p.text);
    json_decref(p.lits);
    return rc;
}

int chat_render(const char *tmpl, const char *src, const chat_message *msgs, int n, int add_generation_prompt,
                const char *bos, const char *eos, char **out, moe_error *err) {
    json_t *arr = json_array();
    *out = NULL;
    for (int i = 0; i < n; i++) {
        json_t *role = json_string(msgs[i].role ? msgs[i].role : "");
        json_t *content = msgs[i].content ? json_string(msgs[i].content) : json_null();
        if (!role || !content) {
            json_decref(role);
            json_decref(content);
            json_decref(arr);
            return moe_error_set(err, "%s: message %d: role or content is not valid UTF-8", src ? src : "chat template", i);
        }
        json_array_append_new(arr, json_pack("{s:o,s:o}", "role", role, "content", content));
    }
    int rc = chat_render_json(tmpl, src, arr, NULL, add_generation_prompt, bos, eos, out, err);
    json_decref(arr);
    return rc;
}

int chat_render_tokenizer(const tokenizer *t, const chat_message *msgs, int n, int add_generation_prompt, char **out,
                          moe_error *err) {
    const char *cfg = tokenizer_config_path(t);
    if (!tokenizer_chat_template(t))
        return moe_error_set(err, "%s: no chat_template", *cfg ? cfg : "tokenizer_config.json");
    const char *bos = tokenizer_bos_str(t), *eos = tokenizer_eos_str(t);
    return chat_render(tokenizer_chat_template(t), cfg, msgs, n, add_generation_prompt, *bos ? bos : NULL,
                       *eos ? eos : NULL, out, err);
}
