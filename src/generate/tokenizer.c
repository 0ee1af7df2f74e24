/*
 * tokenizer.c — CLIP's BPE tokenizer as transformers' slow CLIPTokenizer without ftfy (see
 * tokenizer.h). The Unicode facts come from unicode_tables.inc, generated from the Python and
 * regex module transformers runs on (make_unicode_tables.py).
 */
#include "generate/tokenizer.h"

#include "arena.h"
#include "source/source.h"
#include "strmap.h"

#include <errno.h>
#include <jansson.h>

#include "generate/unicode_tables.inc"

/* Prompts are short; this bounds the work (BPE is quadratic in a word's length). */
enum { MAX_TEXT_BYTES = 16384, MAX_ADDED = 64, DEFAULT_MAX_LENGTH = 77, MAX_MODEL_LENGTH = 4096 };
/* transformers reads merges.txt's lines 1 .. 49152 - 256 - 2 (the first is "#version") */
enum { MAX_MERGES = 49152 - 256 - 2 };

static const char BOS_TEXT[] = "<|startoftext|>", EOS_TEXT[] = "<|endoftext|>";

typedef struct added_token {
    const char *text;
    size_t len;
    int32_t id;
} added_token;

struct sdc_tokenizer {
    sdc_arena arena;
    sdc_strmap vocab; /* token → id (vocab.json) */
    sdc_strmap ranks; /* "first second" → merge rank (merges.txt) */
    added_token added[MAX_ADDED]; /* split out of the text before anything else */
    int n_added;
    int32_t bos, eos, pad, unk;
    int max_length;
    char byte_char[256][3]; /* GPT-2's printable stand-in of each byte, UTF-8, NUL-terminated */
};

/* ------------------------------------------------------------------------- unicode */

static bool in_ranges(const uint32_t (*r)[2], size_t n, uint32_t c) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < r[mid][0])
            hi = mid;
        else if (c > r[mid][1])
            lo = mid + 1;
        else
            return true;
    }
    return false;
}
#define IN(table, c) in_ranges(table, SDC_COUNT_OF(table), c)

/* The row of `c` in a table sorted by its first column, or -1. */
static long find_row(const uint32_t *table, size_t rows, size_t width, uint32_t c) {
    size_t lo = 0, hi = rows;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint32_t k = table[mid * width];
        if (c < k)
            hi = mid;
        else if (c > k)
            lo = mid + 1;
        else
            return (long)mid;
    }
    return -1;
}

static int ccc_of(uint32_t c) {
    long r = find_row(&CCC[0][0], SDC_COUNT_OF(CCC), 2, c);
    return r < 0 ? 0 : (int)CCC[r][1];
}

/* BasicTokenizer._is_chinese_char: the CJK ideograph blocks. */
static bool is_cjk(uint32_t c) {
    static const uint32_t cjk[][2] = {{0x3400, 0x4DBF},   {0x4E00, 0x9FFF},   {0xF900, 0xFAFF},  {0x20000, 0x2A6DF},
                                      {0x2A700, 0x2B73F}, {0x2B740, 0x2B81F}, {0x2B820, 0x2CEAF}, {0x2F800, 0x2FA1F}};
    return IN(cjk, c);
}

/* A growable array of code points. */
typedef struct cps {
    uint32_t *v;
    size_t n, cap;
    bool oom;
} cps;

static void push(cps *a, uint32_t c) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        uint32_t *v = a->oom ? NULL : sdc_realloc(a->v, cap * sizeof *v);
        if (!v) {
            a->oom = true;
            return;
        }
        a->v = v, a->cap = cap;
    }
    a->v[a->n++] = c;
}

/* One character of strict UTF-8 (no overlongs, surrogates or values past U+10FFFF), as Python
   decodes bytes into the str transformers takes: its length, or 0 when s does not start with
   a valid one. */
