/* package.h — the one reader of .mlpackage directories (untrusted input), shared by `inspect`
   and the interpreter: Manifest.json → root model → decoded protobuf, and weight files named
   by "@model_path/..." references (reading them: coreml/blob.h). */
#ifndef SDC_PACKAGE_H
#define SDC_PACKAGE_H

#include "common.h"
#include "coreml.pb-c.h"

typedef struct sdc_package {
    char model_path[4096]; /* <pkg>/Data/<path of the rootModelIdentifier item> */
    char model_dir[4096];  /* its directory, which "@model_path" names */
    Sdc__Coreml__Model *model;
} sdc_package;

/* Finds the root model through Manifest.json (refusing paths that leave the package), reads
   it (at most 2 GiB) and decodes it. Errors name the manifest or the model file. */
sdc_status sdc_package_open(const char *pkg, sdc_package *p, sdc_err *err);
void sdc_package_close(sdc_package *p);

/* The file a BlobFileValue's fileName ("@model_path/<relative path>") names. */
sdc_status sdc_package_blob_path(const sdc_package *p, const char *file_name, char *out, size_t size, sdc_err *err);

#endif
