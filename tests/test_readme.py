"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import mlx.core as mx
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
RUNNABLE = [block for block in BLOCKS if block.lstrip().startswith(("import", "from"))]


def test_readme_has_runnable_examples():
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"block{i}" for i in range(len(RUNNABLE))])
def test_readme_example_runs(block):
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    if "step" in namespace:  # the compiled training step: run it twice, check it learns
        x = mx.random.normal((4, 8, 8, 3))
        target = mx.zeros((4, 8, 8, 32))
        namespace["model"].train()
        losses = [namespace["step"](x, target).item() for _ in range(2)]
        assert all(loss > 0 for loss in losses)