static size_t utf8_char(const uint8_t *s, size_t len, uint32_t *out) {
    static const uint32_t min[4] = {0, 0x80, 0x800, 0x10000};
    uint32_t c = s[0];
    int n = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
    if (n < 0 || (size_t)n >= len) return 0;
    c &= 0x7Fu >> n;
    for (int k = 1; k <= n; k++) {
        if ((s[k] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[k] & 0x3F);
    }
    if (c < min[n] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    *out = c;
    return (size_t)n + 1;
}

/* The offset of the first byte that does not start a valid character, or -1. */
static long utf8_invalid_at(const uint8_t *s, size_t len) {
    uint32_t c;
    for (size_t i = 0, n; i < len; i += n)
        if (!(n = utf8_char(s + i, len - i, &c))) return (long)i;
    return -1;
}

/* Appends the characters of valid UTF-8 to out. */
static void decode_utf8(const uint8_t *s, size_t len, cps *out) {
    uint32_t c;
    for (size_t i = 0, n; i < len && (n = utf8_char(s + i, len - i, &c)); i += n) push(out, c);
}

static void append_utf8(char *buf, size_t *len, uint32_t c) {
    if (c < 0x80) {
        buf[(*len)++] = (char)c;
    } else if (c < 0x800) {
        buf[(*len)++] = (char)(0xC0 | c >> 6);
        buf[(*len)++] = (char)(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        buf[(*len)++] = (char)(0xE0 | c >> 12);
        buf[(*len)++] = (char)(0x80 | ((c >> 6) & 0x3F));
        buf[(*len)++] = (char)(0x80 | (c & 0x3F));
    } else {
        buf[(*len)++] = (char)(0xF0 | c >> 18);
        buf[(*len)++] = (char)(0x80 | ((c >> 12) & 0x3F));
        buf[(*len)++] = (char)(0x80 | ((c >> 6) & 0x3F));
        buf[(*len)++] = (char)(0x80 | (c & 0x3F));
    }
}

/* ------------------------------------------------------------------------------ NFC */

enum { S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7, L_COUNT = 19, V_COUNT = 21, T_COUNT = 28 };
enum { N_COUNT = V_COUNT * T_COUNT, S_COUNT = L_COUNT * N_COUNT };

static void decompose(uint32_t c, cps *out) {
    if (c >= S_BASE && c < S_BASE + S_COUNT) { /* Hangul syllables, algorithmically */
        uint32_t s = c - S_BASE;
        push(out, L_BASE + s / N_COUNT);
        push(out, V_BASE + (s % N_COUNT) / T_COUNT);
        if (s % T_COUNT) push(out, T_BASE + s % T_COUNT);
        return;
    }
    long r = find_row(&DECOMP[0][0], SDC_COUNT_OF(DECOMP), 3, c);
    if (r < 0) {
        push(out, c);
        return;
    }
    for (uint32_t k = 0; k < DECOMP[r][2]; k++) push(out, DECOMP_CHARS[DECOMP[r][1] + k]);
}

static uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE && b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    size_t lo = 0, hi = SDC_COUNT_OF(COMPOSE);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *r = COMPOSE[mid];
        if (a < r[0] || (a == r[0] && b < r[1]))
            hi = mid;
        else if (a > r[0] || b > r[1])
            lo = mid + 1;
        else
            return r[2];
    }
    return 0;
}

/* unicodedata.normalize("NFC", ...): full decomposition, canonical order, composition. */
static void nfc(const cps *in, cps *out) {
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) decompose(in->v[i], out);
    if (out->oom) return;
    uint32_t *a = out->v;
    size_t n = out->n;
    for (size_t i = 1; i < n; i++) { /* stable insertion sort of each run of non-starters */
        int cc = ccc_of(a[i]);
        if (!cc) continue;
        for (size_t j = i; j > 0 && ccc_of(a[j - 1]) > cc; j--) {
            uint32_t t = a[j - 1];
            a[j - 1] = a[j], a[j] = t;
        }
    }
    if (!n) return;
    size_t starter = 0, w = 1;
    int last = ccc_of(a[0]) ? 256 : 0;
    for (size_t i = 1; i < n; i++) {
        int cc = ccc_of(a[i]);
        uint32_t comp = compose_pair(a[starter], a[i]);
        if (comp && (last < cc || last == 0)) {
            a[starter] = comp;
            continue;
        }
        if (cc == 0) starter = w;
        last = cc;
        a[w++] = a[i];
    }
    out->n = w;
}

