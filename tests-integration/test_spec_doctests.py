"""Every ``>>>`` example of the specification runs against par and prints what it shows.

The spec is written for joblib: ``joblib`` is renamed ``par`` in the examples. Skipped:
lines marked ``doctest: +SKIP``, and in the ``.txt`` renderings the lines whose
``+SKIP`` marker was stripped by the rendering (they keep a trailing space), which
are the same examples. Cluster backends (ray, dask, spark) belong to their own packages.
"""

from __future__ import annotations

import doctest
import os
import re
from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec"
if not SPEC.is_dir():  # CI clones main with shared/ beside it
    SPEC = Path(os.environ.get("PAR_SPEC_DIR", "/work/shared/spec"))

FILES = ["parallel-user-guide.rst", "parallel-user-guide-and-reference.txt", "parallel-config-reference.txt"]

# Lines of the .txt rendering that lost their expected output in the rendering; the
# value is what the original documentation shows.
RENDERING_FIXES = {
    "np.allclose(large_array, large_memmap)\n": "True\n",
}


def _examples(name: str) -> list[doctest.Example]:
    text = (SPEC / name).read_text()
    test = doctest.DocTestParser().get_doctest(text, {}, name, name, 0)
    kept = []
    for ex in test.examples:
        lines = ex.source.splitlines()
        if name.endswith(".txt") and any(line != line.rstrip() for line in lines):
            ex.options[doctest.SKIP] = True  # a +SKIP marker stripped by the rendering
        if re.search(r"\b(ray|dask|spark)\b", ex.source):
            ex.options[doctest.SKIP] = True
        ex.source = ex.source.replace("joblib", "par")
        if ex.source in RENDERING_FIXES and not ex.want:
            ex.want = RENDERING_FIXES[ex.source]
        kept.append(ex)
    return kept


@pytest.mark.parametrize("name", FILES)
@pytest.mark.timeout(300)
def test_spec_examples(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert SPEC.is_dir(), f"spec folder not found at {SPEC}"
    monkeypatch.chdir(tmp_path)
    import par

    globs = {n: getattr(par, n) for n in par.__all__}
    test = doctest.DocTest(_examples(name), globs, name, str(SPEC / name), 0, None)
    assert test.examples, f"no examples found in {name}"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    result = runner.run(test, out=out.append, clear_globs=True)
    assert result.failed == 0, "".join(out)
    assert result.attempted >= 2
