/* .npy reading and writing (see npy.h).
 *
 * A .npy file is:
 *   6 bytes   magic "\x93NUMPY"
 *   2 bytes   format version: major, minor (1.0, 2.0 or 3.0)
 *   2 bytes   (version 1.0) or 4 bytes (2.0, 3.0): header length L, little-endian
 *   L bytes   header: a Python dict literal, padded with spaces, ending in '\n', e.g.
 *             {'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }
 *   data      prod(shape) values, no padding, in the dtype and order the header gives.
 * Values are decoded byte by byte, so the reader and writer work on any host byte
 * order (assuming IEEE 754 float and double, checked below).
 */
#include "npy.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* IEEE 754 binary32 / binary64 are assumed: refuse to compile otherwise. */
typedef char npy_assert_float_size[(sizeof(float) == 4 && sizeof(double) == 8) ? 1 : -1];

#define MAX_HEADER 65536L
#define MAX_ELEMENTS (1LL << 40)

static const char *skip_spaces(const char *s, const char *end)
{
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    return s;
}

/* Parse a quoted string ('...' or "...") into buf; returns the position after it or NULL. */
static const char *parse_quoted(const char *s, const char *end, char *buf, size_t buf_len)
{
    char quote;
    size_t n = 0;
    if (s >= end || (*s != '\'' && *s != '"'))
        return NULL;
    quote = *s++;
    while (s < end && *s != quote) {
        if (*s == '\\' || n + 1 >= buf_len)
            return NULL;
        buf[n++] = *s++;
    }
    if (s >= end)
        return NULL;
    buf[n] = '\0';
    return s + 1;
}

/* Parse the header dict; fills descr, fortran (0/1) and the shape. */
static int parse_header(const char *s, const char *end, char *descr, size_t descr_len, int *fortran,
                        NpyArray *out, char *err, unsigned long err_len)
{
    int seen_descr = 0, seen_fortran = 0, seen_shape = 0;
    s = skip_spaces(s, end);
    if (s >= end || *s != '{') {
        snprintf(err, err_len, "header is not a dict");
        return -1;
    }
    s++;
    for (;;) {
        char key[32];
        s = skip_spaces(s, end);
        if (s < end && *s == '}') {
            s++;
            break;
        }
        s = parse_quoted(s, end, key, sizeof key);
        if (!s) {
            snprintf(err, err_len, "header: malformed key");
            return -1;
        }
        s = skip_spaces(s, end);
        if (s >= end || *s != ':') {
            snprintf(err, err_len, "header: ':' expected after '%s'", key);
            return -1;
        }
        s = skip_spaces(s + 1, end);
        if (strcmp(key, "descr") == 0 && !seen_descr) {
            seen_descr = 1;
            s = parse_quoted(s, end, descr, descr_len);
            if (!s) {
                snprintf(err, err_len, "header: 'descr' must be a simple type string such as '<f8'");
                return -1;
            }
        } else if (strcmp(key, "fortran_order") == 0 && !seen_fortran) {
            seen_fortran = 1;
            if (end - s >= 4 && strncmp(s, "True", 4) == 0) {
                *fortran = 1;
                s += 4;
            } else if (end - s >= 5 && strncmp(s, "False", 5) == 0) {
                *fortran = 0;
                s += 5;
            } else {
                snprintf(err, err_len, "header: 'fortran_order' must be True or False");
                return -1;
            }
        } else if (strcmp(key, "shape") == 0 && !seen_shape) {
            seen_shape = 1;
            if (s >= end || *s != '(') {
                snprintf(err, err_len, "header: 'shape' must be a tuple");
                return -1;
            }
            s++;
            out->ndim = 0;
            for (;;) {
                long long v = 0;
                s = skip_spaces(s, end);
                if (s < end && *s == ')') {
                    s++;
                    break;
                }
                if (s >= end || *s < '0' || *s > '9') {
                    snprintf(err, err_len, "header: 'shape' holds something other than integers");
                    return -1;
                }
                while (s < end && *s >= '0' && *s <= '9') {
                    if (v > MAX_ELEMENTS) {
                        snprintf(err, err_len, "header: a dimension is too large");
                        return -1;
                    }
                    v = v * 10 + (*s++ - '0');
                }
                if (out->ndim == NPY_MAX_DIMS) {
                    snprintf(err, err_len, "header: more than %d dimensions", NPY_MAX_DIMS);
                    return -1;
                }
                out->shape[out->ndim++] = v;
                s = skip_spaces(s, end);
                if (s < end && *s == ',')
                    s++;
                else if (s >= end || *s != ')') {
                    snprintf(err, err_len, "header: malformed 'shape' tuple");
                    return -1;
                }
            }
        } else {
            snprintf(err, err_len, "header: unknown or repeated key '%s'", key);
            return -1;
        }
        s = skip_spaces(s, end);
        if (s < end && *s == ',')
            s++;
        else if (s >= end || *s != '}') {
            snprintf(err, err_len, "header: ',' or '}' expected");
            return -1;
        }
    }
    s = skip_spaces(s, end);
    if (s != end - 1 || *s != '\n') {
        snprintf(err, err_len, "header: trailing content after the dict");
        return -1;
    }
    if (!seen_descr || !seen_fortran || !seen_shape) {
        snprintf(err, err_len, "header lacks one of 'descr', 'fortran_order', 'shape'");
        return -1;
    }
    return 0;
}

