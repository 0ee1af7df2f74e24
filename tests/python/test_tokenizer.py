"""The CLIP tokenizer of `sdcoreml pipeline` against transformers' CLIPTokenizer (the slow one,
which the anchor's pipeline uses; ftfy is not installed, so transformers' BasicTokenizer
fallback applies): the same ids for a corpus of tricky prompts, padded and truncated, for the
SD 1.x tokenizer (examples/tiny-sd), an SDXL tokenizer_2 (pad "!", an added token), the legacy
file shape (special_tokens_map.json only, model_max_length written as int(1e30)), and a
tokenizer with a vocabulary of ~2000 merges trained here on the corpus (the tiny ones merge
little, so most of BPE's ranking would go untested)."""

import collections
import json
import shutil
import sys
from pathlib import Path

import pytest
import regex
from transformers import CLIPTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from make_tiny_pipelines import bytes_to_unicode  # noqa: E402  (the fixtures' one byte table)

REPO = Path(__file__).resolve().parents[2]
SD1 = REPO / "examples" / "tiny-sd" / "tokenizer"

CORPUS = [
    "",
    " ",
    "\t\n \r\n",
    "a photo of an astronaut riding a horse on mars",
    "A Photo Of An ASTRONAUT, riding a HORSE!!!",
    "Hello, World!! it's 2024 — isn't it? They'll've we'd I'm you're",
    "'s 't 're 've 'm 'll 'd ' 'x 'S 'T 'RE 'ſ 'ſt",
    "numbers 1234567890 3.14159 1,000,000 ٣٤٥ ⅷ ²³ 1st 2nd",
    "punctuation runs ... !!! ??? ,,, ;;; --- ___ *** ((())) [[]] {{}} <<>> ~~~ @@@ ### $$$ %%% ^^^ &&&",
    "quotes \"double\" 'single' «guillemets» „low“ ‘curly’ `back`",
    "café naïve résumé façade Ångström jalapeño crème brûlée",
    "cafe\u0301 nai\u0308ve decomposed accents e\u0301\u0323 o\u0323\u0302 a\u030a",
    "ΣΊΣΥΦΟΣ ὈΔΥΣΣΕΎΣ σίσυφος Σ ΑΣ. ΑΣ'Σ",
    "İstanbul DİYARBAKIR ıi İi",
    "Straße STRASSE ß ẞ ǅ ǈ ǋ Ǳ ﬁ ﬀ",
    "日本語のテキスト 中文字符 한국어 텍스트 漢字かな交じり文",
    "emoji 😀😃😄 👩‍👩‍👧‍👦 🏳️‍🌈 ❤️ 👍🏽 🇫🇷 flags",
    "mixed😀text中文and한국어123abc",
    "zero\u200bwidth\u200djoiner\u200cnon\u00adsoft\ufeffbom",
    "controls\x01\x02\x7f\x85\x9f and\u2028line\u2029para\u3000ideographic\u00a0nbsp",
    "replacement \ufffd char and private \ue000 use and noncharacter \ufdd0",
    "tabs\tbetween\twords\nand\nnewlines\r\nand  multiple   spaces",
    "<|startoftext|> <|endoftext|> <|ENDOFTEXT|> <|ſtartoftext|> <|endoftext|>x y<|startoftext|>",
    "wow! what!? !!!hi!!! ! !",
    "a very long prompt " * 40,
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "https://example.com/path?query=1&x=y#frag user@example.com C:\\Users\\x",
    "masterpiece, best quality, (ultra-detailed:1.2), [bokeh], {sharp focus}, 8k, HDR, 35mm f/1.8",
    "Ⓐⓑⓒ ＡＢＣ　ａｂｃ full width １２３ ｶﾀｶﾅ",
    "עברית العربية हिन्दी ไทย ქართული Ελληνικά русский",
    "x\u0345y \u0345 ß\u0345 Ϊ́ ᾼ ᾳ",
    "\U0001d400\U0001d41a math bold \U0001d7ce\U0001d7cf digits",
    "a" * 300,
    "🙂" * 50,
]


