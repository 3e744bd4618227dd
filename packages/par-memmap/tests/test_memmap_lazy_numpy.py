"""numpy is imported lazily, and the result reducers are the same module-level objects
at every call (they pickle by reference)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import par_memmap
import pytest
from par_memmap import make_result_reducers
from par_memmap._reducers import reduce_result


def run_fresh(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_memmap_import_does_not_import_numpy(tmp_path) -> None:
    out = run_fresh(
        f"""
        import pickle, sys
        import par_memmap
        assert "numpy" not in sys.modules
        with par_memmap.TempFolderManager({str(tmp_path)!r}) as m:
            assert par_memmap.make_reducers(m) == {{}}
        results = par_memmap.make_result_reducers()
        assert results == {{}}
        pickle.loads(pickle.dumps(results))
        assert par_memmap.has_shareable_memory(object()) is False
        assert "numpy" not in sys.modules
        print("ok")
        """
    )
    assert out == "ok"


def test_memmap_dump_and_load_import_numpy_when_needed(tmp_path) -> None:
    out = run_fresh(
        f"""
        import sys
        import par_memmap
        assert "numpy" not in sys.modules
        path = {str(tmp_path / "v.pardump")!r}
        par_memmap.dump({{"a": [1, 2.5, "x"]}}, path)
        print(par_memmap.load(path))
        """
    )
    assert out == "{'a': [1, 2.5, 'x']}"


def test_memmap_reducers_use_numpy_once_imported(tmp_path) -> None:
    out = run_fresh(
        f"""
        import sys
        import par_memmap
        import numpy as np
        with par_memmap.TempFolderManager({str(tmp_path)!r}) as m:
            print(sorted(t.__name__ for t in par_memmap.make_reducers(m)))
        print(sorted(t.__name__ for t in par_memmap.make_result_reducers()))
        """
    )
    assert out.splitlines() == ["['memmap', 'ndarray']"] * 2


def test_memmap_result_reducers_are_equal_between_calls() -> None:
    first, second = make_result_reducers(), make_result_reducers()
    assert first == second
    assert first is not second  # a fresh dict: the caller may change it
    assert first[np.ndarray] is reduce_result and first[np.memmap] is reduce_result
    assert make_result_reducers(protocol=4) == make_result_reducers(protocol=4)
    assert make_result_reducers(protocol=4)[np.ndarray] is not reduce_result


@pytest.mark.parametrize("protocol", [4, pickle.HIGHEST_PROTOCOL])
def test_memmap_result_reducers_pickle_by_reference(protocol: int) -> None:
    table = make_result_reducers(protocol=protocol)
    blob = pickle.dumps(table)
    assert len(blob) < 300  # references to module-level names, no code
    assert b"par_memmap._reducers" in blob
    assert pickle.loads(blob) == table


def test_memmap_result_reducer_still_copies_read_only_and_memmaps(tmp_path) -> None:
    ro = np.arange(6.0)
    ro.flags.writeable = False
    mm = np.memmap(tmp_path / "m.bin", dtype=np.int16, mode="w+", shape=(4,))
    mm[:] = [1, 2, 3, 4]
    for protocol in (4, 5):
        reducer = make_result_reducers(protocol=protocol)[np.ndarray]
        for value in (ro, mm):
            func, args, *state = reducer(value)
            back = func(*args)
            if state:
                back.__setstate__(state[0])
            assert type(back) is np.ndarray
            assert back.flags.writeable
            assert back.tolist() == value.tolist()
    del mm
    assert par_memmap.has_shareable_memory(ro) is False
