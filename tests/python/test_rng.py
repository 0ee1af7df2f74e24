"""Initial latents: sdcoreml's MT19937 + legacy Gaussian against NumPy's RandomState(seed).randn,
bit for bit (the anchor's pipeline seeds np.random and draws its latents with randn)."""

import numpy as np
import pytest

CASES = [
    (0, (5,)),
    (93, (1, 4, 64, 64)),  # the anchor's default seed, SD 1.x latents at 512x512
    (93, (1, 4, 128, 128)),  # SDXL at 1024x1024: past many state regenerations
    (1, (3, 7)),  # odd count: the cached second Gaussian is left over
    (2**32 - 1, (2, 4, 8, 8)),  # the largest seed numpy takes
    (123456789, (1, 4, 96, 64)),
]


@pytest.mark.parametrize("seed,shape", CASES)
def test_randn_bit_for_bit(testkit, tmp_path, seed, shape):
    out = tmp_path / "latents.npy"
    r = testkit("randn", seed, out, *shape)
    got = np.array([float(v) for v in r.stdout.split()], dtype=np.float64)
    want = np.random.RandomState(seed).randn(*shape)
    assert got.shape == (want.size,)
    assert np.array_equal(got.view(np.uint64), want.reshape(-1).view(np.uint64))
    saved = np.load(out)
    assert saved.dtype == np.float32 and saved.shape == shape
    assert np.array_equal(saved, want.astype(np.float32))


def test_global_seed_is_the_same_stream(testkit, tmp_path):
    # the anchor calls np.random.seed(seed) then np.random.randn: the same stream as RandomState
    np.random.seed(7)
    want = np.random.randn(2, 3)
    r = testkit("randn", 7, tmp_path / "x.npy", 2, 3)
    assert [float(v) for v in r.stdout.split()] == list(want.reshape(-1))


def test_seed_out_of_numpy_range_is_refused(testkit, tmp_path):
    with pytest.raises(ValueError):
        np.random.RandomState(2**32)
    assert testkit("randn", 2**32, tmp_path / "x.npy", 2, check=False).returncode != 0
