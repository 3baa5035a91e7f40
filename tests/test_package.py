"""The package as an installed thing: which copy is tested, its import weight, its version,
and the error a Linux install without an MLX backend gets.

Each import check runs in a fresh interpreter (``sys.modules`` of this one is long polluted)
with the directory of the ``lucid_mlx`` under test first on its path, so that it imports the
same copy as the rest of the suite: the source tree, or the installed wheel in ``.ci/run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from importlib.metadata import version
from pathlib import Path

import pytest

import lucid_mlx

PACKAGE = Path(lucid_mlx.__file__).resolve().parent
SOURCE_TREE = Path(__file__).resolve().parents[1]


def _python(code: str, *path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (*path, PACKAGE.parent))}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_package_under_test_is_the_expected_copy():
    """From a checkout the tests exercise its source; .ci/run's wheel job, the installed wheel.

    ``.ci/run`` sets ``LUCID_MLX_EXPECT_INSTALLED=1`` when it runs this suite, copied out of
    the source tree, against the wheel installed in a fresh virtual environment.
    """
    if os.environ.get("LUCID_MLX_EXPECT_INSTALLED") == "1":
        site_packages = {Path(sysconfig.get_path(k)).resolve() for k in ("purelib", "platlib")}
        assert PACKAGE.parent in site_packages, (PACKAGE, site_packages)
        # hatch took the wheel's version from lucid_mlx/_version.py, the one place it is set.
        assert version("lucid_mlx") == lucid_mlx.__version__
    else:
        assert PACKAGE == SOURCE_TREE / "lucid_mlx", (PACKAGE, SOURCE_TREE)


def test_import_does_not_load_importlib_metadata():
    # importlib.metadata pulls in email, zipfile, csv and socket: about as much import time
    # as mlx.nn itself, for a version string.
    result = _python(
        "import sys, json\n"
        "before = 'importlib.metadata' in sys.modules\n"
        "import lucid_mlx\n"
        "print(json.dumps([before, 'importlib.metadata' in sys.modules, lucid_mlx.__file__]))"
    )
    assert result.returncode == 0, result.stderr
    before, after, imported = json.loads(result.stdout)
    assert not before, "the interpreter loads importlib.metadata at startup: nothing to test"
    assert Path(imported).resolve().parent == PACKAGE
    assert not after, "import lucid_mlx loaded importlib.metadata"


MISSING_BACKEND_CHECK = """
import json
try:
    import lucid_mlx
except ImportError as error:
    print(json.dumps([str(error), repr(error.__cause__), error.__suppress_context__]))
else:
    print(json.dumps(None))
"""


def _check_missing_backend_message(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    reported = json.loads(result.stdout)
    assert reported is not None, "import lucid_mlx succeeded without libmlx"
    message, cause, chained = reported
    assert message.startswith("[lucid_mlx] MLX could not be imported (libmlx.so: cannot open")
    for fix in ('pip install "mlx[cpu]"', '"mlx[cuda12]"', '"mlx[cuda13]"', '-e ".[cpu]"'):
        assert fix in message
    assert cause.startswith("ImportError('libmlx.so: cannot open shared object file")
    assert chained  # raised `from` the original error


def test_missing_backend_error_says_what_to_install(tmp_path):
    # A stand-in for `mlx` whose core fails the way MLX's does without a backend package.
    fake = tmp_path / "mlx"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "core.py").write_text(
        "raise ImportError('libmlx.so: cannot open shared object file: No such file or"
        " directory')\n"
    )
    _check_missing_backend_message(_python(MISSING_BACKEND_CHECK, tmp_path))


def test_missing_backend_error_with_the_real_extension(tmp_path):
    """MLX's own extension module without its backend library: the failure a user meets."""
    import mlx.core

    extension = Path(mlx.core.__file__)
    backend_library = extension.parent / "lib" / "libmlx.so"
    if not sys.platform.startswith("linux") or not backend_library.exists():
        pytest.skip("only MLX's Linux wheels ship libmlx in a separate backend package")
    (tmp_path / "mlx").mkdir()
    (tmp_path / "mlx" / extension.name).write_bytes(extension.read_bytes())
    _check_missing_backend_message(_python(MISSING_BACKEND_CHECK, tmp_path))
