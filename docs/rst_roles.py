"""A Griffe extension that turns the docstrings' reStructuredText markup into Markdown.

The docstrings follow MLX: Google style with ``:math:`...``` and ``:func:`...``` roles and
``.. math::`` blocks, which read well in ``help()``. mkdocstrings renders docstrings as
Markdown, so before it does (``mkdocs.yml`` loads this file):

- ``:math:`x``` becomes ``$x$``, and a ``.. math::`` block one ``$$`` block per equation
  (``pymdownx.arithmatex`` marks them for MathJax);
- ``:func:``, ``:class:``, ``:mod:``, ``:meth:``, ``:attr:``, ``:data:`` and ``:obj:`` become
  a code span that links to the name's entry where the site has one (a name without dots is
  looked up in the docstring's own module, then in the package); a leading ``~`` shows the
  last part of the name only.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Module, Object

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj):`(~?)([\w.]+)`")
# The directive line, then its blank or more-indented lines.
_MATH_BLOCK = re.compile(r"^([ \t]*)\.\. math::[ \t]*\n((?:[ \t]*\n|\1[ \t]+\S.*\n?)+)", re.M)


def _math_block(match: re.Match[str]) -> str:
    indent, body = match.group(1), match.group(2)
    lines = "\n".join(line.strip() for line in body.strip().splitlines())
    blocks = [
        "\n".join(
            [f"{indent}$$", *(indent + line for line in equation.splitlines()), f"{indent}$$"]
        )
        for equation in lines.split("\n\n")
    ]
    return "\n\n".join(blocks) + "\n\n"


def _identifier(obj: Object, name: str) -> str:
    """The full path of ``name`` as written in ``obj``'s docstring."""
    package = obj.package
    if "." not in name:
        for scope in (obj.module, package):
            if name in scope.members:
                return f"{scope.path}.{name}"
    return name


def _markdown(obj: Object, text: str) -> str:
    text = _MATH_BLOCK.sub(_math_block, text)
    text = _MATH_ROLE.sub(lambda match: f"${match.group(1)}$", text)

    def role(match: re.Match[str]) -> str:
        short, name = match.groups()
        shown = name.rsplit(".", 1)[-1] if short else name
        # "optional": a name the site does not show (MLX's, a private helper's) stays text.
        identifier = _identifier(obj, name)
        return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'

    return _ROLE.sub(role, text)


def _convert(obj: Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = _markdown(obj, obj.docstring.value)
    for member in obj.members.values():
        if isinstance(member, Object):  # not an alias: its target is converted where it lives
            _convert(member)


class RstToMarkdown(Extension):
    """Rewrites every docstring of a package once the whole package is loaded."""

    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        _convert(pkg)
