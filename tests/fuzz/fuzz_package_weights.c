/*
 * fuzz_package_weights.c — weight.bin alone: the input is the blob file of a valid package
 * ($SDC_FUZZ_PACKAGE) whose Manifest.json and model protobuf stay fixed, so the blob header,
 * records (sentinel, dtype code, size, data offset, padding bits) and the data that small
 * constants and constexpr tables decode are what varies.
 */
#include "harness.h"

static char weights_path[4096];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    sdc_fuzz_package_init("manifest,model");
    sdc_fuzz_path(weights_path, sizeof weights_path, SDC_FUZZ_PKG_WEIGHTS);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sdc_fuzz_write(weights_path, data, size);
    sdc_fuzz_package_read();
    return 0;
}
