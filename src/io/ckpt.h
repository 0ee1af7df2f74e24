/*
 * ckpt.h — PyTorch checkpoints (.ckpt, .pt, .pth: what torch.save writes) read without running
 * any of their pickle code.
 *
 * Contract:
 *   - Formats: the zip format of torch >= 1.6 (<archive>/data.pkl with its storages in
 *     <archive>/data/<key>, any archive folder name, <archive>/byteorder "little" when present;
 *     ZIP64 for files over 4 GB) and the legacy format (_use_new_zipfile_serialization=False:
 *     pickles of the magic number, the protocol version 1001 and the sys info, the main pickle,
 *     the pickled list of storage keys, then each storage as an 8-byte little-endian element
 *     count and its bytes). The tar format of torch < 0.4, TorchScript archives, big-endian
 *     files and compressed zip entries are refused by name.
 *   - The pickles run in io/pickle.c's VM: only torch's tensor-rebuilding globals, storage types,
 *     OrderedDict and torch.Size mean anything; every other global is an inert placeholder, so
 *     training state (Lightning callbacks, numpy scalars, optimizer states) loads as data that
 *     is then ignored. Nothing is ever executed.
 *   - Names: the root object must be a dict. While it has a 'state_dict' entry that is a dict,
 *     that entry replaces it (as diffusers' single-file loader unwraps Lightning/CompVis
 *     checkpoints; 'global_step', 'callbacks', optimizer states … beside it are dropped). Then
 *     every tensor reachable through string keys of nested dicts is listed under its keys
 *     joined with '.': {'model': {'a.weight': T}} gives 'model.a.weight'. Tensors in lists or
 *     tuples, and non-string keys, are not listed. A name that comes out twice is an error.
 *   - Tensors are views like safetensors': the checks that safetensors headers get (dtype from a
 *     whitelist, byte counts from shapes with overflow checks, bounds) are made against each
 *     storage: storage offset + extent inside the storage, the storage's bytes inside the file.
 *     Several tensors may view one storage (shared storages, offsets). Contiguous tensors only:
 *     a view with other strides (a transpose) is refused by name, as is an element type
 *     sdcoreml does not read (complex, quantized). Dtypes: F64, F32, F16, BF16, I64, I32, I16,
 *     I8, U8, BOOL.
 *   - Errors are one line naming the file and the entry, key or tensor.
 *
 * The result is a safetensors file handle (io/safetensors.h): list the tensors with
 * sdc_st_count / sdc_st_at (in the order the pickle lists them) / sdc_st_find, read them with
 * sdc_tensor_get_f32 or their data pointer (into the read-only mapping of the file, unaligned),
 * release pages with sdc_tensor_release and close with sdc_st_close.
 */
#ifndef SDC_CKPT_H
#define SDC_CKPT_H

#include "io/safetensors.h"

#define SDC_CKPT_MAX_DEPTH 32       /* nested dicts walked for tensors */
#define SDC_CKPT_MAX_NAME 4096      /* bytes of a dotted tensor name */
#define SDC_CKPT_MAX_TENSORS (1u << 20)         /* tensors listed (shared dicts count per path) */
#define SDC_CKPT_MAX_NAME_BYTES (64u << 20)     /* bytes of all their names together */

sdc_status sdc_ckpt_open(const char *path, sdc_st_file **out, sdc_err *err);

/* Whether the path ends in .ckpt, .pt or .pth (case-insensitive): what sdcoreml reads with
   sdc_ckpt_open rather than sdc_st_open. */
bool sdc_ckpt_is_ckpt_path(const char *path);

#endif
