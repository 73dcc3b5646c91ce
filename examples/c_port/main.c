/* neocell_port IN_DIR OUT_DIR: a NeoCell port speaking the exec protocol of
 * neocell_ref (docs/porting.md, section 8).
 *
 * IN_DIR holds case.json and one .npy per input (x, weight_a_G, weight_b_G and, when
 * gradients are asked for, grad_y); OUT_DIR is empty. The port writes y.npy and, when
 * case.json's "outputs" lists them, grad_x.npy, grad_weight_a_G.npy, grad_weight_b_G.npy
 * (all '<f8'). Exit status: 0 on success; 2 when the input is refused (a message on
 * stderr says what and where); 1 when the computation cannot be done (out of memory).
 *
 * The operator itself is in neocell.c; this file reads, validates and writes.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "neocell.h"
#include "npy.h"

#define MAX_GROUPS 4096
#define MAX_CASE_JSON (1L << 20)
#define MAX_SPEC_VALUE 2147483647LL

static const char *in_dir, *out_dir;

static void die(int status, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "neocell_port: error: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    exit(status);
}

static void join(char *buf, size_t len, const char *dir, const char *name)
{
    if ((size_t)snprintf(buf, len, "%s/%s", dir, name) >= len)
        die(2, "path %s/%s is too long", dir, name);
}

/* ------------------------------------------------------------------------------ */
/* case.json                                                                      */
/* ------------------------------------------------------------------------------ */
static char *read_text(const char *path, unsigned long *len)
{
    FILE *f = fopen(path, "rb");
    char *text;
    size_t n;
    if (!f)
        die(2, "%s: cannot open", path);
    text = malloc(MAX_CASE_JSON + 1);
    if (!text)
        die(1, "out of memory");
    n = fread(text, 1, MAX_CASE_JSON + 1, f);
    fclose(f);
    if (n > MAX_CASE_JSON)
        die(2, "%s: larger than %ld bytes", path, MAX_CASE_JSON);
    *len = (unsigned long)n;
    return text;
}

static const JsonValue *need(const JsonValue *obj, const char *key, JsonType type)
{
    static const char *names[] = {"an object", "a list", "a string", "an integer"};
    const JsonValue *v = json_get(obj, key);
    if (!v)
        die(2, "case.json: no \"%s\"", key);
    if (v->type != type)
        die(2, "case.json: \"%s\" must be %s", key, names[type]);
    return v;
}

/* One group dict in any official form (SPEC section 2):
 *   {"kernel": k, "channels": c}                                  k x k kernels
 *   {"kernel_a": ka, "kernel_b": kb, "channels": c}               A ka x ka, B kb x kb
 *   {"h_in":.., "h_out":.., "w_in":.., "w_out":.., "channels": c}  A h_out x h_in, B w_in x w_out
 * each with an optional "shift" (both axes) or both "shift_a" and "shift_b". */
