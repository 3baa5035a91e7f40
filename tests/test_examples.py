"""The examples run, in a reduced mode, as a user would run them."""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map

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


# (script, flags, what argparse says about the last flag given)
BAD_FLAGS = [
    ("train_digits.py", "--epochs 0", "must be a positive integer but got '0'"),
    ("train_digits.py", "--epochs -1", "must be a positive integer but got '-1'"),
    ("train_digits.py", "--p 1.5", "must be a probability in [0, 1) but got '1.5'"),
    ("train_digits.py", "--lr nan", "must be a positive number but got 'nan'"),
    ("train_digits.py", "--batch-size 5000",
     "must be at most the 1437 training images but got 5000"),
    ("train_distributed.py", "--seed -1", "must be an integer in [0, 4294967295] but got '-1'"),
    ("train_distributed.py", "--batch-size 0", "must be a positive integer but got '0'"),
    ("self_normalization.py", "--p 1", "must be a probability in [0, 1) but got '1'"),
    ("self_normalization.py", "--depth two", "must be a positive integer but got 'two'"),
    ("self_normalization.py", "--plot out.txt",
     "must be a file name ending in .png, .pdf, .svg but got 'out.txt'"),
    ("self_normalization.py", "--plot pyproject.toml/x.png",
     "must be inside a folder but 'pyproject.toml' is a file (in 'pyproject.toml/x.png')"),
    ("self_normalization.py", "--plot tests", "must be a file name ending in .png, .pdf, .svg"
     " but got 'tests'"),
    ("self_normalization.py", "--plot x.png --no-plot", "not allowed with argument --plot"),
]  # fmt: skip


@pytest.mark.parametrize(("script", "flags", "message"), BAD_FLAGS)
def test_bad_flag_is_a_one_line_argparse_error(script, flags, message):
    args = flags.split()
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *args],
                            capture_output=True, text=True, timeout=60, check=False,
                            cwd=EXAMPLES.parent)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    flag = [arg for arg in args if arg.startswith("--")][-1]
    assert result.stderr.splitlines()[-1] == f"{script}: error: argument {flag}: {message}"


def _common():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import _common
    finally:
        sys.path.remove(str(EXAMPLES))
    return _common


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("positive_int", "3", 3),
        ("random_seed", "0", 0),
        ("random_seed", "4294967295", 2**32 - 1),
        ("positive_float", "1e-3", 1e-3),
        ("dropout_probability", "0", 0.0),
        ("dropout_probability", "0.99", 0.99),
    ],
)
def test_cli_types_accept(name, text, value):
    assert getattr(_common(), name)(text) == value


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("positive_int", "0"),
        ("positive_int", "2.5"),
        ("random_seed", "4294967296"),
        ("positive_float", "inf"),
        ("positive_float", "-1e-3"),
        ("dropout_probability", "1"),
        ("dropout_probability", "-0.1"),
    ],
)
def test_cli_types_refuse(name, text):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(text))):
        getattr(_common(), name)(text)


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("[!_]*.py")))
def test_help_shows_every_default(script):
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--help"],
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    options = result.stdout.split("options:", 1)[1]
    # One entry per option: its first line starts with "  -", continuations are indented more.
    entries = re.split(r"\n(?=  -)", options.strip("\n"))
    missing = [e.split()[0] for e in entries if "-h, --help" not in e and "default" not in e]
    assert not missing, f"{script} --help shows no default for {missing}"


# ---- train_digits.py: a checkpoint after every epoch, and a resume bit for bit -------------

RESUME_FLAGS = ("--epochs", "3", "--batch-size", "128", "--cpu")


