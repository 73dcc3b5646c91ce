/* Recursive-descent JSON parser (see json.h). */
#include "json.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STRING 4096
#define MAX_MEMBERS 100000

typedef struct {
    const char *start, *s, *end;
    char *err;
    unsigned long err_len;
} Parser;

static int fail(Parser *p, const char *what)
{
    snprintf(p->err, p->err_len, "case.json, byte %ld: %s", (long)(p->s - p->start), what);
    return -1;
}

static void skip_ws(Parser *p)
{
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' || *p->s == '\r'))
        p->s++;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int parse_string(Parser *p, char **out)
{
    char buf[MAX_STRING];
    size_t n = 0;
    p->s++; /* opening quote */
    while (p->s < p->end && *p->s != '"') {
        char c = *p->s++;
        if ((unsigned char)c < 0x20 || (unsigned char)c >= 0x80)
            return fail(p, "control or non-ASCII character in a string");
        if (c == '\\') {
            if (p->s >= p->end)
                return fail(p, "unterminated escape");
            c = *p->s++;
            switch (c) {
            case '"': case '\\': case '/': break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': {
                int i, v = 0;
                for (i = 0; i < 4; i++) {
                    int h = p->s < p->end ? hex_digit(*p->s) : -1;
                    if (h < 0)
                        return fail(p, "malformed \\u escape");
                    v = v * 16 + h;
                    p->s++;
                }
                if (v == 0 || v >= 0x80)
                    return fail(p, "\\u escape outside ASCII (or NUL) is not supported");
                c = (char)v;
                break;
            }
            default:
                return fail(p, "unknown escape");
            }
        }
        if (n + 1 >= sizeof buf)
            return fail(p, "string too long");
        buf[n++] = c;
    }
    if (p->s >= p->end)
        return fail(p, "unterminated string");
    p->s++; /* closing quote */
    buf[n] = '\0';
    *out = malloc(n + 1);
    if (!*out)
        return fail(p, "out of memory");
    memcpy(*out, buf, n + 1);
    return 0;
}

static int parse_int(Parser *p, long long *out)
{
    int negative = 0;
    long long v = 0;
    if (*p->s == '-') {
        negative = 1;
        p->s++;
    }
    if (p->s >= p->end || *p->s < '0' || *p->s > '9')
        return fail(p, "malformed number");
    if (*p->s == '0' && p->s + 1 < p->end && p->s[1] >= '0' && p->s[1] <= '9')
        return fail(p, "leading zero in a number");
    while (p->s < p->end && *p->s >= '0' && *p->s <= '9') {
        int digit = *p->s - '0';
        if (v > (LLONG_MAX - digit) / 10)
            return fail(p, "integer too large");
        v = v * 10 + digit;
        p->s++;
    }
    if (p->s < p->end && (*p->s == '.' || *p->s == 'e' || *p->s == 'E'))
        return fail(p, "only integers are allowed in case.json");
    *out = negative ? -v : v;
    return 0;
}

static int parse_value(Parser *p, JsonValue *v, int depth);

/* Append a zero-initialised member; returns it or NULL. */
static JsonValue *grow(JsonValue *v, int with_key)
{
    JsonValue *items;
    if (v->count >= MAX_MEMBERS)
        return NULL;
    items = realloc(v->items, (size_t)(v->count + 1) * sizeof *items);
    if (!items)
        return NULL;
    v->items = items;
    if (with_key) {
        char **keys = realloc(v->keys, (size_t)(v->count + 1) * sizeof *keys);
        if (!keys)
            return NULL;
        v->keys = keys;
        v->keys[v->count] = NULL;
    }
    memset(&v->items[v->count], 0, sizeof *items);
    v->items[v->count].type = JSON_INT;
    v->count++;
    return &v->items[v->count - 1];
}

static int parse_container(Parser *p, JsonValue *v, int depth, int is_object)
{
    char close = is_object ? '}' : ']';
    v->type = is_object ? JSON_OBJECT : JSON_ARRAY;
    p->s++;
    skip_ws(p);
    if (p->s < p->end && *p->s == close) {
        p->s++;
        return 0;
    }
    for (;;) {
        JsonValue *item;
        char *key = NULL;
        skip_ws(p);
        if (is_object) {
            int i;
            if (p->s >= p->end || *p->s != '"')
                return fail(p, "object key (a string) expected");
            if (parse_string(p, &key) != 0)
                return -1;
            for (i = 0; i < v->count; i++)
                if (strcmp(v->keys[i], key) == 0) {
                    free(key);
                    return fail(p, "repeated object key");
                }
            skip_ws(p);
            if (p->s >= p->end || *p->s != ':') {
                free(key);
                return fail(p, "':' expected");
            }
            p->s++;
        }
        item = grow(v, is_object);
        if (!item) {
            free(key);
            return fail(p, "too many members, or out of memory");
        }
        if (is_object)
            v->keys[v->count - 1] = key;
        if (parse_value(p, item, depth + 1) != 0)
            return -1;
        skip_ws(p);
        if (p->s < p->end && *p->s == ',') {
            p->s++;
            continue;
        }
        if (p->s < p->end && *p->s == close) {
            p->s++;
            return 0;
        }
        return fail(p, is_object ? "',' or '}' expected" : "',' or ']' expected");
    }
}

static int parse_value(Parser *p, JsonValue *v, int depth)
{
    if (depth > JSON_MAX_DEPTH)
        return fail(p, "nesting too deep");
    skip_ws(p);
    if (p->s >= p->end)
        return fail(p, "value expected");
    switch (*p->s) {
    case '{':
        return parse_container(p, v, depth, 1);
    case '[':
        return parse_container(p, v, depth, 0);
    case '"':
        v->type = JSON_STRING;
        return parse_string(p, &v->string);
    default:
        if (*p->s == '-' || (*p->s >= '0' && *p->s <= '9')) {
            v->type = JSON_INT;
            return parse_int(p, &v->integer);
        }
        return fail(p, "unexpected content (true, false, null and the like are not part of case.json)");
    }
}

int json_parse(const char *text, unsigned long len, JsonValue *out, char *err, unsigned long err_len)
{
    Parser p;
    p.start = p.s = text;
    p.end = text + len;
    p.err = err;
    p.err_len = err_len;
    memset(out, 0, sizeof *out);
    out->type = JSON_INT;
    if (parse_value(&p, out, 0) != 0) {
        json_free(out);
        return -1;
    }
    skip_ws(&p);
    if (p.s != p.end) {
        json_free(out);
        return fail(&p, "content after the top-level value");
    }
    return 0;
}

const JsonValue *json_get(const JsonValue *object, const char *key)
{
    int i;
    if (object->type != JSON_OBJECT)
        return NULL;
    for (i = 0; i < object->count; i++)
        if (strcmp(object->keys[i], key) == 0)
            return &object->items[i];
    return NULL;
}

void json_free(JsonValue *value)
{
    int i;
    for (i = 0; i < value->count; i++) {
        json_free(&value->items[i]);
        if (value->keys)
            free(value->keys[i]);
    }
    free(value->items);
    free(value->keys);
    free(value->string);
    memset(value, 0, sizeof *value);
}
