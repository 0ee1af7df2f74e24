/*
 * fuzz_ckpt.c — the PyTorch checkpoint reader (src/io/ckpt.c with zip.c and pickle.c).
 *
 * Input: a whole .ckpt file, zip or legacy format (the seeds are small torch.save-like files of
 * both; the legacy ones put the pickles at the front, where length-changing mutations reach
 * the pickle VM). Every tensor the reader accepts is looked up by name and its first and last
 * bytes and elements are read, so a bounds check that let a view point outside the mapping
 * shows up as an ASan report.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "io/ckpt.h"

static void touch_tensor(const sdc_st_file *f, const sdc_tensor *t) {
    if (sdc_st_find(f, t->name) != t) sdc_fuzz_die("tensor '%s' listed but not found by name", t->name);
    if (t->nbytes != t->numel * sdc_dtype_size(t->dtype)) sdc_fuzz_die("tensor '%s': nbytes disagrees", t->name);
    if (t->nbytes) {
        volatile uint8_t sink = t->data[0] ^ t->data[t->nbytes - 1];
        (void)sink;
    }
    if (sdc_dtype_is_float(t->dtype) && t->numel) {
        volatile float v = sdc_tensor_get_f32(t, 0) + sdc_tensor_get_f32(t, t->numel - 1);
        (void)v;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[4096];
    if (!path[0]) sdc_fuzz_path(path, sizeof path, "model.ckpt");
    sdc_fuzz_write(path, data, size);
    sdc_st_file *f;
    sdc_err err = {0};
    if (sdc_ckpt_open(path, &f, &err) == SDC_OK) {
        for (size_t i = 0; i < sdc_st_count(f); i++) touch_tensor(f, sdc_st_at(f, i));
        sdc_st_close(f);
    } else if (!err.msg[0] || strchr(err.msg, '\n')) {
        sdc_fuzz_die("an error must be one non-empty line: '%s'", err.msg);
    }
    return 0;
}
