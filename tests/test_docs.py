"""README.md and the Markdown docs stay true: their code runs, their links resolve.

- Every fenced block names its language. ``python`` blocks start with an import and run as
  written (a signature or a fragment goes in a ``text`` block). ``pycon`` blocks run as
  doctests, their printed output compared. ``bash`` blocks parse (``bash -n``). ``text`` and
  ``math`` blocks are prose.
- Every relative link and image, and every link into this repository on GitHub, resolves to
  a file of the repository, and every ``#anchor`` to a heading of its page (GitHub's heading
  ids) or to a ``::: name`` line, which mkdocstrings renders as an entry with the id ``name``.
- docs/api.md has a ``::: name`` line for every public name, each naming a real object.
- Where MkDocs is installed, ``mkdocs build --strict`` builds the site without a warning.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import pytest

import lucid_mlx

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(
    {
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("examples/*.md"),
        *ROOT.glob("experiments/*/README.md"),
    }
)
FENCE = re.compile(r"^```(\S*)[ \t]*\n(.*?)^```[ \t]*$", flags=re.DOTALL | re.MULTILINE)
LANGUAGES = {"python", "pycon", "bash", "text", "math"}
# [text](target) and ![alt](target); code spans are removed first so `a[i](x)` is no link.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
# Files the sdist leaves out (see pyproject.toml): links to them resolve in the repository only.
NOT_IN_SDIST = (".png",)
# Pages of the site link to files outside docs/ by their address on GitHub.
REPOSITORY = "https://github.com/lucid-mlx/lucid_mlx/blob/main/"
# A mkdocstrings directive: "::: lucid_mlx.name", then its indented YAML options, if any.
DIRECTIVE = re.compile(r"^::: ([\w.]+)[ \t]*\n((?:[ \t]+\S.*\n?)*)", flags=re.MULTILINE)


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _blocks() -> list[tuple[str, int, str, str]]:
    """(page, line of the opening fence, language, source) for every fenced block."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((_name(page), line, match.group(1), match.group(2)))
    return found


BLOCKS = _blocks()


def _of(language: str) -> list[tuple[str, int, str]]:
    return [(page, line, source) for page, line, tag, source in BLOCKS if tag == language]


def _ids(blocks: list[tuple[str, int, str]]) -> list[str]:
    return [f"{page}:{line}" for page, line, _ in blocks]


PYTHON, PYCON, BASH = _of("python"), _of("pycon"), _of("bash")
RUNNABLE = PYTHON


def test_the_pages_exist_and_have_code():
    names = {_name(page) for page in PAGES}
    for page in ("api", "math", "performance", "gpu-kernel", "development"):
        assert f"docs/{page}.md" in names
    assert len(RUNNABLE) >= 3
    assert PYCON
    assert BASH


@pytest.mark.parametrize(
    ("page", "line", "language"),
    [(page, line, tag) for page, line, tag, _ in BLOCKS],
    ids=[f"{page}:{line}" for page, line, _, _ in BLOCKS],
)
def test_every_block_names_a_known_language(page, line, language):
    # A block tagged py, python3 or sh would escape every check below.
    assert language in LANGUAGES, f"{page}:{line}: ```{language}"


@pytest.mark.parametrize(("page", "line", "block"), PYTHON, ids=_ids(PYTHON))
def test_python_block_parses(page, line, block):
    ast.parse(block, filename=f"{page}:{line}")


@pytest.mark.parametrize(("page", "line", "block"), PYTHON, ids=_ids(PYTHON))
def test_python_block_starts_with_an_import(page, line, block):
    first = ast.parse(block).body[0]
    assert isinstance(first, (ast.Import, ast.ImportFrom)), f"{page}:{line}: runs as written"


@pytest.mark.parametrize(("page", "line", "block"), RUNNABLE, ids=_ids(RUNNABLE))
def test_python_block_runs(page, line, block):
    namespace: dict = {}
    exec(compile(block, f"{page}:{line}", "exec"), namespace)
    if "step" in namespace and "model" in namespace:  # a compiled training step, as left
        model = namespace["model"]
        assert model.training, f"{page}:{line}: the step must be traced in training mode"


