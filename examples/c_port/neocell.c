/* NeoCell forward and backward, tile by tile, in plain C99 (see neocell.h).
 *
 * The operator (SPEC section 1): for every sample n and channel c,
 *
 *     y[n][c] = A_full_c  x[n][c]  B_full_c
 *
 * where A_full_c (H_out x H) and B_full_c (W x W_out) are block-diagonal copies of the
 * channel's small kernels A (h_out x h_in) and B (w_in x w_out) (SPEC section 3).
 * Nothing here builds those big matrices. Instead the code follows the patch view
 * of SPEC section 3: pad the plane with zeros, cut it into h_in x w_in tiles P, map
 * every tile to the h_out x w_out tile  A P B, and crop. Each tile is independent
 * of every other tile: on a GPU, one tile (or a few) per thread block, A and B in
 * shared memory; on an NPU, one tile per matrix-unit call.
 *
 * Everything is computed in double.
 */
#include "neocell.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------ */
/* SPEC section 2: the output-size rule                                           */
/* ------------------------------------------------------------------------------ */
static long long out_length(long long length, long long k_in, long long k_out)
{
    /* Same kernel size in and out: the size is kept, whatever the tiling.
     * Otherwise floor(length * k_out / k_in), in integers (no rounding up, ever):
     * a 2 -> 1 down-sampling of 9 rows gives 4 rows, not 5. */
    if (k_in == k_out)
        return length;
    return length * k_out / k_in;
}

void neocell_group_output_size(const GroupSpec *g, long long height, long long width,
                               long long *height_out, long long *width_out)
{
    *height_out = out_length(height, g->h_in, g->h_out);
    *width_out = out_length(width, g->w_in, g->w_out);
}

/* ------------------------------------------------------------------------------ */
/* SPEC section 4: shifted sub-groups                                             */
/* ------------------------------------------------------------------------------ */
/* A shifted axis (shift s > 0, kernel k) has (k - 1) / s + 1 sub-groups; sub-group j
 * uses the shift j * s, so shifts 0, s, 2s, ... up to the largest below k. */
static long long subgroups(long long k, long long shift)
{
    return shift == 0 ? 1 : (k - 1) / shift + 1;
}

/* Shift used by channel i (0-based, within its group) on one axis.
 * The group's channels are cut into n_sub consecutive sub-groups of
 * channels / n_sub channels (rounded DOWN); the remainder channels all join the
 * LAST sub-group. With fewer channels than sub-groups (size 0) every channel is
 * in the last sub-group. Example: 5 channels, kernel 4, s = 1: 4 sub-groups of 1,
 * shifts 0, 1, 2, 3, 3. The A and B axes are split independently. */
static long long channel_shift(long long i, long long channels, long long k, long long shift)
{
    long long n_sub = subgroups(k, shift);
    long long size = channels / n_sub;
    long long sub = size == 0 ? n_sub - 1 : i / size;
    if (sub > n_sub - 1)
        sub = n_sub - 1; /* the remainder channels */
    return sub * shift;
}

