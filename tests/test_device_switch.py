"""``LUCID_MLX_TEST_DEVICE`` (tests/conftest.py): the switch that puts the suite on a device."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from tests.conftest import DEVICE_VARIABLE, requested_device

CONFTEST = Path(__file__).with_name("conftest.py")

# A test module that records the default device when pytest imports it, as test_kernels.py
# does for HAS_GPU.
PROBE = """
import sys

import mlx.core as mx

AT_IMPORT = mx.default_device()
assert "conftest" in sys.modules, "pytest imported the test module before the conftest"


def test_probe():
    assert AT_IMPORT == mx.cpu, AT_IMPORT
    assert mx.default_device() == mx.cpu, mx.default_device()
"""


def _pytest_in(folder: Path, value: str) -> subprocess.CompletedProcess[str]:
    """A pytest run of ``folder`` (this conftest and the probe) with the switch set to ``value``."""
    shutil.copy(CONFTEST, folder / "conftest.py")
    (folder / "test_probe.py").write_text(PROBE)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_probe.py"],
        cwd=folder, env={**os.environ, DEVICE_VARIABLE: value},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_cpu_is_the_default_device_before_test_modules_are_imported(tmp_path):
    result = _pytest_in(tmp_path, "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"default device Device(cpu, 0) ({DEVICE_VARIABLE}: cpu)" in result.stdout


@pytest.mark.skipif(
    mx.metal.is_available() or mx.cuda.is_available(),
    reason="needs a machine without a GPU backend",
)
def test_gpu_without_a_gpu_backend_stops_the_run_before_any_test(tmp_path):
    result = _pytest_in(tmp_path, "gpu")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert f"{DEVICE_VARIABLE}=gpu: [set_default_device] Cannot set gpu device" in result.stderr
    assert "test_probe" not in result.stdout


def test_unset_or_empty_leaves_mlx_default():
    assert requested_device(None) is None
    assert requested_device("") is None


@pytest.mark.parametrize(("value", "device"), [("cpu", mx.cpu), ("gpu", mx.gpu)])
def test_known_values(value, device):
    assert requested_device(value) == device


@pytest.mark.parametrize("value", ["CPU", "metal", "cuda", "cpu "])
def test_an_unknown_value_is_a_usage_error_that_names_the_variable(value):
    message = f"{DEVICE_VARIABLE} must be 'cpu', 'gpu' or unset but got {value!r}"
    with pytest.raises(pytest.UsageError) as raised:
        requested_device(value)
    assert str(raised.value) == message
