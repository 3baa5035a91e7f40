"""Generate the reference section of docs/api.md from the package's signatures and docstrings.

    python docs/generate_api.py           # rewrite the generated part of docs/api.md
    python docs/generate_api.py --check   # exit 1 if docs/api.md is not what this generates

Only the text between the two markers below is generated; the rest of the page is written by
hand. ``tests/test_docs.py`` fails when the generated part differs from what the docstrings
give, so the reference cannot drift from the code. The docstrings are Google style with
reStructuredText roles (as in MLX); this turns them into GitHub Markdown: ``code`` spans,
``:math:`` as GitHub math, ``.. math::`` blocks as math blocks, ``>>>`` examples as ``pycon``
blocks (which the docs tests run), and the ``Args:``/``Returns:``/``Raises:``/``Shape:``
sections as lists. Signatures are printed as stubs in the layout ``ruff format`` gives.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

API = Path(__file__).resolve().with_name("api.md")
BEGIN = "<!-- BEGIN GENERATED REFERENCE: python docs/generate_api.py -->"
END = "<!-- END GENERATED REFERENCE -->"
LINE_LENGTH = 100
SECTIONS = ("Args", "Returns", "Raises", "Shape", "Example", "Examples")


def _annotation(annotation: Any) -> str:
    if isinstance(annotation, str):  # the package uses postponed annotations
        return annotation
    if hasattr(annotation, "__forward_arg__"):
        return str(annotation.__forward_arg__)
    return annotation.__name__ if isinstance(annotation, type) else repr(annotation)


def _parameters(function: Callable[..., Any], skip_self: bool) -> list[str]:
    parts: list[str] = []
    star_done = False
    for index, param in enumerate(inspect.signature(function).parameters.values()):
        if skip_self and index == 0:
            continue
        if param.kind is param.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if param.kind is param.VAR_POSITIONAL:
            star_done = True
        prefix = {param.VAR_POSITIONAL: "*", param.VAR_KEYWORD: "**"}.get(param.kind, "")
        text = prefix + param.name
        if param.annotation is not param.empty:
            text += f": {_annotation(param.annotation)}"
            if param.default is not param.empty:
                text += f" = {_default(param.default)}"
        elif param.default is not param.empty:
            text += f"={_default(param.default)}"
        parts.append(text)
        if param.kind is param.POSITIONAL_ONLY and (
            index + 1 == len(inspect.signature(function).parameters)
            or list(inspect.signature(function).parameters.values())[index + 1].kind
            is not param.POSITIONAL_ONLY
        ):
            parts.append("/")
    return parts


def _default(value: Any) -> str:
    text = repr(value)
    return {"mlx.core.float32": "mx.float32"}.get(text, text)


def _stub(name: str, parameters: list[str], returns: str, indent: str = "") -> str:
    """A ``def`` stub laid out as ruff format lays it out for this line length."""
    head, tail = f"{indent}def {name}(", f") -> {returns}: ..."
    one_line = head + ", ".join(parameters) + tail
    if len(one_line) <= LINE_LENGTH:
        return one_line
    inner = indent + "    "
    packed = inner + ", ".join(parameters)
    if len(packed) <= LINE_LENGTH and len(indent + tail) <= LINE_LENGTH:
        return f"{head}\n{packed}\n{indent}{tail}"
    lines = [f"{inner}{parameter}," for parameter in parameters]
    return "\n".join([head, *lines, indent + tail])


def _signature(qualified: str, obj: Any) -> str:
    name = qualified.rsplit(".", 1)[-1]
    if inspect.isclass(obj) and issubclass(obj, tuple) and hasattr(obj, "_fields"):
        fields = [
            f"    {field}: {_annotation(obj.__annotations__[field])}" for field in obj._fields
        ]
        return "\n".join([f"class {name}(NamedTuple):", *fields])
    if inspect.isclass(obj):
        base = "nn.Module" if any(b.__module__.startswith("mlx") for b in obj.__mro__[1:]) else ""
        methods = [
            _stub(
                method,
                ["self", *_parameters(getattr(obj, method), skip_self=True)],
                _annotation(inspect.signature(getattr(obj, method)).return_annotation),
                indent="    ",
            )
            for method in ("__init__", "__call__")
        ]
        return "\n".join([f"class {name}({base}):", *methods])
    if callable(obj):
        returns = _annotation(inspect.signature(obj).return_annotation)
        return _stub(name, _parameters(obj, skip_self=False), returns)
    return f"{name}: {type(obj).__name__}"


_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data):`~?([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def _inline(text: str) -> str:
    text = _MATH.sub(lambda m: f"$`{m.group(1)}`$", text)
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    return _LITERAL.sub(lambda m: f"`{m.group(1)}`", text)


def _paragraphs(lines: list[str]) -> list[str]:
    """Body text: paragraphs, ``.. math::`` blocks and ``>>>`` examples."""
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.strip() == ".. math::":
            index += 1
            block: list[str] = []
            while index < len(lines) and (not lines[index].strip() or lines[index][:1] == " "):
                block.append(lines[index])
                index += 1
            math = inspect.cleandoc("\n".join(block))
            for equation in re.split(r"\n\s*\n", math):
                out += ["```math", equation.strip(), "```", ""]
            continue
        if line.lstrip().startswith(">>>"):
            example = []
            while index < len(lines) and lines[index].strip():
                example.append(lines[index].strip())
                index += 1
            out += ["```pycon", *example, "```", ""]
            continue
        if line.startswith("  ") and line.strip():  # a list item's continuation
            out.append("  " + _inline(line.strip()))
        else:
            out.append(_inline(line.strip()))
        index += 1
    return out


def _items(lines: list[str]) -> list[str]:
    """An ``Args:``-style section: ``name (type): text`` items with indented continuations."""
    items: list[list[str]] = []
    for line in lines:
        if not line.strip():
            continue
        if not line.startswith(" "):
            items.append([line.strip()])
        else:
            items[-1].append(line.strip())
    out = []
    for item in items:
        text = " ".join(item)
        match = re.match(r"^([\w*]+)( \([^)]*\))?: (.*)$", text)
        if match and " " not in match.group(1):
            name, kind, rest = match.groups()
            out.append(f"- `{name}`{_inline(kind or '')}: {_inline(rest)}")
        else:
            out.append(f"- {_inline(text)}")
    return out


def _docstring(obj: Any) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    lines = doc.splitlines()
    body: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        header = line.rstrip(":") if line.endswith(":") else None
        if header in SECTIONS:
            sections.append((header, []))
        elif sections:
            sections[-1][1].append(line[4:] if line.startswith("    ") else line)
        else:
            body.append(line)
    out = _paragraphs(body)
    for header, content in sections:
        while out and not out[-1]:
            out.pop()
        out += ["", f"**{header}**", ""]
        if header in ("Args", "Raises"):
            out += _items(content)
        elif header in ("Example", "Examples"):
            out += _paragraphs(content)
        elif header == "Shape":
            out += [_inline(line.strip()) for line in content if line.strip()]
        else:  # Returns: one "type: text" item, continued at the same indentation
            out += _items([" ".join(line.strip() for line in content if line.strip())])
    while out and not out[-1]:
        out.pop()
    return out


def _public() -> list[tuple[str, Any]]:
    import lucid_mlx
    from lucid_mlx import init

    names = [
        ("lucid_mlx.FeatureAlphaDropout", lucid_mlx.FeatureAlphaDropout),
        ("lucid_mlx.AlphaDropout", lucid_mlx.AlphaDropout),
        ("lucid_mlx.feature_alpha_dropout", lucid_mlx.feature_alpha_dropout),
        ("lucid_mlx.alpha_dropout", lucid_mlx.alpha_dropout),
        ("lucid_mlx.init.lecun_normal", init.lecun_normal),
        ("lucid_mlx.init.selu_init", init.selu_init),
        ("lucid_mlx.init.fan_in", init.fan_in),
        ("lucid_mlx.layer_statistics", lucid_mlx.layer_statistics),
        ("lucid_mlx.LayerStatistics", lucid_mlx.LayerStatistics),
    ]
    documented = {qualified.rsplit(".", 1)[-1] for qualified, _ in names}
    public = {*lucid_mlx.__all__, *init.__all__} - {"init", "__version__"}
    if documented != public:
        raise SystemExit(
            f"generate_api: the public names changed: add {sorted(public - documented)},"
            f" remove {sorted(documented - public)}"
        )
    return names


def generate() -> str:
    parts = [BEGIN, "", "## Reference", ""]
    for qualified, obj in _public():
        parts += [f"### `{qualified}`", "", "```python", _signature(qualified, obj), "```", ""]
        parts += [*_docstring(obj), ""]
    parts += [
        "### `lucid_mlx.__version__`",
        "",
        "The package version, a string (`lucid_mlx/_version.py`).",
        "",
        END,
    ]
    return "\n".join(parts)


def spliced(page: str) -> str:
    """``page`` with its generated part replaced by what the docstrings give today."""
    start, stop = page.index(BEGIN), page.index(END) + len(END)
    return page[:start] + generate() + page[stop:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; write nothing")
    args = parser.parse_args(argv)
    page = API.read_text()
    new = spliced(page)
    if args.check:
        if new != page:
            print("docs/api.md is out of date: run python docs/generate_api.py", file=sys.stderr)
            return 1
        return 0
    API.write_text(new)
    print(f"wrote {API}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
