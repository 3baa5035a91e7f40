"""Every Python block of the README parses; the examples run and the API stubs match the code.

A ```python block is either runnable (it starts with an import and runs as written) or the
API stubs (only ``def``/``class`` stubs and annotated names), whose signatures must be those
of the package. Any other kind of block fails, so none can slip past both checks.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn
import pytest

import lucid_mlx

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
FENCE = re.compile(r"^```(\S*)[ \t]*\n(.*?)^```[ \t]*$", flags=re.DOTALL | re.MULTILINE)
# (line number of the opening fence, language tag, source)
FENCED = [
    (TEXT.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in FENCE.finditer(TEXT)
]
BLOCKS = [(line, source) for line, language, source in FENCED if language == "python"]
RUNNABLE = [(line, src) for line, src in BLOCKS if src.lstrip().startswith(("import", "from"))]
STUBS = [(line, src) for line, src in BLOCKS if (line, src) not in RUNNABLE]
# What the stubs' annotations and defaults may name.
STUB_NAMES: dict[str, Any] = {
    "mx": mx,
    "nn": nn,
    "Callable": Callable,
    "Iterable": Iterable,
    "NamedTuple": NamedTuple,
}


def _ids(blocks: list[tuple[int, str]]) -> list[str]:
    return [f"README.md:{line}" for line, _ in blocks]


def test_readme_has_runnable_examples_and_api_stubs():
    assert len(RUNNABLE) >= 3
    assert len(STUBS) == 1


def test_python_blocks_use_the_python_tag():
    # A block tagged py, python3 or pycon would escape every check below.
    other = [(line, tag) for line, tag, _ in FENCED if tag.startswith("py") and tag != "python"]
    assert not other, other


@pytest.mark.parametrize(("line", "block"), BLOCKS, ids=_ids(BLOCKS))
def test_python_block_parses(line, block):
    ast.parse(block, filename=f"README.md:{line}")


@pytest.mark.parametrize(("line", "block"), RUNNABLE, ids=_ids(RUNNABLE))
def test_readme_example_runs(line, block):
    namespace: dict = {}
    exec(compile(block, f"README.md:{line}", "exec"), namespace)
    if "step" in namespace:  # the compiled training step, as the README leaves it
        model = namespace["model"]
        assert model.training, "the README's step must be traced in training mode"
        x = mx.random.normal((4, 8, 8, 3))
        target = mx.zeros((4, 8, 8, 32))
        before = model.layers[0].weight
        losses = [namespace["step"](x, target).item() for _ in range(3)]
        assert not mx.array_equal(model.layers[0].weight, before)  # the step updates
        assert len(set(losses)) == 3  # new parameters and new masks every call


def _public(name: str) -> Any:
    for module in (lucid_mlx, lucid_mlx.init):
        if name in module.__all__:
            return getattr(module, name)
    raise AssertionError(f"the README's API stubs name {name!r}, which is not public")


def _annotation(node: ast.expr | None) -> str | None:
    return None if node is None else ast.unparse(node)


def _stub_signature(node: ast.FunctionDef) -> list[tuple[str, str, str | None, object]]:
    """(kind, name, annotation, default) per parameter of a stub, defaults evaluated."""
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    kinds = ["POSITIONAL_ONLY"] * len(args.posonlyargs) + ["POSITIONAL_OR_KEYWORD"] * len(args.args)
    params = [
        (kind, arg, default) for kind, arg, default in zip(kinds, positional, defaults, strict=True)
    ]
    if args.vararg is not None:
        params.append(("VAR_POSITIONAL", args.vararg, None))
    params += [
        ("KEYWORD_ONLY", arg, default)
        for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True)
    ]
    if args.kwarg is not None:
        params.append(("VAR_KEYWORD", args.kwarg, None))
    empty = inspect.Parameter.empty
    return [
        (
            kind,
            arg.arg,
            _annotation(arg.annotation),
            empty if default is None else eval(ast.unparse(default), dict(STUB_NAMES)),
        )
        for kind, arg, default in params
    ]


def _real_signature(function: Callable[..., Any]) -> list[tuple[str, str, str | None, object]]:
    def normalized(annotation: object) -> str | None:
        if annotation is inspect.Parameter.empty:
            return None
        # The package uses postponed annotations, so these are source strings; unparse them
        # the same way as the stubs' to compare text, not formatting.
        return ast.unparse(ast.parse(str(annotation), mode="eval"))

    return [
        (param.kind.name, param.name, normalized(param.annotation), param.default)
        for param in inspect.signature(function).parameters.values()
    ]


def _text(annotation: object) -> str:
    """An annotation as source text: postponed ones are strings, or ForwardRefs in a NamedTuple."""
    if isinstance(annotation, str):
        return annotation
    if hasattr(annotation, "__forward_arg__"):
        return str(annotation.__forward_arg__)
    return annotation.__name__ if isinstance(annotation, type) else repr(annotation)


def _check_function(node: ast.FunctionDef, function: Callable[..., Any], where: str) -> None:
    body = [ast.unparse(statement) for statement in node.body]
    assert body == ["..."], f"{where}: a stub's body is `...`"
    stub, real = _stub_signature(node), _real_signature(function)
    assert [s[:3] for s in stub] == [r[:3] for r in real], where
    for (_, name, _, stub_default), (_, _, _, real_default) in zip(stub, real, strict=True):
        assert type(stub_default) is type(real_default), f"{where}: default of {name}"
        assert stub_default == real_default, f"{where}: default of {name}"
    real_return = inspect.signature(function).return_annotation
    assert _annotation(node.returns) == ast.unparse(ast.parse(real_return, mode="eval")), where


def _check_class(node: ast.ClassDef, cls: type) -> None:
    for base in node.bases:
        if ast.unparse(base) == "NamedTuple":
            assert issubclass(cls, tuple), cls
            assert hasattr(cls, "_fields"), cls
        else:
            assert issubclass(cls, eval(ast.unparse(base), dict(STUB_NAMES))), cls
    fields = [s for s in node.body if isinstance(s, ast.AnnAssign)]
    if fields:
        stub_fields = {ast.unparse(s.target): ast.unparse(s.annotation) for s in fields}
        assert stub_fields == {name: _text(a) for name, a in cls.__annotations__.items()}, cls
    for method in node.body:
        if isinstance(method, ast.FunctionDef):
            where = f"{cls.__name__}.{method.name}"
            _check_function(method, getattr(cls, method.name), where)


def test_api_stubs_match_the_package():
    (_, block) = STUBS[0]
    documented = set()
    for node in ast.parse(block).body:
        if isinstance(node, ast.FunctionDef):
            _check_function(node, _public(node.name), node.name)
        elif isinstance(node, ast.ClassDef):
            _check_class(node, _public(node.name))
        elif isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "__version__":
            assert isinstance(lucid_mlx.__version__, eval(ast.unparse(node.annotation)))
        else:
            raise AssertionError(f"not a stub: {ast.unparse(node)}")
        documented.add(getattr(node, "name", "__version__"))
    public = {*lucid_mlx.__all__, *lucid_mlx.init.__all__} - {"init"}
    assert documented == public
