/*
 * png.h — PNG files through libpng: the pipeline's output image, and the input images of
 * image-to-image and ControlNet.
 *
 * Built without libpng (SDCOREML_PNG=OFF, or auto without Debian's libpng-dev), both calls
 * fail with SDC_E_UNSUPPORTED: "built without PNG support".
 */
#ifndef SDC_GENERATE_PNG_H
#define SDC_GENERATE_PNG_H

#include "common.h"

/* The largest width or height either call accepts, and the largest pixel count read, so a
   hostile header cannot ask for gigabytes (a 16384 x 16384 RGB8 image is 768 MiB). */
#define SDC_PNG_MAX_SIDE 16384
#define SDC_PNG_MAX_PIXELS (64u << 20)

/* Writes an 8-bit RGB image (h rows of w pixels, 3 bytes each, no padding) to `path`: built
   under a temporary name beside it, fsynced and renamed into place, so a failed write leaves
   no file. */
sdc_status sdc_png_write(const char *path, int w, int h, const uint8_t *rgb, sdc_err *err);

/* Reads any PNG (gray, gray+alpha, RGB, RGBA, palette; 1 to 16 bits) as 8-bit RGB: alpha is
   dropped (not composited, as PIL's convert("RGB") does), 16-bit samples keep their high byte
   (as libpng's strip_16: PIL rounds instead — the difference is at most 1), gray is copied
   into the three channels. *rgb is sdc_malloc'd (free with sdc_free). Malformed or truncated
   files and images over the limits above fail with one line naming the file. */
sdc_status sdc_png_read(const char *path, int *w, int *h, uint8_t **rgb, sdc_err *err);

#endif
