/*
 * npy.h — NumPy .npy files: the format Python users already have for model inputs and outputs.
 *
 * Format (numpy/lib/format.py): "\x93NUMPY", major, minor; a little-endian header length
 * (u16 for 1.0, u32 for 2.0 and 3.0); an ASCII (3.0: UTF-8) Python dict literal
 * {'descr': '<f4', 'fortran_order': False, 'shape': (1, 77), } padded with spaces and ended by
 * '\n' so the data starts at a multiple of 64; then the raw elements in C order.
 * Accepted dtypes: <f4, <f2, <i4, and <f8 (NumPy's default) read as float32 ('|' or '=' byte order marks are not accepted: we only write
 * and read little-endian). Every header byte is untrusted and checked.
 */
#ifndef SDC_IO_NPY_H
#define SDC_IO_NPY_H

#include "common.h"

/* Reads `path` into *out (name NULL, data malloc'd). */
sdc_status sdc_npy_read_file(const char *path, sdc_ndarray *out, bool *was_f64, sdc_err *err);
/* Writes version 1.0 (2.0 if the header needs it) to a temporary file renamed to `path`. */
sdc_status sdc_npy_write_file(const char *path, const sdc_ndarray *a, sdc_err *err);

#endif
