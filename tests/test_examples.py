"""The examples run, in a reduced mode, as a user would run them."""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
              "--size", "8", "--batch", "4", "--plot", str(plot), "--cpu")  # fmt: skip
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
         str(EXAMPLES / "train_distributed.py"), "--epochs", "1", "--cpu", *script_args],
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


# (script, flags, what argparse says about the last flag given): one row per kind of error.
BAD_FLAGS = [
    ("train_digits.py", "--epochs 0", "must be a positive integer but got '0'"),
    ("train_digits.py", "--p 1.5", "must be a probability in [0, 1) but got '1.5'"),
    ("train_digits.py", "--lr nan", "must be a positive number but got 'nan'"),
    ("train_digits.py", "--batch-size 5000",
     "must be at most the 1437 training images but got 5000"),
    ("train_digits.py", "--resume", "needs --checkpoint-dir"),
    ("train_digits.py", "--checkpoint-dir pyproject.toml",
     "must be a folder but 'pyproject.toml' is a file"),
    ("train_digits.py", "--checkpoint-dir pyproject.toml/run",
     "cannot write a checkpoint in 'pyproject.toml/run' (Not a directory)"),
    ("train_distributed.py", "--seed -1", "must be an integer in [0, 4294967295] but got '-1'"),
    ("self_normalization.py", "--plot out.txt",
     "must be a file name ending in .png, .pdf, .svg but got 'out.txt'"),
    ("self_normalization.py", "--plot pyproject.toml/x.png",
     "must be inside a folder but 'pyproject.toml' is a file (in 'pyproject.toml/x.png')"),
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


def _example_module(name: str) -> Any:
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


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
    assert getattr(_example_module("_common"), name)(text) == value


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("positive_int", "0"),
        ("positive_int", "2.5"),
        ("random_seed", "4294967296"),
        ("positive_float", "inf"),
        ("positive_float", "-1e-3"),
        ("dropout_probability", "1"),
    ],
)
def test_cli_types_refuse(name, text):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(text))):
        getattr(_example_module("_common"), name)(text)


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


def _read_checkpoint(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
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
    _, metadata = _read_checkpoint(killed)
    assert metadata["epoch"] == "1", "the kill did not land in epoch 2"
    resumed = _train_digits("--checkpoint-dir", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines()[0] == f"resumed from {killed} after epoch 1"
    expected, expected_metadata = _read_checkpoint(whole)
    got, got_metadata = _read_checkpoint(killed)
    assert got.keys() == expected.keys()
    assert any(k.startswith("optimizer.") and k.endswith(".m") for k in got)
    for name, value in expected.items():  # weights, optimizer moments, random key
        assert np.array_equal(got[name], value), name
    assert got_metadata == expected_metadata
    assert resumed.stdout.splitlines()[-1] == uninterrupted.stdout.splitlines()[-1]


@pytest.fixture
def saved(tmp_path):
    """A checkpoint saved in tmp_path, and what load() needs to read it back."""
    common, checkpoint = _example_module("_common"), _example_module("_checkpoint")
    model, optimizer = common.DigitsCNN("feature_alpha", 0.1), common.make_optimizer(1e-3, 10)
    args = (model, optimizer, np.random.default_rng(0), {"seed": 0})
    checkpoint.save(tmp_path, 1, *args)
    return checkpoint, tmp_path / checkpoint.CHECKPOINT, args


def _flip_a_bit(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[-100] ^= 1  # in the last array: still a valid safetensors file
    return bytes(flipped)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "[load_safetensors]"),
        (lambda data: b"", "[read]"),
        (lambda data: b"not a checkpoint" * 10, "[load_safetensors]"),
        (_flip_a_bit, "its contents do not match the checksum written with them"),
    ],
    ids=["truncated", "empty", "not-safetensors", "one-bit-flipped"],
)
def test_a_corrupt_or_truncated_checkpoint_is_an_error_naming_the_file(saved, damage, reason):
    checkpoint, path, args = saved
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.load(path.parent, *args)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path} cannot be resumed ({reason}")


def _refused_resume(folder: Path, *flags: str) -> str:
    """The one line train_digits.py prints when it cannot resume from ``folder``."""
    result = _train_digits(*flags, "--checkpoint-dir", str(folder), "--resume")
    assert result.returncode == 1
    assert result.stdout == ""  # no silent restart from scratch
    (line,) = result.stderr.splitlines()
    return line


def test_a_broken_checkpoint_says_to_delete_it_or_use_another_folder(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(b"not a checkpoint" * 10)
    line = _refused_resume(tmp_path)
    assert line.startswith(f"train_digits.py: error: {path} cannot be resumed (")
    assert line.endswith("): delete it to start over, or point --checkpoint-dir at another folder")


def test_a_save_cut_short_before_the_rename_leaves_the_last_checkpoint(saved, monkeypatch):
    checkpoint, path, (model, *rest) = saved
    before = path.read_bytes()

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # the process dies between writing and renaming

    monkeypatch.setattr(checkpoint.os, "replace", killed)
    model.update(tree_map(lambda w: w + 1, model.parameters()))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path.parent, 2, model, *rest)
    assert (path.parent / checkpoint.PARTIAL).stat().st_size > 0  # the new one went aside
    assert path.read_bytes() == before  # the last checkpoint is untouched and still loads
    assert checkpoint.load(path.parent, model, *rest) == 1


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """The checkpoint folder of a finished 1-epoch run; tests must not change it."""
    folder = tmp_path_factory.mktemp("one_epoch")
    result = _train_digits("--epochs", "1", "--checkpoint-dir", str(folder))
    assert result.returncode == 0, result.stderr
    return folder


def test_a_checkpoint_of_another_run_is_refused(one_epoch_run):
    assert _refused_resume(one_epoch_run, "--epochs", "1", "--seed", "1") == (
        f"train_digits.py: error: {one_epoch_run / 'checkpoint.safetensors'} was written with"
        " --seed 0 (now 1): resume with the flags it was written with, or point"
        " --checkpoint-dir at another folder for a new run"
    )


def test_more_epochs_on_resume_says_why_they_must_match_and_how_to_train_longer(one_epoch_run):
    assert _refused_resume(one_epoch_run, "--epochs", "2") == (
        f"train_digits.py: error: {one_epoch_run / 'checkpoint.safetensors'} was written with"
        " --epochs 1 (now 2): the epoch count must match, because the learning-rate schedule"
        " depends on the total number of steps, so a run cannot be extended; to train for 2"
        " epochs, start a new run with --epochs 2 in another --checkpoint-dir"
    )


def test_an_existing_checkpoint_is_not_overwritten_without_resume(one_epoch_run):
    path = one_epoch_run / "checkpoint.safetensors"
    before = path.read_bytes()
    result = _train_digits("--epochs", "1", "--checkpoint-dir", str(one_epoch_run))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"train_digits.py: error: argument --checkpoint-dir: {str(path)!r} exists:"
        " give --resume to continue it, or another folder"
    )
    assert path.read_bytes() == before
