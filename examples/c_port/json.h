/* A minimal, strict JSON parser: just enough for the exec protocol's case.json.
 *
 * Accepted: objects (no repeated keys), arrays, strings (ASCII; escapes \" \\ \/ \b
 * \f \n \r \t and \u00XX below 0x80) and integers that fit in a long long. Refused
 * with a message: fractions and exponents, true/false/null, other escapes, nesting
 * deeper than JSON_MAX_DEPTH, anything after the top-level value. */
#ifndef JSON_H
#define JSON_H

#define JSON_MAX_DEPTH 16

typedef enum { JSON_OBJECT, JSON_ARRAY, JSON_STRING, JSON_INT } JsonType;

typedef struct JsonValue {
    JsonType type;
    long long integer;        /* JSON_INT */
    char *string;             /* JSON_STRING, NUL-terminated */
    int count;                /* JSON_OBJECT, JSON_ARRAY: number of members */
    char **keys;              /* JSON_OBJECT: member names */
    struct JsonValue *items;  /* JSON_OBJECT, JSON_ARRAY: members */
} JsonValue;

/* Parse text[0..len); returns 0, or -1 with a message (and its byte offset) in err. */
int json_parse(const char *text, unsigned long len, JsonValue *out, char *err, unsigned long err_len);

/* Member `key` of an object, or NULL. */
const JsonValue *json_get(const JsonValue *object, const char *key);

void json_free(JsonValue *value);

#endif
