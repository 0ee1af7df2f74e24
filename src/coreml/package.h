/* package.h — reading an .mlpackage's Manifest.json and model file (untrusted input). */
#ifndef SDC_PACKAGE_H
#define SDC_PACKAGE_H

#include "common.h"

/* "<pkg>/Data/<path of the rootModelIdentifier item>", refusing paths that leave the package. */
sdc_status sdc_package_root_model(const char *pkg, char *out, size_t size, sdc_err *err);
/* The whole model file (at most 2 GiB) into a malloc'd buffer. */
sdc_status sdc_package_read_model(const char *path, uint8_t **out, size_t *n, sdc_err *err);

#endif