@pytest.mark.parametrize(("page", "line", "block"), PYCON, ids=_ids(PYCON))
def test_pycon_block_runs_as_a_doctest(page, line, block):
    test = doctest.DocTestParser().get_doctest(
        block, {"mx": mx, "nn": nn, "lucid_mlx": lucid_mlx}, f"{page}:{line}", page, line
    )
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
    assert runner.tries > 0


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.parametrize(("page", "line", "block"), BASH, ids=_ids(BASH))
def test_bash_block_parses(page, line, block):
    result = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
    assert result.returncode == 0, f"{page}:{line}: {result.stderr}"


def _slug(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _directives(page: Path) -> dict[str, str]:
    """Each ``::: name`` line of ``page``: the name and its options block."""
    return {m.group(1): m.group(2) for m in DIRECTIVE.finditer(FENCE.sub("", page.read_text()))}


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    anchors: set[str] = set()
    # An entry's id is its name; the members it shows (options: "members: [a, b]") get
    # name.member.
    for name, options in _directives(page).items():
        anchors.add(name)
        for listed in re.findall(r"^\s*members:\s*\[([^\]]*)\]", options, flags=re.MULTILINE):
            anchors.update(f"{name}.{member.strip()}" for member in listed.split(","))
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE):
        slug, n = _slug(heading), 1
        while slug in anchors:  # repeated headings get -1, -2, ...
            slug, n = f"{_slug(heading)}-{n}", n + 1
        anchors.add(slug)
    return anchors


def _links() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        prose = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))
        found += [(_name(page), target) for target in LINK.findall(prose)]
    return found


LINKS = [
    (page, target)
    for page, target in _links()
    if target.startswith(REPOSITORY) or not re.match(r"[a-z]+:", target)
]


def test_the_docs_link_to_each_other():
    assert len(LINKS) >= 10


@pytest.mark.parametrize(("page", "target"), LINKS, ids=[f"{p}->{t}" for p, t in LINKS])
def test_link_into_the_repository_resolves(page, target):
    if target.startswith(REPOSITORY):
        base, (path, _, anchor) = ROOT, target.removeprefix(REPOSITORY).partition("#")
    else:
        base, (path, _, anchor) = (ROOT / page).parent, target.partition("#")
    file = base / path if path else ROOT / page
    if not file.exists() and file.suffix in NOT_IN_SDIST and not (ROOT / ".git").exists():
        pytest.skip(f"{path}: not shipped in the sdist; checked in the source tree")
    assert file.exists(), f"{page}: {target}: no such file"
    assert ROOT in file.resolve().parents, f"{page}: {target}: outside the repository"
    if anchor:
        assert file.suffix == ".md", f"{page}: {target}: an anchor into a non-Markdown file"
        assert anchor in _anchors(file), f"{page}: {target}: no such heading"


def _public_names() -> set[str]:
    names = {f"lucid_mlx.{name}" for name in lucid_mlx.__all__ if name != "init"}
    return names | {f"lucid_mlx.init.{name}" for name in lucid_mlx.init.__all__}


API_DIRECTIVES = _directives(ROOT / "docs/api.md")


def test_the_api_reference_has_every_public_name():
    missing = sorted(_public_names() - set(API_DIRECTIVES))
    extra = sorted(set(API_DIRECTIVES) - _public_names())
    assert not missing, "docs/api.md needs: " + ", ".join(f"::: {name}" for name in missing)
    assert not extra, f"docs/api.md shows names that are not public: {extra}"


@pytest.mark.parametrize("name", sorted(API_DIRECTIVES))
def test_a_reference_entry_names_a_real_object(name):
    module_name, _, attribute = name.rpartition(".")
    module = importlib.import_module(module_name)
    assert hasattr(module, attribute), f"docs/api.md: ::: {name}: no such object"


def test_the_site_builds_without_warnings(tmp_path):
    pytest.importorskip("mkdocs", reason="MkDocs is not installed (the docs extra)")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] missing")
    site = tmp_path / "site"
    config = ["--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)]
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", *config],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api = (site / "api/index.html").read_text()
    for name in sorted(_public_names()):
        assert f'id="{name}"' in api, f"{name}: no entry in the built reference"
    # The docstrings' reStructuredText became Markdown (docs/rst_roles.py).
    for leftover in (":math:", ":func:", ":class:", ":mod:", ".. math::"):
        assert leftover not in api, f"{leftover} left in the built reference"
    assert 'class="arithmatex"' in api
