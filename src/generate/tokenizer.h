/*
 * tokenizer.h — CLIP's byte-level BPE tokenizer, as transformers' CLIPTokenizer (slow, without
 * ftfy) encodes a prompt for the text encoder.
 *
 * A tokenizer folder holds vocab.json (token → id), merges.txt (ranked merges, a "#version"
 * line first) and tokenizer_config.json and/or special_tokens_map.json (the pad, bos, eos and
 * unk tokens, model_max_length). SD 1.x and SDXL's first tokenizer pad with "<|endoftext|>",
 * SDXL's tokenizer_2 pads with "!": the pad token is read from the files, never assumed.
 *
 * model_max_length: tokenizer_config.json's value when it is an integer in 1..4096; tools that
 * write a "no limit" sentinel (transformers' VERY_LARGE_INTEGER, 1e30) or nothing get 77, the
 * sequence length of every CLIP text encoder Stable Diffusion uses.
 *
 * Encoding, as transformers 4.44's CLIPTokenizer when ftfy is not installed (BasicTokenizer
 * fallback): whitespace runs become one space and the ends are trimmed; control characters
 * other than tab/newline/CR are dropped; lowercasing with Unicode simple case mapping (the
 * accents are kept: strip_accents is off); CJK ideographs and ASCII/Unicode punctuation become
 * words of their own; each word is split by CLIP's pattern (<|startoftext|>, <|endoftext|>,
 * the contractions 's 't 're 've 'm 'll 'd, letter runs, single digits, runs of other
 * non-space characters), mapped byte by byte to GPT-2's printable byte alphabet, and merged by
 * rank with "</w>" on its last symbol. The ids are <|startoftext|>, the tokens, <|endoftext|>,
 * then the pad id up to n; a prompt longer than n keeps its first n - 2 tokens.
 *
 * The text is untrusted: invalid UTF-8 is an error (SDC_E_ARG naming the byte offset), as
 * Python would refuse to decode it into the str transformers takes.
 */
#ifndef SDC_GENERATE_TOKENIZER_H
#define SDC_GENERATE_TOKENIZER_H

#include "common.h"

typedef struct sdc_tokenizer sdc_tokenizer;

/* Reads the tokenizer files of `dir` (a "tokenizer" or "tokenizer_2" folder). Errors name the
   file and the field. */
sdc_status sdc_tokenizer_open(const char *dir, sdc_tokenizer **out, sdc_err *err);
void sdc_tokenizer_free(sdc_tokenizer *t);

/* model_max_length after the rule above (77 for every SD text encoder). */
int sdc_tokenizer_max_length(const sdc_tokenizer *t);
/* The pad token's id ("<|endoftext|>" in SD 1.x, "!" in SDXL's tokenizer_2). */
int32_t sdc_tokenizer_pad_id(const sdc_tokenizer *t);

/* Encodes `text` (UTF-8, NUL-terminated) into exactly `n` ids (n >= 2), as
   tokenizer(text, padding="max_length", max_length=n, truncation=True).input_ids.
   *n_tokens (may be NULL) gets the count before padding and truncation, BOS and EOS included,
   so the caller can warn that the prompt was cut as the anchor does. */
sdc_status sdc_tokenizer_encode(const sdc_tokenizer *t, const char *text, int32_t *ids, int n, int *n_tokens,
                                sdc_err *err);

#endif