/* --------------------------------------------------------------------- basic tokenizer */

static uint32_t lower_simple(uint32_t c) {
    long r = find_row(&LOWER[0][0], SDC_COUNT_OF(LOWER), 2, c);
    return r < 0 ? c : LOWER[r][1];
}

/* Python's final-sigma rule for the capital sigma at w[i] of a word. */
static bool final_sigma(const uint32_t *w, size_t n, size_t i) {
    size_t j = i;
    while (j > 0 && IN(CASE_IGNORABLE, w[j - 1])) j--;
    if (j == 0 || !IN(CASED, w[j - 1])) return false;
    j = i + 1;
    while (j < n && IN(CASE_IGNORABLE, w[j])) j++;
    return j == n || !IN(CASED, w[j]);
}

/* str.lower() of one word, appended to out. */
static void lower_word(const uint32_t *w, size_t n, cps *out) {
    for (size_t i = 0; i < n; i++) {
        if (w[i] == 0x3A3) {
            push(out, final_sigma(w, n, i) ? 0x3C2 : 0x3C3);
        } else if (w[i] == 0x130) {
            push(out, 'i');
            push(out, 0x307);
        } else {
            push(out, lower_simple(w[i]));
        }
    }
}

/* BasicTokenizer(strip_accents=False, do_split_on_punc=False).tokenize, joined by spaces:
   clean, space the CJK ideographs, NFC, split on whitespace, lowercase each word. */
static void basic_tokenize(const cps *text, cps *spaced, cps *norm, cps *out) {
    spaced->n = out->n = 0;
    for (size_t i = 0; i < text->n; i++) {
        uint32_t c = text->v[i];
        if (IN(DROPPED, c)) continue;
        if (IN(CLEAN_SPACE, c)) c = ' ';
        if (is_cjk(c)) push(spaced, ' ');
        push(spaced, c);
        if (is_cjk(c)) push(spaced, ' ');
    }
    nfc(spaced, norm);
    for (size_t i = 0; i < norm->n && !norm->oom;) {
        if (IN(PY_SPACE, norm->v[i])) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < norm->n && !IN(PY_SPACE, norm->v[j])) j++;
        if (out->n) push(out, ' ');
        lower_word(norm->v + i, j - i, out);
        i = j;
    }
    if (norm->oom) out->oom = true;
}

/* ------------------------------------------------------------------- CLIP's pattern */

/* Matches the literal `lit` (lowercase ASCII) at w[i] as the pattern's IGNORECASE does on
   lowercased text: ſ (U+017F) folds to s. Returns the length matched or 0. */
static size_t match_literal(const uint32_t *w, size_t n, size_t i, const char *lit) {
    size_t k = 0;
    for (; lit[k]; k++) {
        if (i + k >= n) return 0;
        uint32_t c = w[i + k];
        if (c == 0x17F) c = 's';
        if (c != (uint8_t)lit[k]) return 0;
    }
    return k;
}

/* The length of the pattern's next match at w[i] (0: no match here, skip one character), and
   whether it is one of the two special-token alternatives. */
