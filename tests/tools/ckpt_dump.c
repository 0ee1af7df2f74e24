/*
 * ckpt_dump.c — test-only: lists what io/ckpt.c reads from a PyTorch checkpoint, one tensor a
 * line: name, dtype, shape and the SHA-256 of its bytes, tab-separated, for
 * tests/python/test_ckpt.py to compare with torch.load. On error: the reader's one-line message
 * on stderr and exit status 1. Usage: ckpt_dump FILE
 */
#include <stdio.h>

#include "hub/sha256.h"
#include "io/ckpt.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: ckpt_dump FILE\n");
        return 2;
    }
    sdc_st_file *f;
    sdc_err err = {0};
    if (sdc_ckpt_open(argv[1], &f, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    for (size_t i = 0; i < sdc_st_count(f); i++) {
        const sdc_tensor *t = sdc_st_at(f, i);
        if (sdc_st_find(f, t->name) != t) {
            fprintf(stderr, "tensor '%s' not found by name\n", t->name);
            return 3;
        }
        sdc_sha256 h;
        char hex[65], shape[256];
        sdc_sha256_init(&h);
        sdc_sha256_update(&h, t->data, t->nbytes);
        sdc_sha256_hex(&h, hex);
        printf("%s\t%s\t%s\t%s\n", t->name, sdc_dtype_name(t->dtype), sdc_shape_str(t->shape, t->rank, shape, sizeof shape),
               hex);
    }
    sdc_st_close(f);
    return 0;
}
