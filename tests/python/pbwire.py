"""Protocol-buffer wire encoding, by hand, for tests that build Core ML model files byte by byte
(hostile packages in test_hostile_packages.py, fuzz seeds in tests/fuzz/make_corpus.py). Standard
library only, so the fuzz corpus maker can use it without the test venv."""


def varint(n):
    """Base-128 varint, low group first."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def fld(num, payload):
    """A length-delimited field (wire type 2): bytes, strings and embedded messages."""
    payload = payload.encode() if isinstance(payload, str) else payload
    return varint((num << 3) | 2) + varint(len(payload)) + payload


def vint(num, v):
    """A varint field (wire type 0)."""
    return varint(num << 3) + varint(v)
