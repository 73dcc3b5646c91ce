/* NeoCell forward and backward in plain C99: the operator, nothing else.
 *
 * This header and neocell.c are the part to read when porting NeoCell to CUDA, an
 * NPU or any other target; main.c, npy.c and json.c only move data in and out
 * (the exec protocol of docs/porting.md, section 8).
 *
 * Layouts (all C order, all double):
 *   x          [N][C][H][W]
 *   y          [N][C][H_out][W_out]
 *   weight_a_g [channels_g][h_out][h_in]    the left kernel A of each channel
 *   weight_b_g [channels_g][w_in][w_out]    the right kernel B of each channel
 * The channels of group g follow those of groups 0..g-1 in x and y.
 */
#ifndef NEOCELL_H
#define NEOCELL_H

/* One channel group (SPEC section 2), already validated by neocell_check. */
typedef struct {
    long long channels;
    long long h_in, h_out;   /* A is h_out x h_in: h_in rows of a tile become h_out */
    long long w_in, w_out;   /* B is w_in x w_out */
    long long shift_a;       /* block shift s of A (0 = none), SPEC section 4 */
    long long shift_b;       /* block shift s of B */
} GroupSpec;

/* Output size of one group for an H x W input (SPEC section 2): H_out = H when
 * h_in == h_out, else floor(H * h_out / h_in); likewise for the width. */
void neocell_group_output_size(const GroupSpec *g, long long height, long long width,
                               long long *height_out, long long *width_out);

/* Validate the groups against an H x W input: kernel sizes, shifts (square kernel,
 * smaller than the kernel, largest used shift <= the size), one common output size
 * of at least 1 x 1. On success returns 0 and sets *height_out, *width_out; on
 * failure returns -1 with a message in err. */
int neocell_check(const GroupSpec *groups, int n_groups, long long height, long long width,
                  long long *height_out, long long *width_out, char *err, unsigned long err_len);

/* y = per channel c:  A_full_c x[n][c] B_full_c  (SPEC section 1), computed tile by
 * tile (SPEC section 3). weights_a[g] and weights_b[g] point to group g's kernels.
 * Returns 0, or -1 if out of memory. */
int neocell_forward(const double *x, long long n, long long c, long long height, long long width,
                    const double *const *weights_a, const double *const *weights_b,
                    const GroupSpec *groups, int n_groups, double *y,
                    long long height_out, long long width_out);

/* The backward pass (SPEC section 5): from grad_y [N][C][H_out][W_out] compute
 * grad_x [N][C][H][W] and every kernel gradient, shaped like the kernels.
 * Every output is overwritten. Returns 0, or -1 if out of memory. */
int neocell_backward(const double *grad_y, const double *x, long long n, long long c,
                     long long height, long long width,
                     const double *const *weights_a, const double *const *weights_b,
                     const GroupSpec *groups, int n_groups,
                     long long height_out, long long width_out,
                     double *grad_x, double *const *grads_a, double *const *grads_b);

#endif