static size_t next_match(const uint32_t *w, size_t n, size_t i) {
    static const char *const literal[] = {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    for (size_t k = 0; k < SDC_COUNT_OF(literal); k++) {
        size_t len = match_literal(w, n, i, literal[k]);
        if (len) return len;
    }
    size_t j = i;
    if (IN(RE_LETTER, w[i])) {
        while (j < n && IN(RE_LETTER, w[j])) j++;
        return j - i;
    }
    if (IN(RE_NUMBER, w[i])) return 1;
    while (j < n && IN(RE_OTHER, w[j])) j++;
    return j - i;
}

/* ------------------------------------------------------------------------------ BPE */

typedef struct span {
    size_t start, end; /* into the encoded word */
} span;

static int32_t token_id(const sdc_tokenizer *t, const char *s, size_t len) {
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].len == len && !memcmp(t->added[i].text, s, len)) return t->added[i].id;
    char buf[512];
    if (len >= sizeof buf) return t->unk;
    memcpy(buf, s, len);
    buf[len] = 0;
    int id = sdc_strmap_get(&t->vocab, buf);
    return id < 0 ? t->unk : id;
}

static int pair_rank(const sdc_tokenizer *t, const char *w, span a, span b) {
    char key[1024];
    size_t la = a.end - a.start, lb = b.end - b.start;
    if (la + lb + 2 > sizeof key) return -1;
    memcpy(key, w + a.start, la);
    key[la] = ' ';
    memcpy(key + la + 1, w + b.start, lb);
    key[la + 1 + lb] = 0;
    return sdc_strmap_get(&t->ranks, key);
}

/* The ids of one matched piece: bytes to GPT-2 characters, "</w>" on the last symbol, merges
   by rank (every occurrence of the best pair, left to right) until none applies. */
typedef struct id_sink {
    int32_t *ids;
    int cap, count;
} id_sink;

static void emit(id_sink *o, int32_t id) {
    if (o->count < o->cap) o->ids[o->count] = id;
    o->count++;
}

static bool bpe(const sdc_tokenizer *t, const uint32_t *piece, size_t n, id_sink *o) {
    size_t bytes = 0;
    char *raw = sdc_malloc(n * 4 + 1);
    if (!raw) return false;
    for (size_t i = 0; i < n; i++) append_utf8(raw, &bytes, piece[i]);
    raw[bytes] = 0;
    if (!strcmp(raw, BOS_TEXT) || !strcmp(raw, EOS_TEXT)) { /* transformers' bpe cache */
        emit(o, token_id(t, raw, bytes));
        sdc_free(raw);
        return true;
    }
    char *w = sdc_malloc(bytes * 2 + 8);
    span *sym = sdc_malloc(sizeof(span) * (bytes + 1));
    if (!w || !sym) {
        sdc_free(raw), sdc_free(w), sdc_free(sym);
        return false;
    }
    size_t len = 0, ns = 0;
    for (size_t i = 0; i < bytes; i++) {
        const char *ch = t->byte_char[(uint8_t)raw[i]];
        sym[ns].start = len;
        len += strlen(ch);
        memcpy(w + sym[ns].start, ch, strlen(ch));
        sym[ns++].end = len;
    }
    memcpy(w + len, "</w>", 4);
    len += 4;
    sym[ns - 1].end = len;
    for (;;) {
        int best = -1;
        for (size_t i = 0; i + 1 < ns; i++) {
            int r = pair_rank(t, w, sym[i], sym[i + 1]);
            if (r >= 0 && (best < 0 || r < best)) best = r;
        }
        if (best < 0) break;
        size_t k = 0;
        for (size_t i = 0; i < ns; i++) {
            if (i + 1 < ns && pair_rank(t, w, sym[i], sym[i + 1]) == best) {
                sym[k++] = (span){sym[i].start, sym[i + 1].end};
                i++;
            } else {
                sym[k++] = sym[i];
            }
        }
        ns = k;
        if (ns == 1) break;
    }
    for (size_t i = 0; i < ns; i++) emit(o, token_id(t, w + sym[i].start, sym[i].end - sym[i].start));
    sdc_free(raw), sdc_free(w), sdc_free(sym);
    return true;
}

