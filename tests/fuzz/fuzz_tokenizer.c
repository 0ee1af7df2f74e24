/*
 * fuzz_tokenizer.c — the CLIP tokenizer (src/generate/tokenizer.c): the prompt, and the
 * tokenizer files themselves.
 *
 * Input: up to 5 parts cut at SDC_FUZZ_SEPARATOR:
 *   0 the prompt (any bytes: invalid UTF-8 must be refused in one line)
 *   1 vocab.json  2 merges.txt  3 tokenizer_config.json  4 special_tokens_map.json
 * The prompt is encoded with examples/tiny-sd/tokenizer (copied at start from the working
 * directory, the repository root as bench/fuzz.sh runs it) and, when parts 1-4 make a folder
 * that opens, with that one too (an empty part leaves its file out). Checked: refusals are
 * one line; accepted prompts give BOS first, EOS after the kept tokens, pad after it, the same
 * ids twice, and a count of at least 2.
 */
#include <stdlib.h>
#include <string.h>

#include "generate/tokenizer.h"
#include "harness.h"

enum { N_PARTS = 5, LEN = 77, SHORT = 5 };

static const char *const part_files[N_PARTS - 1] = {"tok/vocab.json", "tok/merges.txt", "tok/tokenizer_config.json",
                                                     "tok/special_tokens_map.json"};
static char part_paths[N_PARTS - 1][4096], tok_dir[4096];
static sdc_tokenizer *tiny;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    sdc_fuzz_mkdirs("tok");
    sdc_fuzz_mkdirs("tiny");
    static const char *const files[] = {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"};
    char from[4096], to[4096], rel[256];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(from, sizeof from, "examples/tiny-sd/tokenizer/%s", files[i]);
        snprintf(rel, sizeof rel, "tiny/%s", files[i]);
        sdc_fuzz_copy(from, sdc_fuzz_path(to, sizeof to, rel));
    }
    for (int i = 0; i < N_PARTS - 1; i++) sdc_fuzz_path(part_paths[i], sizeof part_paths[i], part_files[i]);
    sdc_fuzz_path(tok_dir, sizeof tok_dir, "tok");
    sdc_err err = {0};
    char tiny_dir[4096];
    if (sdc_tokenizer_open(sdc_fuzz_path(tiny_dir, sizeof tiny_dir, "tiny"), &tiny, &err))
        sdc_fuzz_die("examples/tiny-sd/tokenizer does not open (run from the repository root): %s", err.msg);
    return 0;
}

static void check_error(const sdc_err *err) {
    if (!err->msg[0] || strchr(err->msg, '\n')) sdc_fuzz_die("an error must be one non-empty line: '%s'", err->msg);
}

static void check_encoding(const sdc_tokenizer *t, const char *prompt, int n) {
    int32_t a[LEN], b[LEN];
    int count_a, count_b;
    sdc_err err = {0};
    if (sdc_tokenizer_encode(t, prompt, a, n, &count_a, &err)) {
        check_error(&err);
        return;
    }
    if (sdc_tokenizer_encode(t, prompt, b, n, &count_b, &err) || count_a != count_b || memcmp(a, b, sizeof(int32_t) * (size_t)n))
        sdc_fuzz_die("encoding the same prompt twice differs");
    if (count_a < 2) sdc_fuzz_die("token count %d below 2", count_a);
    int eos_at = count_a < n ? count_a - 1 : n - 1;
    for (int i = eos_at + 1; i < n; i++)
        if (a[i] != sdc_tokenizer_pad_id(t)) sdc_fuzz_die("id %d after the end is not the pad id", i);
    for (int i = 0; i < n; i++)
        if (a[i] < 0) sdc_fuzz_die("negative id at %d", i);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    sdc_fuzz_part parts[N_PARTS];
    sdc_fuzz_split(data, size, parts, N_PARTS);
    char *prompt = malloc(parts[0].size + 1);
    if (!prompt) return 0;
    memcpy(prompt, parts[0].data, parts[0].size);
    prompt[parts[0].size] = 0; /* a NUL inside ends the prompt, as a C string does */
    check_encoding(tiny, prompt, LEN);
    check_encoding(tiny, prompt, SHORT);
    bool any_file = false;
    for (int i = 1; i < N_PARTS; i++) {
        sdc_fuzz_write_part(part_paths[i - 1], parts[i]);
        any_file |= parts[i].size > 0;
    }
    if (any_file) {
        sdc_tokenizer *t;
        sdc_err err = {0};
        if (sdc_tokenizer_open(tok_dir, &t, &err) == SDC_OK) {
            check_encoding(t, prompt, LEN);
            sdc_tokenizer_free(t);
        } else {
            check_error(&err);
        }
    }
    free(prompt);
    return 0;
}