static GroupSpec parse_group(const JsonValue *obj, int index)
{
    static const char *known[] = {"channels", "kernel", "kernel_a", "kernel_b", "h_in", "h_out",
                                  "w_in", "w_out", "shift", "shift_a", "shift_b"};
    long long value[11];
    int present[11] = {0}, i, k, forms;
    GroupSpec g;
    if (obj->type != JSON_OBJECT)
        die(2, "case.json: specs[%d] must be an object", index);
    for (i = 0; i < obj->count; i++) {
        for (k = 0; k < 11 && strcmp(obj->keys[i], known[k]) != 0; k++)
            ;
        if (k == 11)
            die(2, "case.json: specs[%d]: unknown key \"%s\"", index, obj->keys[i]);
        if (obj->items[i].type != JSON_INT)
            die(2, "case.json: specs[%d][\"%s\"] must be an integer", index, known[k]);
        value[k] = obj->items[i].integer;
        present[k] = 1;
        if (value[k] < (k >= 8 ? 0 : 1) || value[k] > MAX_SPEC_VALUE)
            die(2, "case.json: specs[%d][\"%s\"] = %lld is out of range", index, known[k], value[k]);
    }
    if (!present[0])
        die(2, "case.json: specs[%d] has no \"channels\"", index);
    forms = present[1] + (present[2] || present[3]) + (present[4] || present[5] || present[6] || present[7]);
    if (forms != 1)
        die(2, "case.json: specs[%d] must give exactly one size form: kernel, kernel_a/kernel_b or "
               "h_in/h_out/w_in/w_out", index);
    g.channels = value[0];
    if (present[1]) {
        g.h_in = g.h_out = g.w_in = g.w_out = value[1];
    } else if (present[2] || present[3]) {
        if (!present[2] || !present[3])
            die(2, "case.json: specs[%d] needs both kernel_a and kernel_b", index);
        g.h_in = g.h_out = value[2];
        g.w_in = g.w_out = value[3];
    } else {
        if (!(present[4] && present[5] && present[6] && present[7]))
            die(2, "case.json: specs[%d] needs all of h_in, h_out, w_in, w_out", index);
        g.h_in = value[4];
        g.h_out = value[5];
        g.w_in = value[6];
        g.w_out = value[7];
    }
    if (present[8] && (present[9] || present[10]))
        die(2, "case.json: specs[%d] gives both shift and shift_a/shift_b", index);
    if (present[9] != present[10])
        die(2, "case.json: specs[%d] gives one of shift_a/shift_b without the other", index);
    g.shift_a = present[8] ? value[8] : present[9] ? value[9] : 0;
    g.shift_b = present[8] ? value[8] : present[10] ? value[10] : 0;
    return g;
}

/* ------------------------------------------------------------------------------ */
/* inputs and outputs                                                             */
/* ------------------------------------------------------------------------------ */
static void read_input(const char *name, NpyArray *a, int ndim, const long long *shape)
{
    char path[4096], file[64], err[512];
    int d;
    snprintf(file, sizeof file, "%s.npy", name);
    join(path, sizeof path, in_dir, file);
    if (npy_read(path, a, err, sizeof err) != 0)
        die(2, "input %s: %s", name, err);
    if (!shape)
        return;
    for (d = 0; d < ndim && a->ndim == ndim && a->shape[d] == shape[d]; d++)
        ;
    if (a->ndim != ndim || d != ndim) {
        char want[200];
        int n = 0;
        for (d = 0; d < ndim; d++)
            n += snprintf(want + n, sizeof want - (size_t)n, d ? ", %lld" : "%lld", shape[d]);
        die(2, "input %s has the wrong shape; expected (%s)", name, want);
    }
}

static void write_output(const char *name, const double *data, int ndim, const long long *shape)
{
    char path[4096], file[64], err[512];
    snprintf(file, sizeof file, "%s.npy", name);
    join(path, sizeof path, out_dir, file);
    if (npy_write_f8(path, data, ndim, shape, err, sizeof err) != 0)
        die(1, "output %s: %s", name, err);
}

/* "outputs" must list exactly the names the mode produces, each with its shape. */
static void check_output(const JsonValue *outputs, const char *name, int ndim, const long long *shape)
{
    const JsonValue *v = json_get(outputs, name);
    int d;
    if (!v)
        die(2, "case.json: \"outputs\" lacks \"%s\"", name);
    if (v->type != JSON_ARRAY || v->count != ndim)
        die(2, "case.json: outputs[\"%s\"] must be a list of %d integers", name, ndim);
    for (d = 0; d < ndim; d++)
        if (v->items[d].type != JSON_INT || v->items[d].integer != shape[d])
            die(2, "case.json: outputs[\"%s\"] is not the shape this port computes (dimension %d: %lld)",
                name, d, shape[d]);
}

static int listed(const JsonValue *list, const char *name)
{
    int i;
    for (i = 0; i < list->count; i++)
        if (list->items[i].type == JSON_STRING && strcmp(list->items[i].string, name) == 0)
            return 1;
    return 0;
}

/* a * b for non-negative sizes, refusing a product that does not fit. */
static long long mul(long long a, long long b)
{
    if (a != 0 && b > LLONG_MAX / a)
        die(2, "array size overflows");
    return a * b;
}