/* _tokenize of a text between added tokens. */
static bool tokenize_segment(const sdc_tokenizer *t, const cps *seg, id_sink *o) {
    cps spaced = {0}, norm = {0}, text = {0};
    basic_tokenize(seg, &spaced, &norm, &text);
    bool ok = !text.oom && !spaced.oom && !norm.oom;
    for (size_t i = 0; ok && i < text.n;) {
        size_t len = text.v[i] == ' ' ? 0 : next_match(text.v, text.n, i);
        if (!len) {
            i++;
            continue;
        }
        ok = bpe(t, text.v + i, len, o);
        i += len;
    }
    sdc_free(spaced.v), sdc_free(norm.v), sdc_free(text.v);
    return ok;
}

/* The longest added token at byte offset i of the text, or NULL. */
static const added_token *added_at(const sdc_tokenizer *t, const char *text, size_t len, size_t i) {
    const added_token *best = NULL;
    for (int k = 0; k < t->n_added; k++) {
        const added_token *a = &t->added[k];
        if (a->len <= len - i && !memcmp(text + i, a->text, a->len) && (!best || a->len > best->len)) best = a;
    }
    return best;
}

sdc_status sdc_tokenizer_encode(const sdc_tokenizer *t, const char *text, int32_t *ids, int n, int *n_tokens,
                                sdc_err *err) {
    if (n < 2) return sdc_fail(err, SDC_E_ARG, "tokenizer: padded length %d is below 2", n);
    size_t len = strlen(text);
    if (len > MAX_TEXT_BYTES)
        return sdc_fail(err, SDC_E_ARG, "prompt of %zu bytes is longer than %d bytes", len, MAX_TEXT_BYTES);
    long bad = utf8_invalid_at((const uint8_t *)text, len);
    if (bad >= 0) return sdc_fail(err, SDC_E_ARG, "prompt is not valid UTF-8 (byte %ld)", bad);
    cps seg = {0};
    id_sink o = {ids + 1, n - 2, 0};
    bool ok = true;
    /* added tokens split the text first (transformers' trie), at character starts */
    size_t start = 0;
    for (size_t i = 0; ok && i <= len; i++) {
        const added_token *a = i < len && ((uint8_t)text[i] & 0xC0) != 0x80 ? added_at(t, text, len, i) : NULL;
        if (!a && i < len) continue;
        seg.n = 0;
        decode_utf8((const uint8_t *)text + start, i - start, &seg);
        ok = !seg.oom && tokenize_segment(t, &seg, &o);
        if (a) {
            emit(&o, a->id);
            i += a->len - 1;
            start = i + 1;
        }
    }
    sdc_free(seg.v);
    if (!ok) return sdc_fail(err, SDC_E_NOMEM, "out of memory tokenizing the prompt");
    int kept = o.count < n - 2 ? o.count : n - 2;
    ids[0] = t->bos;
    ids[kept + 1] = t->eos;
    for (int i = kept + 2; i < n; i++) ids[i] = t->pad;
    if (n_tokens) *n_tokens = o.count + 2;
    return SDC_OK;
}

int sdc_tokenizer_max_length(const sdc_tokenizer *t) { return t->max_length; }
int32_t sdc_tokenizer_pad_id(const sdc_tokenizer *t) { return t->pad; }

/* ---------------------------------------------------------------------------- files */

static void make_byte_chars(sdc_tokenizer *t) {
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t c = printable ? (uint32_t)b : 256u + (uint32_t)extra++;
        size_t len = 0;
        append_utf8(t->byte_char[b], &len, c);
        t->byte_char[b][len] = 0;
    }
}

/* dir/name, malloc'd; NULL when out of memory. */
static char *path_in(const char *dir, const char *name) {
    size_t size = strlen(dir) + strlen(name) + 2;
    char *p = sdc_malloc(size);
    if (p && !sdc_fmt(p, size, "%s/%s", dir, name)) {
        sdc_free(p);
        p = NULL;
    }
    return p;
}

