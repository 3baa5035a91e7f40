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
    if "step" in namespace:  # the compiled training step, as the README leaves it
        model = namespace["model"]
        assert model.training, "the README's step must be traced in training mode"
        x = mx.random.normal((4, 8, 8, 3))
        target = mx.zeros((4, 8, 8, 32))
        before = model.layers[0].weight
        losses = [namespace["step"](x, target).item() for _ in range(3)]
        assert not mx.array_equal(model.layers[0].weight, before)  # the step updates
        assert len(set(losses)) == 3  # new parameters and new masks every call