static size_t checked_size(long long count)
{
    if (count < 0 || (unsigned long long)count > (unsigned long long)((size_t)-1 / sizeof(double)))
        die(1, "array too large");
    return (size_t)count * sizeof(double) + 1;
}

int main(int argc, char **argv)
{
    static const char *top_keys[] = {"protocol", "op", "case", "dtype", "specs", "inputs", "outputs"};
    char path[4096], err[512], name[64];
    unsigned long len;
    char *text;
    JsonValue doc;
    const JsonValue *specs, *inputs, *outputs;
    GroupSpec *groups;
    int n_groups, g, i, k, backward;
    long long channels = 0, n, c, h, w, h_out, w_out, yshape[4];
    NpyArray x, gy, *wa, *wb;
    const double **pa, **pb;
    double *y, *gx = NULL, **ga = NULL, **gb = NULL;

    if (argc != 3)
        die(2, "usage: neocell_port IN_DIR OUT_DIR");
    in_dir = argv[1];
    out_dir = argv[2];

    /* case.json: the exec protocol, version 1, operation "neocell". */
    join(path, sizeof path, in_dir, "case.json");
    text = read_text(path, &len);
    if (json_parse(text, len, &doc, err, sizeof err) != 0)
        die(2, "%s", err);
    free(text);
    if (doc.type != JSON_OBJECT)
        die(2, "case.json must hold an object");
    for (i = 0; i < doc.count; i++) {
        for (k = 0; k < 7 && strcmp(doc.keys[i], top_keys[k]) != 0; k++)
            ;
        if (k == 7)
            die(2, "case.json: unknown key \"%s\" (protocol version 1 has protocol, op, case, dtype, "
                   "specs, inputs, outputs)", doc.keys[i]);
    }
    if (need(&doc, "protocol", JSON_INT)->integer != 1)
        die(2, "case.json: protocol %lld is not supported (this port speaks version 1)",
            json_get(&doc, "protocol")->integer);
    if (strcmp(need(&doc, "op", JSON_STRING)->string, "neocell") != 0)
        die(2, "case.json: op \"%s\" is not supported (this port computes \"neocell\")",
            json_get(&doc, "op")->string);
    need(&doc, "case", JSON_STRING);
    need(&doc, "dtype", JSON_STRING);
    specs = need(&doc, "specs", JSON_ARRAY);
    inputs = need(&doc, "inputs", JSON_ARRAY);
    outputs = need(&doc, "outputs", JSON_OBJECT);

    n_groups = specs->count;
    if (n_groups < 1 || n_groups > MAX_GROUPS)
        die(2, "case.json: specs must hold 1 to %d groups, got %d", MAX_GROUPS, n_groups);
    groups = malloc((size_t)n_groups * sizeof *groups);
    wa = calloc((size_t)n_groups, sizeof *wa);
    wb = calloc((size_t)n_groups, sizeof *wb);
    pa = calloc((size_t)n_groups, sizeof *pa);
    pb = calloc((size_t)n_groups, sizeof *pb);
    if (!groups || !wa || !wb || !pa || !pb)
        die(1, "out of memory");
    for (g = 0; g < n_groups; g++) {
        groups[g] = parse_group(&specs->items[g], g);
        channels += groups[g].channels;
    }

    /* Mode: gradients are computed when "outputs" asks for grad_x (then it must ask
     * for every gradient); otherwise forward only (y alone). */
    backward = json_get(outputs, "grad_x") != NULL;
    if (outputs->count != (backward ? 2 + 2 * n_groups : 1))
        die(2, "case.json: \"outputs\" must be exactly y, or y, grad_x and every grad_weight_a_G, "
               "grad_weight_b_G");
    if (inputs->count != (backward ? 2 : 1) + 2 * n_groups || !listed(inputs, "x") ||
        listed(inputs, "grad_y") != backward)
        die(2, "case.json: \"inputs\" must be exactly x, weight_a_G, weight_b_G%s", backward ? ", grad_y" : "");
    for (g = 0; g < n_groups; g++) {
        snprintf(name, sizeof name, "weight_a_%d", g);
        if (!listed(inputs, name))
            die(2, "case.json: \"inputs\" lacks %s", name);
        snprintf(name, sizeof name, "weight_b_%d", g);
        if (!listed(inputs, name))
            die(2, "case.json: \"inputs\" lacks %s", name);
    }

    /* x: (N, C, H, W), C the sum of the groups' channels; sizes checked (SPEC sections 2, 4). */
    read_input("x", &x, 4, NULL);
    if (x.ndim != 4)
        die(2, "input x must be 4-D (N, C, H, W), got %d dimensions", x.ndim);
    n = x.shape[0];
    c = x.shape[1];
    h = x.shape[2];
    w = x.shape[3];
    if (n < 1)
        die(2, "input x holds no sample");
    if (c != channels)
        die(2, "input x has %lld channels but the groups' channels sum to %lld", c, channels);
    if (neocell_check(groups, n_groups, h, w, &h_out, &w_out, err, sizeof err) != 0)
        die(2, "%s", err);
    for (g = 0; g < n_groups; g++) {
        long long sa[3], sb[3];
        sa[0] = sb[0] = groups[g].channels;
        sa[1] = groups[g].h_out;
        sa[2] = groups[g].h_in;
        sb[1] = groups[g].w_in;
        sb[2] = groups[g].w_out;
        snprintf(name, sizeof name, "weight_a_%d", g);
        read_input(name, &wa[g], 3, sa);
        snprintf(name, sizeof name, "weight_b_%d", g);
        read_input(name, &wb[g], 3, sb);
        pa[g] = wa[g].data;
        pb[g] = wb[g].data;
    }
    yshape[0] = n;
    yshape[1] = c;
    yshape[2] = h_out;
    yshape[3] = w_out;
    check_output(outputs, "y", 4, yshape);
    if (backward) {
        read_input("grad_y", &gy, 4, yshape);
        check_output(outputs, "grad_x", 4, x.shape);
        ga = calloc((size_t)n_groups, sizeof *ga);
        gb = calloc((size_t)n_groups, sizeof *gb);
        if (!ga || !gb)
            die(1, "out of memory");
        for (g = 0; g < n_groups; g++) {
            snprintf(name, sizeof name, "grad_weight_a_%d", g);
            check_output(outputs, name, 3, wa[g].shape);
            snprintf(name, sizeof name, "grad_weight_b_%d", g);
            check_output(outputs, name, 3, wb[g].shape);
            ga[g] = malloc(checked_size(wa[g].count));
            gb[g] = malloc(checked_size(wb[g].count));
            if (!ga[g] || !gb[g])
                die(1, "out of memory");
        }
    }

    /* The computation, then the outputs. */
    y = malloc(checked_size(mul(mul(n, c), mul(h_out, w_out))));
    if (!y || neocell_forward(x.data, n, c, h, w, pa, pb, groups, n_groups, y, h_out, w_out) != 0)
        die(1, "out of memory");
    write_output("y", y, 4, yshape);
    if (backward) {
        gx = malloc(checked_size(x.count));
        if (!gx || neocell_backward(gy.data, x.data, n, c, h, w, pa, pb, groups, n_groups, h_out, w_out,
                                    gx, ga, gb) != 0)
            die(1, "out of memory");
        write_output("grad_x", gx, 4, x.shape);
        for (g = 0; g < n_groups; g++) {
            snprintf(name, sizeof name, "grad_weight_a_%d", g);
            write_output(name, ga[g], 3, wa[g].shape);
            snprintf(name, sizeof name, "grad_weight_b_%d", g);
            write_output(name, gb[g], 3, wb[g].shape);
        }
    }
    free(y);
    free(gx);
    for (g = 0; g < n_groups; g++) {
        npy_free(&wa[g]);
        npy_free(&wb[g]);
        if (backward) {
            free(ga[g]);
            free(gb[g]);
        }
    }
    if (backward)
        npy_free(&gy);
    npy_free(&x);
    free(ga);
    free(gb);
    free(wa);
    free(wb);
    free((void *)pa);
    free((void *)pb);
    free(groups);
    json_free(&doc);
    return 0;
}
