/*
 * fuzz_package.c — the package reader end to end: Manifest.json, the model protobuf and the
 * blob records of weight.bin, as `sdcoreml inspect` (sdc_inspect_json) and the interpreter's
 * load (sdc_model_load: types, immediate and blob values, constexpr expansion of small
 * constants, names and op types) read them.
 *
 * Input: 3 parts cut at SDC_FUZZ_SEPARATOR — Manifest.json, model.mlmodel, weight.bin —
 * written into a .mlpackage folder (an empty part leaves the file out).
 */
#include "harness.h"

static char paths[3][4096];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    sdc_fuzz_package_init(NULL);
    sdc_fuzz_path(paths[0], sizeof paths[0], SDC_FUZZ_PKG_MANIFEST);
    sdc_fuzz_path(paths[1], sizeof paths[1], SDC_FUZZ_PKG_MODEL);
    sdc_fuzz_path(paths[2], sizeof paths[2], SDC_FUZZ_PKG_WEIGHTS);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sdc_fuzz_part parts[3];
    sdc_fuzz_split(data, size, parts, 3);
    for (int i = 0; i < 3; i++) sdc_fuzz_write_part(paths[i], parts[i]);
    sdc_fuzz_package_read();
    return 0;
}
