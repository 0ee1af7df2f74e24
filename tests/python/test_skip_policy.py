"""The skip policy of conftest.py: a skip whose reason is not on ALLOWED_SKIPS fails the pytest
run (exit 1) although every test passed; an allowed one does not."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ALLOWED_SKIPS

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("reason,code", [("not built yet", 1), (next(iter(ALLOWED_SKIPS)), 0)])
def test_unlisted_skip_fails_the_run(tmp_path, reason, code):
    (tmp_path / "test_s.py").write_text(f"import pytest\n\ndef test_ok():\n    pass\n\n"
                                        f"def test_skipped():\n    pytest.skip({reason!r})\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                        "test_s.py"], cwd=tmp_path, env={"PYTHONPATH": str(HERE), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == code, r.stdout + r.stderr
    assert ("skips not on conftest.ALLOWED_SKIPS" in r.stdout) == (code == 1), r.stdout