def train_bpe(texts, n_merges):
    """A CLIP-shaped byte-level BPE vocabulary learnt from `texts`: the most frequent pair is
    merged first (ties by the pair's text), the pieces as CLIP's pattern splits lowercased text."""
    enc = bytes_to_unicode()
    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
    words = collections.Counter()
    for t in texts:
        for w in pat.findall(t.lower()):
            sym = [enc[b] for b in w.encode("utf-8")]
            sym[-1] += "</w>"
            words[tuple(sym)] += 1
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new = collections.Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    base = list(enc.values())
    vocab = base + [s + "</w>" for s in base]
    for a, b in merges:
        if a + b not in vocab:
            vocab.append(a + b)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


TRAINING_TEXT = CORPUS + [
    "the quick brown fox jumps over the lazy dog " * 3,
    "portrait of a beautiful woman, highly detailed, digital painting, artstation, concept art, smooth",
    "landscape with mountains and a lake at sunset, trending on artstation, unreal engine, octane render",
    "café crème brûlée naïve über straße σίσυφος",
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    dirs = {"sd1": SD1}
    # SDXL's tokenizer_2: pad "!" (saved by transformers, so "!" is an added token with id 0)
    tok2 = CLIPTokenizer(str(SD1 / "vocab.json"), str(SD1 / "merges.txt"), pad_token="!", model_max_length=77)
    tok2.save_pretrained(root / "sdxl_2")
    dirs["sdxl_2"] = root / "sdxl_2"
    # the legacy shape: no added_tokens_decoder, special tokens only in special_tokens_map.json,
    # model_max_length as transformers' VERY_LARGE_INTEGER
    legacy = root / "legacy"
    legacy.mkdir()
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(SD1 / f, legacy / f)
    (legacy / "tokenizer_config.json").write_text(
        '{"model_max_length": 1000000000000000019884624838656, "tokenizer_class": "CLIPTokenizer", '
        '"pad_token": "<|endoftext|>", "errors": "replace"}')
    (legacy / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": True, "rstrip": False,
                      "single_word": False},
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "!"}))
    dirs["legacy"] = legacy
    # a trained vocabulary, both shapes: SD 1.x and SDXL tokenizer_2
    vocab, merges = train_bpe(TRAINING_TEXT, 2000)
    trained = root / "trained-src"
    trained.mkdir()
    (trained / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (trained / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                        encoding="utf-8")
    for name, pad in (("trained", "<|endoftext|>"), ("trained_2", "!")):
        CLIPTokenizer(str(trained / "vocab.json"), str(trained / "merges.txt"), pad_token=pad,
                      model_max_length=77).save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


def ours(testkit, d, n, texts):
    out = testkit("tokenize", d, n, *texts).stdout.splitlines()
    max_length, pad = map(int, out[0].split())
    rows = [list(map(int, line.split())) for line in out[1:]]
    return max_length, pad, [(r[0], r[1:]) for r in rows]


@pytest.mark.parametrize("kind", ["sd1", "sdxl_2", "legacy", "trained", "trained_2"])
@pytest.mark.parametrize("n", [77, 8])
def test_ids_equal_transformers(testkit, tokenizers, kind, n):
    ref = CLIPTokenizer.from_pretrained(str(tokenizers[kind]))
    max_length, pad, got = ours(testkit, tokenizers[kind], n, CORPUS)
    assert max_length == (ref.model_max_length if ref.model_max_length < 10**6 else 77)
    assert pad == ref.pad_token_id
    for text, (count, ids) in zip(CORPUS, got):
        want = ref(text, padding="max_length", max_length=n, truncation=True).input_ids
        assert ids == want, f"{kind}: {text!r}"
        assert count == len(ref(text).input_ids), f"{kind}: {text!r}"


def test_the_trained_vocabulary_merges_a_lot(tokenizers):
    ref = CLIPTokenizer.from_pretrained(str(tokenizers["trained"]))
    pieces = ref.tokenize(" ".join(CORPUS))
    assert sum(len(p) > 5 for p in pieces) > 100  # whole words, not bytes


def test_pad_token_bang_is_split_out_as_an_added_token(testkit, tokenizers):
    # in SDXL's tokenizer_2 "!" is an added token: "wow!" gives its id 0, not the BPE "!</w>"
    _, pad, got = ours(testkit, tokenizers["sdxl_2"], 10, ["wow!"])
    assert pad == 0 and got[0][1][:6] == [591, 86, 78, 342, 0, 592]  # w o w</w> ! <eos>


def test_invalid_utf8_is_refused(testkit, tokenizers):
    import subprocess
    from conftest import sdcoreml_path
    exe = sdcoreml_path().parent / "sdcoreml-testkit"
    for bad in (b"abc\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"):
        r = subprocess.run([str(exe), "tokenize", str(SD1), "77", b"ok " + bad], capture_output=True)
        assert r.returncode == 1 and b"not valid UTF-8" in r.stderr, (bad, r.stderr)
        with pytest.raises(UnicodeDecodeError):
            (b"ok " + bad).decode("utf-8")


def test_overlong_prompt_is_refused(testkit):
    r = testkit("tokenize", SD1, 77, "a" * 20000, check=False)
    assert r.returncode == 1 and "longer than" in r.stderr


def test_long_integers_in_optional_files_are_read(testkit, tmp_path):
    # transformers writes int(1e30) for "no limit"; such integers may sit in either JSON file
    d = broken(tmp_path, "tok", lambda d: None)
    m = json.loads((d / "special_tokens_map.json").read_text())
    m["model_max_length"] = 10**30
    (d / "special_tokens_map.json").write_text(json.dumps(m))
    ref = CLIPTokenizer.from_pretrained(str(d))
    _, pad, got = ours(testkit, d, 77, ["a photo of a cat"])
    assert pad == ref.pad_token_id
    assert got[0][1] == ref("a photo of a cat", padding="max_length", max_length=77).input_ids


def broken(tmp_path, name, change):
    d = tmp_path / name
    shutil.copytree(SD1, d)
    change(d)
    return d


BROKEN = {
    "no vocab": (lambda d: (d / "vocab.json").unlink(), "vocab.json"),
    "vocab not json": (lambda d: (d / "vocab.json").write_text("{"), "vocab.json"),
    "vocab a list": (lambda d: (d / "vocab.json").write_text("[1, 2]"), "vocab.json"),
    "vocab id a string": (lambda d: (d / "vocab.json").write_text('{"a": "1"}'), "vocab.json"),
    "vocab id negative": (lambda d: (d / "vocab.json").write_text('{"a": -1}'), "vocab.json"),
    "no merges": (lambda d: (d / "merges.txt").unlink(), "merges.txt"),
    "merges not utf-8": (lambda d: (d / "merges.txt").write_bytes(b"#v\n\xff \xfe\n"), "merges.txt"),
    "config not json": (lambda d: (d / "tokenizer_config.json").write_text("{,"), "tokenizer_config.json"),
    # (without added_tokens_decoder special_tokens_map.json would override the config: as
    # transformers, and tested with the legacy shape above; these configs have one)
    "pad not in vocab": (lambda d: (d / "tokenizer_config.json").write_text(
        '{"added_tokens_decoder": {}, "pad_token": "<pad>"}'), "tokenizer_config.json"),
    "bad added token": (lambda d: (d / "tokenizer_config.json").write_text('{"added_tokens_decoder": {"x": {}}}'),
                        "tokenizer_config.json"),
    "bos not a string": (lambda d: (d / "tokenizer_config.json").write_text(
        '{"added_tokens_decoder": {}, "bos_token": 5}'), "tokenizer_config.json"),
    "legacy added tokens": (lambda d: (d / "added_tokens.json").write_text("{}"), "added_tokens.json"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_tokenizer_files_fail_cleanly(testkit, tmp_path, case):
    change, file = BROKEN[case]
    d = broken(tmp_path, "tok", change)
    r = testkit("tokenize", d, 77, "hello", check=False)
    assert r.returncode == 1, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and file in lines[0], r.stderr
