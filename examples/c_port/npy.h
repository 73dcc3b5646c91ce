/* A tiny reader and writer for NumPy .npy files (format version 1.0 to 3.0 read,
 * 1.0 written): only what the exec protocol needs. See docs/porting.md, section 8. */
#ifndef NPY_H
#define NPY_H

#define NPY_MAX_DIMS 8

typedef struct {
    int ndim;
    long long shape[NPY_MAX_DIMS];
    long long count;  /* product of shape */
    double *data;     /* count values, C order, converted to double */
} NpyArray;

/* Read a little-endian '<f8' or '<f4' C-order array into doubles. Anything else
 * (another dtype, big-endian, Fortran order, a malformed header, truncated or
 * trailing data) is refused: returns -1 with a message in err. */
int npy_read(const char *path, NpyArray *out, char *err, unsigned long err_len);

/* Write count = prod(shape) doubles as a version 1.0 '<f8' C-order .npy.
 * Returns 0, or -1 with a message in err. */
int npy_write_f8(const char *path, const double *data, int ndim, const long long *shape,
                 char *err, unsigned long err_len);

void npy_free(NpyArray *array);

#endif
