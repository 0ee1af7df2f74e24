/*
 * safetensors.h — strict, mmap-based reader of .safetensors files.
 *
 * File layout: [u64 LE header length N][N bytes JSON header][data]. Every byte is untrusted:
 * the header length is bounded, JSON must be an object without duplicate keys, dtypes come
 * from a whitelist, offsets must tile the data buffer in order without holes or overlap and
 * end exactly at end of file, and END-BEGIN must equal prod(shape) × dtype size (checked for
 * overflow). Errors name the file and, where there is one, the tensor.
 *
 * Tensor data are never copied: views point into the read-only mapping, which lives until
 * sdc_st_close(). Data may be unaligned; read them with memcpy.
 */
#ifndef SDC_SAFETENSORS_H
#define SDC_SAFETENSORS_H

#include "common.h"

#define SDC_ST_MAX_HEADER (100u * 1000u * 1000u) /* as the reference reader */

typedef struct sdc_st_file sdc_st_file;

/* A lazy addition to a tensor's values: adds the float32 delta of elements [first, first + n)
   to acc. LoRA merging (source/lora.h) sets it on the copies the weights lookup hands out, and
   every reader of weight values (mil/values.c) applies it, so a merged weight is never whole
   in memory. */
typedef struct sdc_tensor_addend {
    void (*add)(const struct sdc_tensor_addend *self, uint64_t first, size_t n, float *acc);
} sdc_tensor_addend;

/* A lazy view of one tensor inside a mapped file. */
typedef struct sdc_tensor {
    const char *name;         /* owned by the file */
    sdc_dtype dtype;
    int rank;
    int64_t shape[SDC_MAX_RANK];
    uint64_t numel;
    const uint8_t *data;      /* into the mapping; unaligned */
    uint64_t nbytes;
    const sdc_st_file *file;
    const sdc_tensor_addend *addend; /* NULL, or added to the values as they are read */
    bool in_memory;           /* data is a copy in memory, not the file's mapping: its pages are
                                 never dropped (a drop would zero them) */
} sdc_tensor;

sdc_status sdc_st_open(const char *path, sdc_st_file **out, sdc_err *err);
void sdc_st_close(sdc_st_file *f); /* NULL is a no-op */

const char *sdc_st_path(const sdc_st_file *f);
size_t sdc_st_count(const sdc_st_file *f);
const sdc_tensor *sdc_st_at(const sdc_st_file *f, size_t i);      /* in data-offset order (adopted: as given) */
const sdc_tensor *sdc_st_find(const sdc_st_file *f, const char *name); /* NULL if absent */

/* A file whose tensors another reader has proved valid inside `map` (io/ckpt.c: a PyTorch
   checkpoint), so that both formats are used through this one interface. Takes the mapping,
   the tensor array (sdc_malloc'd) and every tensor's name (sdc_strdup'd) — sdc_st_close frees
   them, and so does a failure here. Tensors keep their order and may share bytes; names must be
   unique (a repeated one is an error naming it). */
sdc_status sdc_st_adopt(const char *path, const uint8_t *map, size_t map_size, sdc_tensor *tensors, size_t count,
                        sdc_st_file **out, sdc_err *err);

/* Drops the tensor's pages from the resident set once it has been streamed (they are re-read
   from the file if used again). */
void sdc_tensor_release(const sdc_tensor *t);

/* Reads element i of a float tensor (F32, F16, BF16, F64) as float. */
float sdc_tensor_get_f32(const sdc_tensor *t, uint64_t i);

#endif
