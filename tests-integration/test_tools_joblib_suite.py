"""tools/joblib_suite.py: its selection and rewriting step on joblib's test files (no
pytest run: the full run is too slow for CI, see docs/migrating-from-joblib.md)."""

from __future__ import annotations

import ast
import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

joblib = pytest.importorskip("joblib")

TOOL = Path(__file__).resolve().parent.parent / "tools" / "joblib_suite.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("par_tools_joblib_suite", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


suite = _load_tool()


def test_the_files_exist_in_the_installed_joblib():
    folder = Path(joblib.__file__).parent / "test"
    for name in suite.FILES:
        assert (folder / name).is_file(), name


def test_selection_and_rewriting_of_test_config():
    source = (Path(joblib.__file__).parent / "test" / "test_config.py").read_text()
    out, left_out, counts = suite.select({"test_config.py": source}, "par")
    new = out["test_config.py"]
    ast.parse(new)  # still Python
    # public names come from par, internals stay joblib's
    assert "from par import Parallel, delayed, parallel_backend, parallel_config" in new
    assert "from joblib._parallel_backends import LokyBackend" in new
    assert "from test_parallel import check_memmap" in new  # the sibling copy
    assert counts["test_config.py"] >= 10
    lo = left_out["test_config.py"]
    assert any("private attribute ._backend" in r for r in lo["test_global_parallel_backend"])
    assert any("joblib.parallel.BACKENDS" in r for r in lo["test_parallel_config_constructor_params"])
    assert "test_parallel_config_bad_params" not in lo
    assert "test_parallel_n_jobs_none" not in lo
    assert f"@pytest.mark.skip(reason='{suite.LEFT_OUT_TAG} " in new
    # against joblib: the same tests left out, the public imports stay joblib's
    out_j, left_out_j, _ = suite.select({"test_config.py": source}, "joblib")
    assert left_out_j == left_out
    assert "from par import" not in out_j["test_config.py"]


def test_the_rules_on_a_small_file():
    source = textwrap.dedent(
        '''
        import joblib
        from joblib import parallel, Memory
        from joblib.parallel import Parallel, BACKENDS
        from joblib.testing import raises

        SCRIPT = """
        from joblib import Parallel, delayed
        """
        BAD_SCRIPT = """
        from joblib import Parallel, hash
        """
        NAMES = sorted(BACKENDS)

        def helper():
            return BACKENDS["threading"]

        def test_public():
            with raises(ValueError):
                joblib.Parallel(n_jobs=1, backend="nope")
            return parallel.delayed, SCRIPT

        def test_helper_reaches_internal():
            return helper()

        def test_private_attribute():
            return Parallel()._backend

        def test_module_attribute():
            return parallel.get_active_backend()

        def test_outside_scope():
            return Memory

        def test_script():
            return BAD_SCRIPT

        def test_private_method_override():
            class Quiet(Parallel):
                def _print(self, msg):
                    pass

        def test_local_name_shadows_the_module():
            parallel = Parallel(n_jobs=2)
            return parallel.n_jobs
        '''
    )
    out, left_out, _ = suite.select({"test_x.py": source}, "par")
    lo = {k: "; ".join(v) for k, v in left_out["test_x.py"].items()}
    assert set(lo) == {
        "test_helper_reaches_internal",
        "test_private_attribute",
        "test_module_attribute",
        "test_outside_scope",
        "test_script",
        "test_private_method_override",
    }
    assert "joblib.parallel.BACKENDS" in lo["test_helper_reaches_internal"]
    assert "joblib.parallel.get_active_backend" in lo["test_module_attribute"]
    assert "joblib.Memory (outside par)" in lo["test_outside_scope"]
    assert "joblib.hash" in lo["test_script"]
    assert "overrides the private method ._print" in lo["test_private_method_override"]
    new = out["test_x.py"]
    assert "par.Parallel(n_jobs=1" in new and "par.delayed" in new
    assert "from par import Parallel" in new and "from joblib.parallel import BACKENDS" in new
    strings = {
        n.targets[0].id: n.value.value
        for n in ast.parse(new).body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
    }
    assert strings["SCRIPT"].strip() == "from par import Parallel, delayed"  # the script, rewritten
    assert strings["BAD_SCRIPT"].strip() == "from joblib import Parallel, hash"  # hash is not par's