static sdc_status add_vocab(sdc_tokenizer *t, const char *path, json_t *v, sdc_err *err) {
    if (!json_is_object(v)) return sdc_fail(err, SDC_E_FORMAT, "%s: not a JSON object", path);
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) > INT32_MAX)
            return sdc_fail(err, SDC_E_FORMAT, "%s: the id of token '%.40s' is not an integer in 0..2^31-1", path,
                            key);
        char *k = sdc_arena_strdup(&t->arena, key);
        if (!k || !sdc_strmap_put(&t->vocab, k, (int)json_integer_value(val)))
            return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", path);
    }
    return SDC_OK;
}

static sdc_status read_vocab(sdc_tokenizer *t, const char *dir, sdc_err *err) {
    char *path = path_in(dir, "vocab.json");
    if (!path) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", dir);
    json_t *v;
    sdc_status s = sdc_json_load(path, &v, err);
    if (!s) s = add_vocab(t, path, v, err);
    json_decref(v);
    sdc_free(path);
    return s;
}

/* Whether a str.split() whitespace character starts at s[i] (ASCII blanks, the separators
   U+001C..U+001F, and the non-ASCII ones: U+0085, U+00A0, U+2028, ...); *n gets its length. */
static bool py_space_at(const char *s, size_t i, size_t end, size_t *n) {
    uint8_t c = (uint8_t)s[i];
    *n = 1;
    if (c < 0x80) return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x1F);
    uint32_t cp;
    size_t len = utf8_char((const uint8_t *)s + i, end - i, &cp);
    if (!len) return false; /* not reached: the file was checked */
    *n = len;
    return IN(PY_SPACE, cp);
}

/* The next whitespace-separated field of s[*i, end), as str.split() finds it. */
static bool next_field(const char *s, size_t *i, size_t end, size_t *f0, size_t *f1) {
    size_t n;
    while (*i < end && py_space_at(s, *i, end, &n)) *i += n;
    if (*i >= end) return false;
    *f0 = *i;
    while (*i < end && !py_space_at(s, *i, end, &n)) *i += n;
    *f1 = *i;
    return true;
}

/* Reads a whole small text file (up to 64 MiB) as valid UTF-8. */
static sdc_status read_text(const char *path, char **out, size_t *out_len, sdc_err *err) {
    sdc_status s = sdc_read_small_file(path, 64u << 20, out, out_len, err);
    long bad = s ? -1 : utf8_invalid_at((const uint8_t *)*out, *out_len);
    if (bad < 0) return s;
    sdc_free(*out);
    *out = NULL;
    return sdc_fail(err, SDC_E_FORMAT, "%s: not valid UTF-8 (byte %ld)", path, bad);
}

static sdc_status add_merge(sdc_tokenizer *t, const char *path, const char *line, size_t a0, size_t a1, size_t b0,
                            size_t b1, int rank, sdc_err *err) {
    char *key = sdc_arena_printf(&t->arena, "%.*s %.*s", (int)(a1 - a0), line + a0, (int)(b1 - b0), line + b0);
    /* listed again: the dict keeps the later rank */
    if (!key || !sdc_strmap_set(&t->ranks, key, rank)) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", path);
    return SDC_OK;
}

/* merges.txt as transformers reads it: the whole file stripped, split on "\n", line 0 (the
   "#version" line) skipped, the next MAX_MERGES lines split on whitespace, ranked in order.
   Lines that are not exactly two symbols can never match a pair and are skipped. */
