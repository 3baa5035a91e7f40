"""The examples run, in a reduced mode, as a user would run them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytest.importorskip("sklearn", reason="the examples extra (scikit-learn) is not installed")


def run(*args: str, timeout: float = 300) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_self_normalization_example(tmp_path):
    pytest.importorskip("matplotlib", reason="the examples extra (matplotlib) is not installed")
    plot = tmp_path / "plot.png"
    out = run(sys.executable, str(EXAMPLES / "self_normalization.py"), "--depth", "4",
              "--size", "8", "--batch", "4", "--plot", str(plot))  # fmt: skip
    assert "FeatureAlphaDropout" in out
    assert "final block:" in out
    assert plot.stat().st_size > 10_000


def test_train_digits_example():
    out = run(sys.executable, str(EXAMPLES / "train_digits.py"), "--epochs", "2", "--cpu")
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(r"test accuracy: (0\.\d{4}|1\.0000)", last)
    assert match, last
    assert float(match.group(1)) > 0.8  # two epochs already reach about 0.94


def _launch(*script_args: str) -> str:
    launcher = shutil.which("mlx.launch", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("mlx.launch is not installed next to this Python")
    result = subprocess.run(
        [launcher, "--backend", "ring", "-n", "2", "--python", sys.executable,
         str(EXAMPLES / "train_distributed.py"), "--epochs", "1", *script_args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    # mlx.launch (0.32.4) exits 0 even when a rank fails; it prints a warning instead.
    return result.stdout + result.stderr


def test_distributed_example_two_processes_on_loopback():
    out = _launch()
    assert "2 process(es)" in out
    assert "dropout masks differ across ranks: yes" in out
    assert "parameters identical across ranks: yes" in out
    assert "exited with code" not in out, out


def test_distributed_example_detects_identical_masks():
    out = _launch("--same-dropout-seed")
    assert "dropout masks differ across ranks: NO" in out
    assert re.search(r"rank \d exited with code 1", out), out
