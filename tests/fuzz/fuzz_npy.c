/*
 * fuzz_npy.c — the .npy reader (sdc_npy_read, src/io/npy.c), whole file as input.
 *
 * An accepted array's data must hold exactly numel × itemsize bytes: its last byte is read.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "sdcoreml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[4096];
    if (!path[0]) sdc_fuzz_path(path, sizeof path, "array.npy");
    sdc_fuzz_write(path, data, size);
    sdc_ndarray a;
    char err[1024];
    if (sdc_npy_read(path, &a, err, sizeof err) == SDC_OK) {
        size_t nbytes = sdc_ndarray_numel(&a) * (a.dtype == SDC_ND_F16 ? 2 : 4);
        if (nbytes) {
            volatile uint8_t sink = ((const uint8_t *)a.data)[nbytes - 1];
            (void)sink;
        }
        free(a.data);
    } else if (!err[0] || strchr(err, '\n')) {
        sdc_fuzz_die("an error must be one non-empty line: '%s'", err);
    }
    return 0;
}
