"""The device the whole suite runs on: ``LUCID_MLX_TEST_DEVICE=cpu`` (or ``gpu``).

Unset or empty, the suite runs on MLX's default device (the GPU where MLX has a GPU backend).
``cpu`` puts every test on MLX's CPU device, as on a machine whose GPU compute cannot be relied
on (the paravirtual GPU of a hosted macOS virtual machine); the GPU-marked tests then skip with
their reason. ``gpu`` insists on the GPU: without a GPU backend the run stops instead of
skipping those tests.

pytest imports this file, and runs ``pytest_configure``, before it imports any test module, so
what a test module computes at import (``HAS_GPU`` in ``test_kernels.py``) sees this device.
Examples and scripts that tests start in a subprocess choose their own device (``--cpu``).
"""

from __future__ import annotations

import os

import mlx.core as mx
import pytest

DEVICE_VARIABLE = "LUCID_MLX_TEST_DEVICE"
DEVICES = {"cpu": mx.cpu, "gpu": mx.gpu}


def requested_device(value: str | None) -> mx.DeviceType | None:
    """The device ``value`` names, or ``None`` (unset or empty) for MLX's default."""
    if not value:
        return None
    if value not in DEVICES:
        allowed = ", ".join(f"'{name}'" for name in DEVICES)
        raise pytest.UsageError(f"{DEVICE_VARIABLE} must be {allowed} or unset but got {value!r}")
    return DEVICES[value]


def pytest_configure(config: pytest.Config) -> None:
    value = os.environ.get(DEVICE_VARIABLE)
    device = requested_device(value)
    if device is None:
        return
    try:
        mx.set_default_device(device)
    except ValueError as error:  # gpu without a GPU backend
        raise pytest.UsageError(f"{DEVICE_VARIABLE}={value}: {error}") from None


def pytest_report_header(config: pytest.Config) -> str:
    value = os.environ.get(DEVICE_VARIABLE) or "unset"
    return (
        f"mlx {mx.__version__}, default device {mx.default_device()} ({DEVICE_VARIABLE}: {value})"
    )
