/*
 * fuzz_safetensors.c — the safetensors reader (src/io/safetensors.c).
 *
 * Input: a whole .safetensors file. Every tensor the reader accepts is looked up by name and
 * its first and last elements are read, so a layout check that let a view point outside the
 * mapping shows up as an ASan report, not as a silently wrong weight.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "io/safetensors.h"

/* Reads what a converter would read of one tensor. */
static void touch_tensor(const sdc_st_file *f, const sdc_tensor *t) {
    if (sdc_st_find(f, t->name) == NULL) sdc_fuzz_die("tensor '%s' listed but not found by name", t->name);
    if (t->nbytes) {
        volatile uint8_t sink = t->data[0] ^ t->data[t->nbytes - 1];
        (void)sink;
    }
    bool is_float = t->dtype == SDC_DT_F32 || t->dtype == SDC_DT_F16 || t->dtype == SDC_DT_BF16 || t->dtype == SDC_DT_F64;
    if (is_float && t->numel) {
        volatile float v = sdc_tensor_get_f32(t, 0) + sdc_tensor_get_f32(t, t->numel - 1);
        (void)v;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[4096];
    if (!path[0]) sdc_fuzz_path(path, sizeof path, "model.safetensors");
    sdc_fuzz_write(path, data, size);
    sdc_st_file *f;
    sdc_err err = {0};
    if (sdc_st_open(path, &f, &err) == SDC_OK) {
        for (size_t i = 0; i < sdc_st_count(f); i++) touch_tensor(f, sdc_st_at(f, i));
        sdc_st_find(f, "missing.weight");
        sdc_st_close(f);
    } else if (!err.msg[0] || strchr(err.msg, '\n')) {
        sdc_fuzz_die("an error must be one non-empty line: '%s'", err.msg);
    }
    return 0;
}