int neocell_check(const GroupSpec *groups, int n_groups, long long height, long long width,
                  long long *height_out, long long *width_out, char *err, unsigned long err_len)
{
    int g;
    if (n_groups < 1) {
        snprintf(err, err_len, "specs must hold at least one group");
        return -1;
    }
    if (height < 1 || width < 1) {
        snprintf(err, err_len, "input size %lldx%lld: H and W must be >= 1", height, width);
        return -1;
    }
    for (g = 0; g < n_groups; g++) {
        const GroupSpec *s = &groups[g];
        long long ho, wo;
        if (s->channels < 1 || s->h_in < 1 || s->h_out < 1 || s->w_in < 1 || s->w_out < 1) {
            snprintf(err, err_len, "group %d: channels and kernel sizes must be >= 1", g);
            return -1;
        }
        if (s->shift_a < 0 || s->shift_b < 0) {
            snprintf(err, err_len, "group %d: shifts must be >= 0", g);
            return -1;
        }
        /* A shift needs a square kernel on its axis and must be smaller than it. */
        if (s->shift_a > 0 && (s->h_in != s->h_out || s->shift_a >= s->h_out)) {
            snprintf(err, err_len, "group %d: shift_a=%lld needs a square A (h_in == h_out) larger than the shift, "
                     "got h_in=%lld h_out=%lld", g, s->shift_a, s->h_in, s->h_out);
            return -1;
        }
        if (s->shift_b > 0 && (s->w_in != s->w_out || s->shift_b >= s->w_out)) {
            snprintf(err, err_len, "group %d: shift_b=%lld needs a square B (w_in == w_out) larger than the shift, "
                     "got w_in=%lld w_out=%lld", g, s->shift_b, s->w_in, s->w_out);
            return -1;
        }
        /* SPEC section 4: the largest USED shift, (n_sub - 1) * s, may equal but not exceed the size. */
        if ((subgroups(s->h_out, s->shift_a) - 1) * s->shift_a > height) {
            snprintf(err, err_len, "group %d: largest used shift_a %lld exceeds the input height %lld", g,
                     (subgroups(s->h_out, s->shift_a) - 1) * s->shift_a, height);
            return -1;
        }
        if ((subgroups(s->w_out, s->shift_b) - 1) * s->shift_b > width) {
            snprintf(err, err_len, "group %d: largest used shift_b %lld exceeds the input width %lld", g,
                     (subgroups(s->w_out, s->shift_b) - 1) * s->shift_b, width);
            return -1;
        }
        if (height > LLONG_MAX / s->h_out || width > LLONG_MAX / s->w_out) {
            snprintf(err, err_len, "group %d: output size overflows", g);
            return -1;
        }
        neocell_group_output_size(s, height, width, &ho, &wo);
        if (g == 0) {
            *height_out = ho;
            *width_out = wo;
        } else if (ho != *height_out || wo != *width_out) {
            snprintf(err, err_len, "groups disagree on the output size for input %lldx%lld: group 0 gives "
                     "%lldx%lld, group %d gives %lldx%lld", height, width, *height_out, *width_out, g, ho, wo);
            return -1;
        }
    }
    if (*height_out < 1 || *width_out < 1) {
        snprintf(err, err_len, "output size would be %lldx%lld for input %lldx%lld: the input is too small "
                 "for the down-sampling kernel", *height_out, *width_out, height, width);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------ */
/* SPEC section 3: one axis of the patch view                                     */
/* ------------------------------------------------------------------------------ */
typedef struct {
    long long len, len_out;  /* input length (H or W) and output length (SPEC section 2) */
    long long k_in, k_out;   /* tile length in and out */
    long long front_in;      /* zeros put in front of x on this axis */
    long long front_out;     /* outputs dropped in front of y on this axis */
    long long tiles;         /* tiles along this axis */
} Axis;

static Axis make_axis(long long len, long long len_out, long long k_in, long long k_out, long long shift)
{
    Axis a;
    a.len = len;
    a.len_out = len_out;
    a.k_in = k_in;
    a.k_out = k_out;
    /* The wrapped corner. A shift s moves every block of the expanded matrix s rows
     * down and s columns right, and the top-left s x s corner receives the kernel's
     * BOTTOM-RIGHT s x s corner K[k-s..k-1][k-s..k-1] (SPEC section 3).
     * In the patch view that is one zero padding: put k - s zeros in front of x.
     * The first tile then holds k - s zeros followed by x's first s rows; its
     * output rows k-s..k-1 come from A's rows k-s..k-1 through A's columns
     * k-s..k-1 only (the other columns meet zeros): exactly the corner. Dropping
     * the first k - s outputs makes those rows the first s rows of y. Every later
     * tile is one block of the shifted diagonal. The same holds for B along the
     * width. (A shift needs k_in == k_out, so the two fronts are equal.) */
    a.front_in = shift > 0 ? k_in - shift : 0;
    a.front_out = shift > 0 ? k_out - shift : 0;
    /* Clipped tiles: enough tiles to cover front + len; the last one may run past the
     * end of x (its missing inputs are zeros) and past len_out (those outputs are not
     * stored) - the clipped last block of the expanded matrix. */
    a.tiles = (len + a.front_in + k_in - 1) / k_in;
    return a;
}

/* Position in x of row v of input tile t, or -1 when it lies in the zero padding. */
static long long in_pos(const Axis *a, long long t, long long v)
{
    long long p = t * a->k_in + v - a->front_in;
    return (p >= 0 && p < a->len) ? p : -1;
}

/* Position in y of row u of output tile t, or -1 when it is cropped away. */
static long long out_pos(const Axis *a, long long t, long long u)
{
    long long p = t * a->k_out + u - a->front_out;
    return (p >= 0 && p < a->len_out) ? p : -1;
}

/* Work space for one tile: P (h_in x w_in), Z = A P and dZ (h_out x w_in), G (h_out x w_out). */
typedef struct {
    double *p, *z, *dz, *g;
} Tile;

static int tile_alloc(Tile *t, const GroupSpec *groups, int n_groups)
{
    long long np = 1, nz = 1, ng = 1;
    int g;
    for (g = 0; g < n_groups; g++) {
        const GroupSpec *s = &groups[g];
        if (s->h_in * s->w_in > np) np = s->h_in * s->w_in;
        if (s->h_out * s->w_in > nz) nz = s->h_out * s->w_in;
        if (s->h_out * s->w_out > ng) ng = s->h_out * s->w_out;
    }
    t->p = malloc((size_t)np * sizeof(double));
    t->z = malloc((size_t)nz * sizeof(double));
    t->dz = malloc((size_t)nz * sizeof(double));
    t->g = malloc((size_t)ng * sizeof(double));
    return (t->p && t->z && t->dz && t->g) ? 0 : -1;
}

static void tile_free(Tile *t)
{
    free(t->p);
    free(t->z);
    free(t->dz);
    free(t->g);
}

/* P = the input tile (ti, tj) of the zero-padded plane xp (H x W). */
static void load_tile(double *p, const double *xp, const Axis *ra, const Axis *ca, long long ti, long long tj)
{
    long long v, q;
    for (v = 0; v < ra->k_in; v++) {
        long long r = in_pos(ra, ti, v);
        for (q = 0; q < ca->k_in; q++) {
            long long s = in_pos(ca, tj, q);
            p[v * ca->k_in + q] = (r >= 0 && s >= 0) ? xp[r * ca->len + s] : 0.0;
        }
    }
}

/* Z = A P: (h_out x h_in) (h_in x w_in). */
static void left_product(double *z, const double *a, const double *p, long long h_out, long long h_in,
                         long long w_in)
{
    long long u, v, q;
    for (u = 0; u < h_out; u++)
        for (q = 0; q < w_in; q++) {
            double sum = 0.0;
            for (v = 0; v < h_in; v++)
                sum += a[u * h_in + v] * p[v * w_in + q];
            z[u * w_in + q] = sum;
        }
}

/* Forward of one channel plane: yp (H_out x W_out) from xp (H x W). */
static void forward_plane(double *yp, const double *xp, const double *a, const double *b,
                          const Axis *ra, const Axis *ca, Tile *t)
{
    long long ti, tj, u, q, w;
    long long h_in = ra->k_in, h_out = ra->k_out, w_in = ca->k_in, w_out = ca->k_out;
    for (ti = 0; ti < ra->tiles; ti++)
        for (tj = 0; tj < ca->tiles; tj++) {
            load_tile(t->p, xp, ra, ca, ti, tj);
            left_product(t->z, a, t->p, h_out, h_in, w_in);       /* Z = A P */
            for (u = 0; u < h_out; u++) {                         /* Y_tile = Z B, cropped */
                long long r = out_pos(ra, ti, u);
                if (r < 0)
                    continue;
                for (w = 0; w < w_out; w++) {
                    long long s = out_pos(ca, tj, w);
                    double sum = 0.0;
                    if (s < 0)
                        continue;
                    for (q = 0; q < w_in; q++)
                        sum += t->z[u * w_in + q] * b[q * w_out + w];
                    yp[r * ca->len_out + s] = sum;
                }
            }
        }
}

/* Backward of one channel plane (SPEC section 5, per tile). With Z = A P and
 * Y_tile = Z B, and G the tile of grad_y (zeros where the forward cropped):
 *     dB += Z^T G        dZ = G B^T        dA += dZ P^T        dP = A^T dZ
 * dP is written back into grad_x where the tile covers x (zeros of the padding have
 * no gradient). Summing dA and dB over all tiles and samples is what makes every
 * block AND the wrapped corner contribute to the kernel gradient. */
static void backward_plane(double *gxp, double *ga, double *gb, const double *gyp, const double *xp,
                           const double *a, const double *b, const Axis *ra, const Axis *ca, Tile *t)
{
    long long ti, tj, u, v, q, w;
    long long h_in = ra->k_in, h_out = ra->k_out, w_in = ca->k_in, w_out = ca->k_out;
    for (ti = 0; ti < ra->tiles; ti++)
        for (tj = 0; tj < ca->tiles; tj++) {
            load_tile(t->p, xp, ra, ca, ti, tj);
            for (u = 0; u < h_out; u++) {                         /* G: the adjoint of the crop */
                long long r = out_pos(ra, ti, u);
                for (w = 0; w < w_out; w++) {
                    long long s = out_pos(ca, tj, w);
                    t->g[u * w_out + w] = (r >= 0 && s >= 0) ? gyp[r * ca->len_out + s] : 0.0;
                }
            }
            left_product(t->z, a, t->p, h_out, h_in, w_in);       /* Z = A P (recomputed) */
            for (q = 0; q < w_in; q++)                            /* dB += Z^T G */
                for (w = 0; w < w_out; w++) {
                    double sum = 0.0;
                    for (u = 0; u < h_out; u++)
                        sum += t->z[u * w_in + q] * t->g[u * w_out + w];
                    gb[q * w_out + w] += sum;
                }
            for (u = 0; u < h_out; u++)                           /* dZ = G B^T */
                for (q = 0; q < w_in; q++) {
                    double sum = 0.0;
                    for (w = 0; w < w_out; w++)
                        sum += t->g[u * w_out + w] * b[q * w_out + w];
                    t->dz[u * w_in + q] = sum;
                }
            for (u = 0; u < h_out; u++)                           /* dA += dZ P^T */
                for (v = 0; v < h_in; v++) {
                    double sum = 0.0;
                    for (q = 0; q < w_in; q++)
                        sum += t->dz[u * w_in + q] * t->p[v * w_in + q];
                    ga[u * h_in + v] += sum;
                }
            for (v = 0; v < h_in; v++) {                          /* dP = A^T dZ, into grad_x */
                long long r = in_pos(ra, ti, v);
                if (r < 0)
                    continue;
                for (q = 0; q < w_in; q++) {
                    long long s = in_pos(ca, tj, q);
                    double sum = 0.0;
                    if (s < 0)
                        continue;
                    for (u = 0; u < h_out; u++)
                        sum += a[u * h_in + v] * t->dz[u * w_in + q];
                    gxp[r * ca->len + s] += sum;
                }
            }
        }
}

/* ------------------------------------------------------------------------------ */
/* the layer: groups, channels, samples                                           */
/* ------------------------------------------------------------------------------ */
int neocell_forward(const double *x, long long n, long long c, long long height, long long width,
                    const double *const *weights_a, const double *const *weights_b,
                    const GroupSpec *groups, int n_groups, double *y,
                    long long height_out, long long width_out)
{
    Tile t;
    int g;
    long long first = 0; /* first channel of group g in x and y */
    if (tile_alloc(&t, groups, n_groups) != 0) {
        tile_free(&t);
        return -1;
    }
    for (g = 0; g < n_groups; g++) {
        const GroupSpec *s = &groups[g];
        long long i, k;
        for (i = 0; i < s->channels; i++) {
            /* SPEC section 4: this channel's shifts, then its padding geometry. */
            long long sa = channel_shift(i, s->channels, s->h_out, s->shift_a);
            long long sb = channel_shift(i, s->channels, s->w_out, s->shift_b);
            Axis ra = make_axis(height, height_out, s->h_in, s->h_out, sa);
            Axis ca = make_axis(width, width_out, s->w_in, s->w_out, sb);
            const double *a = weights_a[g] + i * s->h_out * s->h_in;
            const double *b = weights_b[g] + i * s->w_in * s->w_out;
            for (k = 0; k < n; k++) {
                long long plane = k * c + first + i;
                forward_plane(y + plane * height_out * width_out, x + plane * height * width, a, b, &ra, &ca, &t);
            }
        }
        first += s->channels;
    }
    tile_free(&t);
    return 0;
}

int neocell_backward(const double *grad_y, const double *x, long long n, long long c,
                     long long height, long long width,
                     const double *const *weights_a, const double *const *weights_b,
                     const GroupSpec *groups, int n_groups,
                     long long height_out, long long width_out,
                     double *grad_x, double *const *grads_a, double *const *grads_b)
{
    Tile t;
    int g;
    long long first = 0;
    if (tile_alloc(&t, groups, n_groups) != 0) {
        tile_free(&t);
        return -1;
    }
    memset(grad_x, 0, (size_t)(n * c * height * width) * sizeof(double));
    for (g = 0; g < n_groups; g++) {
        const GroupSpec *s = &groups[g];
        long long i, k;
        memset(grads_a[g], 0, (size_t)(s->channels * s->h_out * s->h_in) * sizeof(double));
        memset(grads_b[g], 0, (size_t)(s->channels * s->w_in * s->w_out) * sizeof(double));
        for (i = 0; i < s->channels; i++) {
            long long sa = channel_shift(i, s->channels, s->h_out, s->shift_a);
            long long sb = channel_shift(i, s->channels, s->w_out, s->shift_b);
            Axis ra = make_axis(height, height_out, s->h_in, s->h_out, sa);
            Axis ca = make_axis(width, width_out, s->w_in, s->w_out, sb);
            long long ka = i * s->h_out * s->h_in, kb = i * s->w_in * s->w_out;
            for (k = 0; k < n; k++) {
                long long plane = k * c + first + i;
                backward_plane(grad_x + plane * height * width, grads_a[g] + ka, grads_b[g] + kb,
                               grad_y + plane * height_out * width_out, x + plane * height * width,
                               weights_a[g] + ka, weights_b[g] + kb, &ra, &ca, &t);
            }
        }
        first += s->channels;
    }
    tile_free(&t);
    return 0;
}