static double decode_f8(const unsigned char *p)
{
    uint64_t bits = 0;
    double value;
    int i;
    for (i = 7; i >= 0; i--)
        bits = (bits << 8) | p[i];
    memcpy(&value, &bits, sizeof value);
    return value;
}

static double decode_f4(const unsigned char *p)
{
    uint32_t bits = 0;
    float value;
    int i;
    for (i = 3; i >= 0; i--)
        bits = (bits << 8) | p[i];
    memcpy(&value, &bits, sizeof value);
    return (double)value;
}

/* IEEE 754 binary16 (a float16 set's inputs): sign, 5 exponent bits, 10 fraction bits. */
static double decode_f2(const unsigned char *p)
{
    unsigned bits = (unsigned)p[0] | ((unsigned)p[1] << 8);
    unsigned exponent = (bits >> 10) & 0x1fu, fraction = bits & 0x3ffu;
    double value;
    if (exponent == 0)
        value = ldexp((double)fraction, -24); /* zero or subnormal: fraction * 2^-24 */
    else if (exponent == 31)
        value = fraction ? NAN : INFINITY;
    else
        value = ldexp((double)(fraction | 0x400u), (int)exponent - 25); /* (1024 + f) * 2^(e-15-10) */
    return (bits & 0x8000u) ? -value : value;
}

int npy_read(const char *path, NpyArray *out, char *err, unsigned long err_len)
{
    FILE *f = fopen(path, "rb");
    unsigned char pre[12];
    long header_len;
    size_t len_bytes, itemsize, i;
    char *header = NULL, descr[16];
    unsigned char *raw = NULL;
    int fortran = 0, d;
    char msg[200];
    out->data = NULL;
    out->ndim = 0;
    out->count = 0;
    if (!f) {
        snprintf(err, err_len, "%s: cannot open", path);
        return -1;
    }
    if (fread(pre, 1, 8, f) != 8 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        snprintf(err, err_len, "%s: not a .npy file (bad magic)", path);
        goto fail;
    }
    if (pre[6] < 1 || pre[6] > 3 || pre[7] != 0) {
        snprintf(err, err_len, "%s: unsupported .npy format version %d.%d", path, pre[6], pre[7]);
        goto fail;
    }
    len_bytes = pre[6] == 1 ? 2 : 4;
    if (fread(pre + 8, 1, len_bytes, f) != len_bytes) {
        snprintf(err, err_len, "%s: truncated header", path);
        goto fail;
    }
    header_len = len_bytes == 2 ? (long)(pre[8] | (pre[9] << 8))
                                : (long)((unsigned long)pre[8] | ((unsigned long)pre[9] << 8) |
                                         ((unsigned long)pre[10] << 16) | ((unsigned long)pre[11] << 24));
    if (header_len < 1 || header_len > MAX_HEADER) {
        snprintf(err, err_len, "%s: header length %ld out of range", path, header_len);
        goto fail;
    }
    header = malloc((size_t)header_len);
    if (!header || fread(header, 1, (size_t)header_len, f) != (size_t)header_len) {
        snprintf(err, err_len, "%s: truncated header", path);
        goto fail;
    }
    if (parse_header(header, header + header_len, descr, sizeof descr, &fortran, out, msg, sizeof msg) != 0) {
        snprintf(err, err_len, "%s: %s", path, msg);
        goto fail;
    }
    if (strcmp(descr, "<f8") == 0)
        itemsize = 8;
    else if (strcmp(descr, "<f4") == 0)
        itemsize = 4;
    else if (strcmp(descr, "<f2") == 0)
        itemsize = 2;
    else {
        snprintf(err, err_len, "%s: dtype '%s' is not supported (little-endian '<f8', '<f4' or '<f2' only)", path,
                 descr);
        goto fail;
    }
    if (fortran) {
        snprintf(err, err_len, "%s: Fortran order is not supported (C order only)", path);
        goto fail;
    }
    out->count = 1;
    for (d = 0; d < out->ndim; d++) {
        if (out->shape[d] != 0 && out->count > MAX_ELEMENTS / out->shape[d]) {
            snprintf(err, err_len, "%s: too many elements", path);
            goto fail;
        }
        out->count *= out->shape[d];
    }
    /* Check the data size against the file size BEFORE allocating anything, so that
     * a header claiming a huge array cannot make us allocate it. */
    {
        long here = ftell(f), size;
        if (here < 0 || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, here, SEEK_SET) != 0) {
            snprintf(err, err_len, "%s: cannot determine the file size", path);
            goto fail;
        }
        if ((unsigned long long)(size - here) != (unsigned long long)out->count * itemsize) {
            snprintf(err, err_len, "%s: %s data: the header (%s, %lld values) needs %llu bytes, the file holds %ld",
                     path, (unsigned long long)(size - here) < (unsigned long long)out->count * itemsize
                     ? "truncated" : "trailing", descr, out->count,
                     (unsigned long long)out->count * itemsize, size - here);
            goto fail;
        }
    }
    raw = malloc((size_t)out->count * itemsize + 1);
    out->data = malloc((size_t)out->count * sizeof(double) + 1);
    if (!raw || !out->data) {
        snprintf(err, err_len, "%s: out of memory for %lld values", path, out->count);
        goto fail;
    }
    if (fread(raw, itemsize, (size_t)out->count, f) != (size_t)out->count) {
        snprintf(err, err_len, "%s: truncated data (%lld values expected)", path, out->count);
        goto fail;
    }
    if (fgetc(f) != EOF) {
        snprintf(err, err_len, "%s: trailing data after %lld values", path, out->count);
        goto fail;
    }
    for (i = 0; i < (size_t)out->count; i++)
        out->data[i] = itemsize == 8   ? decode_f8(raw + 8 * i)
                       : itemsize == 4 ? decode_f4(raw + 4 * i)
                                       : decode_f2(raw + 2 * i);
    free(raw);
    free(header);
    fclose(f);
    return 0;
