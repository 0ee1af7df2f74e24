/*
 * sha256.h — SHA-256 (FIPS 180-4), streamed, to verify downloaded LFS files: the Hub names an
 * LFS file's blob by the SHA-256 of its bytes (X-Linked-Etag), so a download is checked
 * against it before it becomes a blob of the cache.
 */
#ifndef SDC_HUB_SHA256_H
#define SDC_HUB_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct sdc_sha256 {
    uint32_t h[8];
    uint64_t length;  /* bytes hashed so far */
    uint8_t block[64];
    size_t used;      /* bytes waiting in block */
} sdc_sha256;

void sdc_sha256_init(sdc_sha256 *s);
void sdc_sha256_update(sdc_sha256 *s, const void *data, size_t n);
/* Writes 64 lowercase hex digits and a NUL into hex[65]. */
void sdc_sha256_hex(sdc_sha256 *s, char hex[65]);

#endif
