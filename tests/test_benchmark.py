"""benchmarks/bench_dropout.py: its flags, and that it says which rows it skips and why.

The benchmark itself prints timings and asserts nothing; it is not run here beyond one tiny
shape, with torch hidden, to check what it says about the rows it cannot produce.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_dropout.py"


def _run(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), *args]
    if code is not None:  # run the script from a snippet that prepares the interpreter first
        command = [sys.executable, "-c", code, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--repeats 0", "argument --repeats: must be a positive integer but got '0'"),
        ("--repeats -3", "argument --repeats: must be a positive integer but got '-3'"),
        ("--repeats 2.5", "argument --repeats: must be a positive integer but got '2.5'"),
        ("--small-repeats 0", "argument --small-repeats: must be a positive integer but got '0'"),
        (
            "--shapes foo",
            "argument --shapes: must be an NHWC shape, four positive integers joined by 'x'"
            " such as 32x56x56x64, but got 'foo'",
        ),
        (
            "--shapes 32x56x64",
            "argument --shapes: must be an NHWC shape, four positive integers joined by 'x'"
            " such as 32x56x56x64, but got '32x56x64'",
        ),
        (
            "--shapes 2x2x2x-4",
            "argument --shapes: must be an NHWC shape, four positive integers joined by 'x'"
            " such as 32x56x56x64, but got '2x2x2x-4'",
        ),
        ("--small-shapes 0x8x8x16", "argument --small-shapes: must have no axis of size 0"
                                    " but got '0x8x8x16'"),
        ("--shapes", "argument --shapes: expected at least one argument"),
    ],
)  # fmt: skip
def test_bad_flag_is_a_one_line_argparse_error(flags, message):
    result = _run(*flags.split())
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"bench_dropout.py: error: {message}"


def test_help_shows_every_default():
    result = _run("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "interleaved rounds per shape (default: 30)" in text
    assert "(default: 32x56x56x64 64x28x28x128 128x14x14x256)" in text
    assert "(default: 1000)" in text
    assert "(default: 32x8x8x16 128x8x8x32)" in text


def test_rows_it_cannot_produce_are_named_with_the_reason():
    # torch hidden (an import of a module set to None raises ImportError), one tiny shape.
    hide_torch = (
        "import runpy, sys; sys.modules['torch'] = None;"
        f" runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    result = _run("--repeats", "1", "--shapes", "2x3x3x8", "--small-shapes", code=hide_torch)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("skipped: torch rows: torch is not installed") for line in lines)
    assert any(line.startswith("skipped: small eager calls: --small-shapes was given no shapes")
               for line in lines)  # fmt: skip
    assert not any(line.startswith("torch ") for line in lines)
    assert any(line.startswith("FeatureAlphaDropout ") for line in lines)
    assert any(line.startswith("load average ") and "targets missed" in line for line in lines)