def _train_digits(*flags: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(EXAMPLES / "train_digits.py"), *RESUME_FLAGS, *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _checkpoint(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    arrays, metadata = mx.load(str(folder / "checkpoint.safetensors"), return_metadata=True)
    return {k: np.array(v) for k, v in arrays.items()}, metadata


def test_training_killed_mid_epoch_resumes_bit_for_bit(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = _train_digits("--checkpoint-dir", str(whole))
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "train_digits.py"), *RESUME_FLAGS,
         "--checkpoint-dir", str(killed)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once epoch 1's checkpoint is on disk
        assert line.startswith("epoch   1"), line + process.stderr.read()
        time.sleep(0.2)  # into epoch 2, which takes about 1 s here
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL
    _, metadata = _checkpoint(killed)
    assert metadata["epoch"] == "1", "the kill did not land in epoch 2"
    resumed = _train_digits("--checkpoint-dir", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines()[0].startswith("resumed from ")
    assert "after epoch 1" in resumed.stdout.splitlines()[0]
    expected, expected_metadata = _checkpoint(whole)
    got, got_metadata = _checkpoint(killed)
    assert got.keys() == expected.keys()
    assert any(k.startswith("optimizer.") and k.endswith(".m") for k in got)
    for name, value in expected.items():  # weights, optimizer moments, random key
        assert np.array_equal(got[name], value), name
    assert got_metadata == expected_metadata
    assert resumed.stdout.splitlines()[-1] == uninterrupted.stdout.splitlines()[-1]


def test_a_corrupt_or_truncated_checkpoint_is_an_error_naming_the_file(tmp_path):
    folder = tmp_path / "run"
    assert _train_digits("--epochs", "1", "--checkpoint-dir", str(folder)).returncode == 0
    path = folder / "checkpoint.safetensors"
    whole = path.read_bytes()
    flipped = bytearray(whole)
    flipped[-100] ^= 1  # one bit of the last array: still a valid safetensors file
    for broken in (whole[: len(whole) // 2], b"", b"not a checkpoint" * 10, bytes(flipped)):
        path.write_bytes(broken)
        result = _train_digits("--checkpoint-dir", str(folder), "--resume")
        assert result.returncode == 1
        assert result.stdout == ""  # no silent restart from scratch
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"train_digits.py: error: {path} is not a readable checkpoint")
    assert line.endswith("(its contents do not match the checksum written with them)")


def test_a_save_cut_short_before_the_rename_leaves_the_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    train_digits = pytest.importorskip("train_digits")
    model = train_digits.DigitsCNN("feature_alpha", 0.1)
    optimizer = train_digits.make_optimizer(1e-3, 10)
    run = {"seed": 0}
    train_digits.save_checkpoint(tmp_path, 1, model, optimizer, np.random.default_rng(0), run)
    path = tmp_path / train_digits.CHECKPOINT
    saved = path.read_bytes()

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # the process dies between writing and renaming

    monkeypatch.setattr(train_digits.os, "replace", killed)
    model.update(tree_map(lambda w: w + 1, model.parameters()))
    with pytest.raises(KeyboardInterrupt):
        train_digits.save_checkpoint(tmp_path, 2, model, optimizer, np.random.default_rng(0), run)
    assert (tmp_path / train_digits.PARTIAL).stat().st_size > 0  # the new one went aside
    assert path.read_bytes() == saved  # the last checkpoint is untouched and still loads
    epoch = train_digits.load_checkpoint(
        path, train_digits.DigitsCNN("feature_alpha", 0.1), optimizer,
        np.random.default_rng(0), run,
    )  # fmt: skip
    assert epoch == 1


def test_a_folder_that_cannot_take_a_checkpoint_is_refused_before_training(tmp_path):
    (tmp_path / "afile").write_text("")
    result = _train_digits("--checkpoint-dir", str(tmp_path / "afile" / "run"))
    assert result.returncode == 2
    assert result.stdout == ""  # nothing trained
    assert result.stderr.splitlines()[-1] == (
        "train_digits.py: error: argument --checkpoint-dir: cannot write a checkpoint in"
        f" {str(tmp_path / 'afile' / 'run')!r} (Not a directory)"
    )


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    folder = tmp_path / "run"
    assert _train_digits("--epochs", "1", "--checkpoint-dir", str(folder)).returncode == 0
    result = _train_digits(
        "--epochs", "1", "--seed", "1", "--checkpoint-dir", str(folder), "--resume"
    )
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "belongs to another run: it was written with --seed 0 (now 1)"
    )
    again = _train_digits("--checkpoint-dir", str(folder))  # without --resume: not overwritten
    assert again.returncode == 2
    assert "give --resume to continue it, or another folder" in again.stderr