static sdc_status read_merges(sdc_tokenizer *t, const char *dir, sdc_err *err) {
    char *path = path_in(dir, "merges.txt"), *buf;
    size_t len = 0, n;
    if (!path) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", dir);
    sdc_status s = read_text(path, &buf, &len, err);
    if (s) {
        sdc_free(path);
        return s;
    }
    size_t pos = 0;
    while (pos < len && py_space_at(buf, pos, len, &n)) pos += n; /* strip() */
    for (int line = 0; !s && pos < len && line <= MAX_MERGES; line++) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len, i = pos, a0, a1, b0, b1, c0, c1;
        if (line > 0 && next_field(buf, &i, end, &a0, &a1) && next_field(buf, &i, end, &b0, &b1) &&
            !next_field(buf, &i, end, &c0, &c1))
            s = add_merge(t, path, buf, a0, a1, b0, b1, line - 1, err);
        pos = end + 1;
    }
    sdc_free(buf);
    sdc_free(path);
    return s;
}

/* A special token's text in a tokenizer config: a string, or an AddedToken object's content. */
static const char *token_text(const json_t *v) {
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v) && json_is_string(json_object_get(v, "content")))
        return json_string_value(json_object_get(v, "content"));
    return NULL;
}

/* sdc_json_load reads integers too long for 64 bits (a "no limit" model_max_length of 1e30
   written as an integer) as reals. */
static json_t *load_optional(const char *dir, const char *name, char **path_out, sdc_err *err, sdc_status *st) {
    char *path = path_in(dir, name);
    *path_out = path;
    *st = SDC_OK;
    if (!path) {
        *st = sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", dir);
        return NULL;
    }
    if (!sdc_path_exists(path)) return NULL;
    json_t *v;
    *st = sdc_json_load(path, &v, err);
    if (!*st && !json_is_object(v)) *st = sdc_fail(err, SDC_E_FORMAT, "%s: not a JSON object", path);
    if (!*st) return v;
    json_decref(v);
    return NULL;
}

static sdc_status add_special(sdc_tokenizer *t, const char *text, int32_t id, const char *file, sdc_err *err) {
    for (int i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].text, text)) return SDC_OK;
    if (t->n_added == MAX_ADDED) return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: more than %d added tokens", file, MAX_ADDED);
    if (!*text) return sdc_fail(err, SDC_E_FORMAT, "%s: an added token is empty", file);
    char *copy = sdc_arena_strdup(&t->arena, text);
    if (!copy) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", file);
    t->added[t->n_added++] = (added_token){copy, strlen(copy), id};
    return SDC_OK;
}

/* The id of a special token: the added-token table, else the vocabulary. */
static sdc_status special_id(sdc_tokenizer *t, const char *role, const char *text, const char *file, int32_t *id,
                             sdc_err *err) {
    for (int i = 0; i < t->n_added; i++)
        if (!strcmp(t->added[i].text, text)) {
            *id = t->added[i].id;
            return SDC_OK;
        }
    int v = sdc_strmap_get(&t->vocab, text);
    if (v < 0)
        return sdc_fail(err, SDC_E_UNSUPPORTED, "%s: %s '%.40s' is not in vocab.json", file, role, text);
    *id = v;
    return add_special(t, text, v, file, err); /* transformers adds every special token to its trie */
}

/* tokenizer_config.json's added_tokens_decoder: {"id": {"content": ...}, ...}. */
static sdc_status read_added_tokens(sdc_tokenizer *t, const json_t *dec, const char *file, sdc_err *err) {
    if (!json_is_object(dec)) return sdc_fail(err, SDC_E_FORMAT, "%s: added_tokens_decoder is not an object", file);
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)dec, key, val) {
        char *end;
        errno = 0;
        long id = strtol(key, &end, 10);
        const char *text = token_text(val);
        if (errno || end == key || *end || id < 0 || id > INT32_MAX || !text)
            return sdc_fail(err, SDC_E_FORMAT, "%s: added_tokens_decoder entry '%.20s' is malformed", file, key);
        sdc_status s = add_special(t, text, (int32_t)id, file, err);
        if (s) return s;
    }
    return SDC_OK;
}

/* model_max_length: a sane integer, else (absent, or a "no limit" sentinel such as
   transformers' int(1e30)) the CLIP text encoders' 77. */