fail:
    free(raw);
    free(header);
    npy_free(out);
    fclose(f);
    return -1;
}

int npy_write_f8(const char *path, const double *data, int ndim, const long long *shape,
                 char *err, unsigned long err_len)
{
    char header[512];
    unsigned char pre[10], bytes[8];
    int n, d, total;
    long long count = 1, i;
    FILE *f;
    /* The shape as Python writes a tuple: "()", "(5,)", "(2, 3)". */
    n = snprintf(header, sizeof header, "{'descr': '<f8', 'fortran_order': False, 'shape': (");
    for (d = 0; d < ndim; d++) {
        n += snprintf(header + n, sizeof header - (size_t)n, d == 0 ? "%lld" : ", %lld", shape[d]);
        count *= shape[d];
    }
    n += snprintf(header + n, sizeof header - (size_t)n, ndim == 1 ? ",), }" : "), }");
    /* Pad with spaces so that magic + version + length + header is a multiple of 64. */
    total = 10 + n + 1;
    while (total % 64 != 0) {
        header[n++] = ' ';
        total++;
    }
    header[n++] = '\n';
    memcpy(pre, "\x93NUMPY\x01\x00", 8);
    pre[8] = (unsigned char)(n & 0xff);
    pre[9] = (unsigned char)((n >> 8) & 0xff);
    f = fopen(path, "wb");
    if (!f) {
        snprintf(err, err_len, "%s: cannot create", path);
        return -1;
    }
    if (fwrite(pre, 1, 10, f) != 10 || fwrite(header, 1, (size_t)n, f) != (size_t)n)
        goto fail;
    for (i = 0; i < count; i++) {
        uint64_t bits;
        int k;
        memcpy(&bits, &data[i], sizeof bits);
        for (k = 0; k < 8; k++)
            bytes[k] = (unsigned char)(bits >> (8 * k));
        if (fwrite(bytes, 1, 8, f) != 8)
            goto fail;
    }
    if (fclose(f) != 0) {
        snprintf(err, err_len, "%s: write failed", path);
        return -1;
    }
    return 0;
fail:
    fclose(f);
    snprintf(err, err_len, "%s: write failed", path);
    return -1;
}

void npy_free(NpyArray *array)
{
    free(array->data);
    array->data = NULL;
}
