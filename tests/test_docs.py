"""README.md and the Markdown docs stay true: their code runs, their links resolve.

- Every fenced block names its language. ``python`` blocks parse; a block that starts with an
  import runs as written, any other must be API stubs only (``def``/``class`` with ``...``
  bodies). ``pycon`` blocks run as doctests, their printed output compared. ``bash`` blocks
  parse (``bash -n``). ``text`` and ``math`` blocks are prose.
- Every relative link and image resolves to a file of the repository, and every ``#anchor``
  to a heading of its page (GitHub's heading ids).
- docs/api.md's reference section is what ``docs/generate_api.py`` makes of the docstrings.
- README.md stays a front page.
"""

from __future__ import annotations

import ast
import doctest
import importlib.util
import re
import shutil
import subprocess
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
RUNNABLE = [b for b in PYTHON if b[2].lstrip().startswith(("import", "from"))]
STUBS = [b for b in PYTHON if b not in RUNNABLE]


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


@pytest.mark.parametrize(("page", "line", "block"), STUBS, ids=_ids(STUBS))
def test_a_block_that_does_not_run_holds_stubs_only(page, line, block):
    def stub(node: ast.stmt) -> bool:
        if isinstance(node, ast.FunctionDef):
            return [ast.unparse(s) for s in node.body] == ["..."]
        if isinstance(node, ast.ClassDef):
            return all(stub(s) or isinstance(s, ast.AnnAssign) for s in node.body)
        return False

    bad = [ast.unparse(node) for node in ast.parse(block).body if not stub(node)]
    assert not bad, f"{page}:{line}: neither runnable (no leading import) nor stubs: {bad}"


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


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    anchors: set[str] = set()
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


LINKS = [(page, target) for page, target in _links() if not re.match(r"[a-z]+:", target)]


def test_the_docs_link_to_each_other():
    assert len(LINKS) >= 10


@pytest.mark.parametrize(("page", "target"), LINKS, ids=[f"{p}->{t}" for p, t in LINKS])
def test_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    file = (ROOT / page).parent / path if path else ROOT / page
    if not file.exists() and file.suffix in NOT_IN_SDIST and not (ROOT / ".git").exists():
        pytest.skip(f"{path}: not shipped in the sdist; checked in the source tree")
    assert file.exists(), f"{page}: {target}: no such file"
    assert ROOT in file.resolve().parents, f"{page}: {target}: outside the repository"
    if anchor:
        assert file.suffix == ".md", f"{page}: {target}: an anchor into a non-Markdown file"
        assert anchor in _anchors(file), f"{page}: {target}: no such heading"


def test_api_reference_is_generated_from_the_docstrings():
    spec = importlib.util.spec_from_file_location("generate_api", ROOT / "docs/generate_api.py")
    assert spec is not None
    assert spec.loader is not None
    generate_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate_api)
    page = (ROOT / "docs/api.md").read_text()
    assert generate_api.spliced(page) == page, "run: python docs/generate_api.py"
    for name in {*lucid_mlx.__all__, *lucid_mlx.init.__all__} - {"init", "__version__"}:
        assert f"### `lucid_mlx.{name}`" in page or f"### `lucid_mlx.init.{name}`" in page


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    # The quickstart comes before any measured figure.
    assert text.index("## Quickstart") < text.index("measured on")
    for word in ("issue", "lent", "device tool", "../shared", "session"):
        assert word not in text.lower(), word