static int max_length_of(const json_t *cfg) {
    const json_t *v = cfg ? json_object_get(cfg, "model_max_length") : NULL;
    if (!json_is_number(v)) return DEFAULT_MAX_LENGTH;
    double d = json_number_value(v);
    return d >= 2 && d <= MAX_MODEL_LENGTH && d == (int)d ? (int)d : DEFAULT_MAX_LENGTH;
}

/* The special tokens, as transformers' from_pretrained resolves them: tokenizer_config.json's
   values; special_tokens_map.json's override them only when the config has no
   added_tokens_decoder (the legacy path); CLIPTokenizer's defaults otherwise. */
static sdc_status read_specials(sdc_tokenizer *t, const char *dir, sdc_err *err) {
    char *cfg_path, *map_path, *legacy_path;
    sdc_status s1, s2;
    json_t *cfg = load_optional(dir, "tokenizer_config.json", &cfg_path, err, &s1);
    json_t *map = s1 ? NULL : load_optional(dir, "special_tokens_map.json", &map_path, err, &s2);
    sdc_status s = s1 ? s1 : s2;
    legacy_path = s ? NULL : path_in(dir, "added_tokens.json");
    if (!s && !legacy_path) s = sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", dir);
    if (!s && sdc_path_exists(legacy_path))
        s = sdc_fail(err, SDC_E_UNSUPPORTED, "%s: the legacy added-tokens file is not supported", legacy_path);
    const char *file = cfg_path;
    const json_t *dec = cfg ? json_object_get(cfg, "added_tokens_decoder") : NULL;
    if (!s && dec) s = read_added_tokens(t, dec, cfg_path, err);
    static const struct {
        const char *key, *fallback;
        size_t offset;
    } roles[] = {{"bos_token", BOS_TEXT, offsetof(sdc_tokenizer, bos)},
                 {"eos_token", EOS_TEXT, offsetof(sdc_tokenizer, eos)},
                 {"unk_token", EOS_TEXT, offsetof(sdc_tokenizer, unk)},
                 {"pad_token", EOS_TEXT, offsetof(sdc_tokenizer, pad)}};
    for (size_t r = 0; !s && r < SDC_COUNT_OF(roles); r++) {
        const json_t *v = cfg ? json_object_get(cfg, roles[r].key) : NULL;
        file = cfg_path;
        if (!dec && map && json_object_get(map, roles[r].key)) v = json_object_get(map, roles[r].key), file = map_path;
        const char *text = v && !json_is_null(v) ? token_text(v) : roles[r].fallback;
        if (!text)
            s = sdc_fail(err, SDC_E_FORMAT, "%s: %s is neither a string nor a token object", file, roles[r].key);
        else
            s = special_id(t, roles[r].key, text, file, (int32_t *)((char *)t + roles[r].offset), err);
    }
    if (!s) t->max_length = max_length_of(cfg);
    json_decref(cfg);
    json_decref(map);
    sdc_free(cfg_path);
    sdc_free(s1 ? NULL : map_path);
    sdc_free(legacy_path);
    return s;
}

sdc_status sdc_tokenizer_open(const char *dir, sdc_tokenizer **out, sdc_err *err) {
    *out = NULL;
    sdc_tokenizer *t = sdc_calloc(1, sizeof *t);
    if (!t) return sdc_fail(err, SDC_E_NOMEM, "%s: out of memory", dir);
    sdc_arena_init(&t->arena);
    make_byte_chars(t);
    sdc_status s = read_vocab(t, dir, err);
    if (!s) s = read_merges(t, dir, err);
    if (!s) s = read_specials(t, dir, err);
    if (s) {
        sdc_tokenizer_free(t);
        return s;
    }
    *out = t;
    return SDC_OK;
}

void sdc_tokenizer_free(sdc_tokenizer *t) {
    if (!t) return;
    sdc_strmap_clear(&t->vocab);
    sdc_strmap_clear(&t->ranks);
    sdc_arena_free(&t->arena);
    sdc_free(t);
}
