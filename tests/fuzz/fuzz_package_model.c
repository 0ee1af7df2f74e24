/*
 * fuzz_package_model.c — the model protobuf alone: the input is model.mlmodel, with the
 * Manifest.json and weight.bin of a valid package ($SDC_FUZZ_PACKAGE) fixed, so every
 * mutation lands in the program (types, values, blob offsets, ops) and none is spent
 * breaking the manifest or the part separators.
 */
#include "harness.h"

static char model_path[4096];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    sdc_fuzz_package_init("manifest,weights");
    sdc_fuzz_path(model_path, sizeof model_path, SDC_FUZZ_PKG_MODEL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sdc_fuzz_write(model_path, data, size);
    sdc_fuzz_package_read();
    return 0;
}
