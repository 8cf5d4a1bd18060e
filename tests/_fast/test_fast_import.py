"""How rankly._fast picks its implementation at import time."""

import os
import subprocess
import sys
import textwrap

from rankly import _fast

# Run in a fresh interpreter, with the compiled modules made unimportable.
BLOCK_COMPILED = textwrap.dedent(
    """
    import sys

    class BlockCompiled:
        def find_spec(self, name, path=None, target=None):
            if name in ("rankly._fast.topk", "rankly._fast.diversity"):
                raise ImportError(f"No module named {name!r} (blocked by test)")
            return None

    sys.meta_path.insert(0, BlockCompiled())
    """
)


def run(code, pure):
    env = {k: v for k, v in os.environ.items() if k != "RANKLY_PURE_PYTHON"}
    if pure:
        env["RANKLY_PURE_PYTHON"] = "1"
    return subprocess.run(
        [sys.executable, "-c", BLOCK_COMPILED + code], env=env, capture_output=True, text=True
    )


def test_missing_compiled_modules_raise_import_error_with_build_instructions():
    result = run("import rankly._fast", pure=False)
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "pip install -e ." in result.stderr
    assert "RANKLY_PURE_PYTHON=1" in result.stderr


def test_pure_python_env_selects_the_reference_without_compiled_modules():
    code = "import rankly._fast as f; print(f.IMPLEMENTATION, f.topk.__module__)"
    result = run(code, pure=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["reference", "rankly._fast.reference"]


def test_implementation_matches_the_environment():
    expected = "reference" if os.environ.get("RANKLY_PURE_PYTHON") == "1" else "compiled"
    assert _fast.IMPLEMENTATION == expected


def test_public_names_are_exported():
    assert set(_fast.__all__) == {
        "IMPLEMENTATION",
        "add_standardized",
        "category_features",
        "csr_weighted_rows",
        "diverse_topk",
        "positions",
        "score_topk",
        "score_topk_batch",
        "topk",
        "topk_batch",
        "weighted_rows",
        "weighted_rows_batch",
    }
