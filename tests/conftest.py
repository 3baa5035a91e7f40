"""Shared pytest hooks."""

from __future__ import annotations

import sys
from collections import Counter

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say what the kernel harness compiled and ran, so a CI log shows it happened."""
    harness = sys.modules.get("tests.kernel_harness")
    if harness is None:
        return
    stats = harness.STATS
    nvcc = ", ".join(
        f"{target} x{count}" for target, count in sorted(Counter(stats.nvcc_builds).items())
    )
    terminalreporter.write_line(
        f"kernel harness: {stats.gxx_builds} g++ builds, {stats.real_launches} launches of the"
        f" real kernel bodies on the CPU, {stats.imitated_launches} imitated under"
        f" mx.compile/mx.vmap; CUDA builds: {nvcc or 'none'}"
    )
