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
 * fallback, which is what the anchor's pipeline runs):
 *   1. the added tokens (the special tokens, and tokenizer_config.json's added_tokens_decoder:
 *      "<|startoftext|>", "<|endoftext|>", and "!" in SDXL's tokenizer_2) are split out of the
 *      text first, case-sensitively, and give their own ids;
 *   2. each piece between them: NUL, U+FFFD and category C* characters (controls, format
 *      characters such as U+200D, private use, unassigned) but tab/LF/CR are dropped,
 *      whitespace becomes a space, CJK ideographs get spaces around them, the text is
 *      normalised to NFC, split on whitespace, and each word lowercased as Python's
 *      str.lower() does (full mapping, final sigma); accents are kept;
 *   3. CLIP's pattern splits each word (<|startoftext|>, <|endoftext|>, the contractions 's 't
 *      're 've 'm 'll 'd — case-insensitive, so "'ſ" is "'s" —, letter runs, single digits, runs
 *      of other characters);
 *   4. each piece is mapped byte by byte to GPT-2's printable byte alphabet and merged by rank
 *      (merges.txt) with "</w>" on its last symbol.
 * The ids are <|startoftext|>, the tokens, <|endoftext|>, then the pad id up to n; a prompt
 * longer than n keeps its first n - 2 tokens. The Unicode facts (Unicode 14 as Python 3.11's
 * unicodedata; the pattern's classes as the regex module has them) are generated into
 * unicode_tables.inc by make_unicode_tables.py.
 *
 * The text is untrusted: invalid UTF-8 is refused (SDC_E_ARG naming the byte offset), as Python
 * would refuse to decode it into the str transformers takes; so is a prompt over 16 KiB (BPE is
 * quadratic in a word's length; 16 KiB is some 4000 tokens, 50 times what the encoder reads).
 * Not supported: the legacy added_tokens.json, and special tokens missing from vocab.json
 * (transformers would append them with new ids).
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
