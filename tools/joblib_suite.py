"""Run joblib's own tests against par (issue 22's outside test).

Copies ``test_parallel.py``, ``test_config.py``, ``test_dask.py`` and
``test_memmapping.py`` from the installed joblib (found through ``joblib.__file__``)
into a temporary folder, rewrites their imports of joblib's public API to par, marks
the tests that use joblib's internals as skipped, and runs each file with pytest
(pytest-timeout per test, pytest-xdist ``-n 2``). ``--against joblib`` runs the very
same selection against joblib itself (the imports are left to joblib), so the two
tables compare the same tests.

    $(hatch env find hatch-test)/bin/python tools/joblib_suite.py [--against par|joblib]

(or ``hatch run test-joblib-suite [options]``, which runs that python). Options:
``--files test_config.py ...``, ``--timeout 60``, ``-n 2``, ``--keep DIR`` (write the
rewritten files there and keep them), ``--list`` (print the selection, run nothing),
``--json FILE`` (write the figures).

The selection rule (printed by every run):

1. *Public names* are the joblib names par provides under the same name (``PUBLIC``).
   Imported from ``joblib``, ``joblib.parallel`` or the joblib module that defines
   them, or read as ``joblib.X`` / ``parallel.X``, they become par's.
2. joblib's test utilities stay joblib's and do not count as internals
   (``UTILITY_MODULES``, ``UTILITY_NAMES``, and the imports inside ``UTILITY_SCOPES``).
   The test files copied together import each other's helpers from the copies.
3. A test is *left out* (marked skipped, reason ``joblib-suite: ...``) when its body,
   a fixture it uses, or a module-level helper, class or variable its body reaches
   (transitively, across the copied files) does one of:
   - use a name of a private joblib module or a non-public name of ``joblib.parallel``
     (``joblib._parallel_backends.LokyBackend``, ``joblib.parallel.BACKENDS``, ...);
   - use a public joblib name par does not provide (``Memory``, ``hash``, ...:
     outside par's scope);
   - read a private attribute (``p._backend``, ``parallel._aborting``), or override a
     private method in a subclass of a joblib class (``Parallel._print``);
   - write a subprocess script (a string) that imports a non-public joblib name.
   Decorators are not followed (``@parametrize`` lists are evaluated by pytest).
4. A parametrized case whose parameter is an object of joblib's internals (an
   instance or subclass of ``joblib._parallel_backends.ThreadingBackend``,
   ``joblib.pool.MemmappingPool``, ...) is left out at collection.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

FILES = ["test_parallel.py", "test_config.py", "test_dask.py", "test_memmapping.py"]
COPIED_AS_IS = ["testutils.py"]  # joblib's test helpers, imported by name by the tests' scripts

# joblib's public names that par provides under the same name (README.md).
PUBLIC = {
    "Parallel",
    "delayed",
    "parallel_config",
    "parallel_backend",
    "register_parallel_backend",
    "effective_n_jobs",
    "cpu_count",
    "wrap_non_picklable_objects",
    "dump",
    "load",
    "ParallelBackendBase",
    "AutoBatchingMixin",
}
# joblib's public names outside par's scope (docs/migrating-from-joblib.md).
OUT_OF_SCOPE = {
    "Memory",
    "MemorizedResult",
    "expires_after",
    "hash",
    "StoreBackendBase",
    "register_store_backend",
    "register_compressor",
    "PrintTime",
    "Logger",
}
# Test utilities: kept as joblib's, never a reason to leave a test out.
UTILITY_MODULES = {"joblib.testing", "joblib.test.common", "joblib.test.testutils"}
UTILITY_NAMES = {
    # the stdlib multiprocessing module (None without multiprocessing)
    ("joblib._multiprocessing_helpers", "mp"),
    ("joblib.parallel", "mp"),
}
UTILITY_ATTRS = {"__file__"}  # joblib.__file__: the scripts put joblib's folder on sys.path
# Functions whose imports stay joblib's and do not count (file, function): reason.
UTILITY_SCOPES = {
    ("test_dask.py", "avoid_dask_env_leaks"): "autouse fixture: reads the names of the thread "
    "env variables (ParallelBackendBase.MAX_NUM_THREADS_VARS) to restore them after each test",
}
LEFT_OUT_TAG = "joblib-suite:"

_STRING_IMPORT = re.compile(r"^(?P<indent>[ \t]*)from joblib(?P<mod>\.[\w.]+)? import (?P<names>[\w, ]+)$", re.M)
_STRING_PRIVATE = re.compile(r"\w\.(_[a-z]\w*)")
_STRING_OTHER = re.compile(r"^[ \t]*(import joblib\b.*|from joblib\.[\w.]+ import .*)$", re.M)


@dataclass
class Binding:
    """What a module-level name imported from joblib is."""

    kind: str  # "public", "utility", "internal", "scope", "module", "sibling"
    target: str  # dotted joblib name (or module name for kind "module")


@dataclass
class Def:
    node: ast.AST
    kind: str  # "func", "class", "var"
    refs: set[str] = field(default_factory=set)  # module-level names read
    sibling_refs: set[tuple[str, str]] = field(default_factory=set)
    reasons: set[str] = field(default_factory=set)


def _resolve(module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    base = ["joblib", "test"][: 3 - level] if level <= 2 else []
    return ".".join([*base, *(module.split(".") if module else [])])


def _classify(module: str, name: str) -> Binding:
    full = f"{module}.{name}"
    if module in UTILITY_MODULES or (module, name) in UTILITY_NAMES:
        return Binding("utility", full)
    if name in PUBLIC and (module in ("joblib", "joblib.parallel") or module.startswith("joblib._")):
        return Binding("public", name)
    if module == "joblib" and name in OUT_OF_SCOPE:
        return Binding("scope", full)
    return Binding("internal", full)


def _string_reasons(text: str) -> list[str]:
    reasons = []
    for m in _STRING_IMPORT.finditer(text):
        if m["mod"] not in (None, ".parallel"):
            continue
        for n in (x.strip() for x in m["names"].split(",")):
            if n and n not in PUBLIC:
                kind = "outside par" if n in OUT_OF_SCOPE else "internal"
                reasons.append(f"a script imports joblib{m['mod'] or ''}.{n} ({kind})")
    if _STRING_IMPORT.search(text) or _STRING_OTHER.search(text):  # a script: its private reads
        for attr in sorted(set(_STRING_PRIVATE.findall(text))):
            reasons.append(f"a script reads the private attribute .{attr}")
    for m in _STRING_OTHER.finditer(text):
        line = m.group(0).strip()
        mod = line.split()[1]
        if line.startswith("from ") and mod == "joblib.parallel":
            continue
        reasons.append(f"a script does `{line}` (internal)")
    return reasons


def _rewrite_string(text: str, lib: str) -> str:
    if lib == "joblib":
        return text

    def sub(m: re.Match[str]) -> str:
        names = [x.strip() for x in m["names"].split(",") if x.strip()]
        if m["mod"] not in (None, ".parallel") or not all(n in PUBLIC for n in names):
            return m.group(0)
        return f"{m['indent']}from par import {', '.join(names)}"

    return _STRING_IMPORT.sub(sub, text)


def _locally_bound(fn: ast.AST) -> set[str]:
    bound: set[str] = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not fn:
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                bound.add((a.asname or a.name).split(".")[0])
    return bound


class FileRewrite:
    """One test file: its analysis and its rewritten source."""

    def __init__(self, name: str, source: str, lib: str) -> None:
        self.name = name
        self.lib = lib
        self.tree = ast.parse(source)
        self.bindings: dict[str, Binding] = {}  # module-level names from joblib imports
        self.defs: dict[str, Def] = {}
        self.tests: list[str] = []
        self.fixtures: dict[str, bool] = {}  # name -> autouse
        self.needs_par_import = False

    # -- imports -------------------------------------------------------------------------

    def _rewrite_import(self, node: ast.stmt, scope: str | None, local: dict[str, Binding]) -> list[str]:
        """Rewrite one import statement in place; record what it binds; return reasons."""
        reasons: list[str] = []
        keep = (self.name, scope) in UTILITY_SCOPES
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "joblib" or a.name.startswith("joblib."):
                    bound = a.asname or a.name.split(".")[0]
                    if a.asname and a.name != "joblib":  # import joblib._x as y
                        local[bound] = Binding("utility" if keep else "internal", a.name)
                    else:
                        local[bound] = Binding("module", "joblib")
                        if a.name != "joblib" and not keep:
                            reasons.append(f"imports {a.name} (internal)")
            return reasons
        assert isinstance(node, ast.ImportFrom)
        module = _resolve(node.module, node.level)
        if not (module == "joblib" or module.startswith("joblib.")):
            return reasons
        sibling = module.startswith("joblib.test.") and module.rsplit(".", 1)[1] + ".py" in FILES
        if sibling:
            node.module, node.level = module.rsplit(".", 1)[1], 0
            for a in node.names:
                local[a.asname or a.name] = Binding("sibling", f"{node.module}.py:{a.name}")
            return reasons
        node.level = 0
        node.module = module
        public = []
        for a in node.names:
            b = _classify(module, a.name) if a.name != "parallel" or module != "joblib" else None
            if b is None:  # from joblib import parallel: the module
                local[a.asname or a.name] = Binding("module", "joblib.parallel")
                continue
            if keep and b.kind != "public":
                b = Binding("utility", b.target)
            if keep:
                b = Binding("utility", b.target)
            local[a.asname or a.name] = b
            if b.kind == "public":
                public.append(a)
        if public and self.lib == "par":
            # split: the public names come from par, the rest stays joblib's
            rest = [a for a in node.names if a not in public]
            node.names = rest or node.names
            par_import = ast.ImportFrom(module="par", names=public, level=0)
            if not rest:
                node.module = "par"
            else:
                node._par_extra = par_import  # type: ignore[attr-defined]
        return reasons

    # -- analysis ------------------------------------------------------------------------

    def _scan(self, fn: ast.AST, scope: str | None, skip_decorators: bool) -> Def:
        d = Def(fn, "func")
        local: dict[str, Binding] = {}
        bound = _locally_bound(fn) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) else set()
        keep = (self.name, scope) in UTILITY_SCOPES
        skip: set[int] = set()
        if skip_decorators and isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for dec in fn.decorator_list:
                skip.update(id(n) for n in ast.walk(dec))
        for node in ast.walk(fn):
            if id(node) in skip:
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                d.reasons.update(self._rewrite_import(node, scope, local))
        for node in ast.walk(fn):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                b = local.get(node.id)
                if b is None and node.id not in bound:
                    b = self.bindings.get(node.id)
                    if b is None:
                        d.refs.add(node.id)
                if b is not None and not keep:
                    self._use(d, b)
            elif isinstance(node, ast.Attribute):
                base = node.value
                b = None
                if isinstance(base, ast.Name):
                    b = local.get(base.id) or (None if base.id in bound else self.bindings.get(base.id))
                is_module = b is not None and b.kind == "module"
                if node.attr.startswith("_") and not node.attr.startswith("__") and not keep and not is_module:
                    d.reasons.add(f"reads the private attribute .{node.attr}")
                if isinstance(base, ast.Name):
                    if b is not None and b.kind == "module" and node.attr not in UTILITY_ATTRS and not keep:
                        b2 = _classify(b.target, node.attr)
                        if node.attr == "parallel" and b.target == "joblib":
                            continue  # joblib.parallel.X: the outer Attribute decides
                        self._use(d, b2)
                if (
                    isinstance(base, ast.Attribute)
                    and isinstance(base.value, ast.Name)
                    and base.attr == "parallel"
                    and (local.get(base.value.id) or self.bindings.get(base.value.id) or Binding("", "")).target
                    == "joblib"
                    and not keep
                ):
                    self._use(d, _classify("joblib.parallel", node.attr))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and not keep:
                d.reasons.update(_string_reasons(node.value))
        for node in ast.walk(fn):
            # a subclass of a joblib class that overrides a private method (Parallel._print)
            if isinstance(node, ast.ClassDef) and id(node) not in skip and not keep:
                from_joblib = False
                for base in node.bases:
                    root = base
                    while isinstance(root, ast.Attribute):
                        root = root.value
                    if isinstance(root, ast.Name):
                        b = local.get(root.id) or self.bindings.get(root.id)
                        from_joblib = from_joblib or (b is not None and b.kind != "sibling")
                for item in node.body:
                    if (
                        from_joblib
                        and isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and item.name.startswith("_")
                        and not item.name.startswith("__")
                    ):
                        d.reasons.add(f"overrides the private method .{item.name}")
        for b in local.values():
            if b.kind == "sibling":
                d.sibling_refs.add(tuple(b.target.split(":")))  # type: ignore[arg-type]
        return d

    def _use(self, d: Def, b: Binding) -> None:
        if b.kind == "internal":
            d.reasons.add(f"uses {b.target} (internal)")
        elif b.kind == "scope":
            d.reasons.add(f"uses {b.target} (outside par)")
        elif b.kind == "sibling":
            d.sibling_refs.add(tuple(b.target.split(":")))  # type: ignore[arg-type]

    def analyse(self) -> None:
        # module-level imports first (anywhere at module level: if/try blocks)
        top: list[ast.stmt] = []

        def collect(stmts: list[ast.stmt]) -> None:
            for s in stmts:
                top.append(s)
                if isinstance(s, (ast.If, ast.Try)):
                    collect(s.body)
                    collect(s.orelse)
                    if isinstance(s, ast.Try):
                        for h in s.handlers:
                            collect(h.body)
                        collect(s.finalbody)

        collect(self.tree.body)
        for s in top:
            if isinstance(s, (ast.Import, ast.ImportFrom)):
                self._rewrite_import(s, None, self.bindings)
        for s in top:
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
                is_fixture = any("fixture" in ast.unparse(dec) for dec in s.decorator_list)
                if is_fixture:
                    self.fixtures[s.name] = any("autouse=True" in ast.unparse(dec) for dec in s.decorator_list)
                is_test = s.name.startswith("test_") and not is_fixture
                if is_test:
                    self.tests.append(s.name)
                self.defs[s.name] = self._scan(s, s.name, skip_decorators=is_test)
                self.defs[s.name].refs.discard(s.name)
            elif isinstance(s, ast.ClassDef):
                self.defs[s.name] = self._scan(s, s.name, skip_decorators=False)
                self.defs[s.name].kind = "class"
            elif isinstance(s, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = s.targets if isinstance(s, ast.Assign) else [s.target]
                for t in targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            prev = self.defs.get(n.id)
                            d = self._scan(s, None, skip_decorators=False)
                            d.kind = "var"
                            d.refs.discard(n.id)
                            if prev is not None and prev.kind == "var":
                                d.refs |= prev.refs
                                d.reasons |= prev.reasons
                                d.sibling_refs |= prev.sibling_refs
                            self.defs[n.id] = d
            elif isinstance(s, ast.Expr):
                # module-level calls (registrations): scanned so their imports are rewritten
                self._scan(s, None, skip_decorators=False)
        # string constants and attribute chains at module level are rewritten below

    def test_args(self, test: str) -> list[str]:
        fn = self.defs[test].node
        assert isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        return [a.arg for a in fn.args.args]

    # -- output --------------------------------------------------------------------------

    def render(self, left_out: dict[str, list[str]]) -> str:
        lib = self.lib
        module_aliases = {k for k, b in self.bindings.items() if b.kind == "module"}

        class T(ast.NodeTransformer):
            def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
                self.generic_visit(node)
                if lib != "par" or node.attr not in PUBLIC:
                    return node
                v = node.value
                if isinstance(v, ast.Name) and v.id in module_aliases:
                    return ast.copy_location(ast.Attribute(ast.Name("par", ast.Load()), node.attr, node.ctx), node)
                if isinstance(v, ast.Attribute) and v.attr == "parallel" and isinstance(v.value, ast.Name):
                    if v.value.id in module_aliases:
                        return ast.copy_location(
                            ast.Attribute(ast.Name("par", ast.Load()), node.attr, node.ctx), node
                        )
                return node

            def visit_Constant(self, node: ast.Constant) -> ast.AST:
                if isinstance(node.value, str):
                    return ast.copy_location(ast.Constant(_rewrite_string(node.value, lib)), node)
                return node

            def generic_visit(self, node: ast.AST) -> ast.AST:
                for fname, value in ast.iter_fields(node):
                    if isinstance(value, list):
                        new = []
                        for item in value:
                            if isinstance(item, ast.AST):
                                item = self.visit(item)
                                extra = getattr(item, "_par_extra", None)
                                new.append(item)
                                if extra is not None:
                                    new.append(extra)
                            else:
                                new.append(item)
                        value[:] = new
                    elif isinstance(value, ast.AST):
                        setattr(node, fname, self.visit(value))
                return node

        tree = T().visit(self.tree)
        for s in tree.body:
            if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name in left_out:
                reason = f"{LEFT_OUT_TAG} " + "; ".join(sorted(left_out[s.name]))
                dec = ast.parse(f"pytest.mark.skip(reason={reason!r})", mode="eval").body
                s.decorator_list.insert(0, dec)
        header = "import pytest\n" + ("import par\n" if lib == "par" else "")
        # keep `from __future__` first
        body = ast.unparse(ast.fix_missing_locations(tree))
        lines = body.splitlines(keepends=True)
        fut = [ln for ln in lines if ln.startswith("from __future__")]
        rest = [ln for ln in lines if not ln.startswith("from __future__")]
        return "".join(fut) + header + "".join(rest) + "\n"


def select(sources: dict[str, str], lib: str) -> tuple[dict[str, str], dict[str, dict[str, list[str]]], dict[str, int]]:
    """Rewrite the files; return (new sources, left-out tests per file with reasons, tests per file)."""
    files = {name: FileRewrite(name, src, lib) for name, src in sources.items()}
    for f in files.values():
        f.analyse()
    memo: dict[tuple[str, str], set[str]] = {}

    def reasons_of(fname: str, name: str, stack: frozenset[tuple[str, str]]) -> set[str]:
        key = (fname, name)
        if key in memo:
            return memo[key]
        f = files.get(fname)
        if f is None or name not in f.defs or key in stack:
            return set()
        d = f.defs[name]
        out = set(d.reasons)
        for r in d.refs:
            out |= reasons_of(fname, r, stack | {key})
        for sf, sn in d.sibling_refs:
            out |= reasons_of(sf, sn, stack | {key})
        if f.bindings.get(name) is None:
            pass
        memo[key] = out
        return out

    # module-level names imported from a sibling file resolve there
    for f in files.values():
        for n, b in f.bindings.items():
            if b.kind == "sibling":
                sf, sn = b.target.split(":")
                f.defs.setdefault(n, Def(ast.Pass(), "var")).sibling_refs.add((sf, sn))

    left_out: dict[str, dict[str, list[str]]] = {}
    counts: dict[str, int] = {}
    for fname, f in files.items():
        lo: dict[str, list[str]] = {}
        autouse = [n for n, a in f.fixtures.items() if a]
        for t in f.tests:
            rs = set(reasons_of(fname, t, frozenset()))
            for fx in {*f.test_args(t), *autouse}:
                if fx in f.fixtures:
                    rs |= reasons_of(fname, fx, frozenset())
            if rs:
                lo[t] = sorted(rs)
        left_out[fname] = lo
        counts[fname] = len(f.tests)
    out = {fname: f.render(left_out[fname]) for fname, f in files.items()}
    return out, left_out, counts


CONFTEST = '''
"""Written by tools/joblib_suite.py: joblib's conftest fixtures, and the parametrized
cases whose parameter is an object of joblib's internals are left out."""
import inspect
import json
import os

import pytest

try:
    from distributed.utils_test import loop, loop_in_thread  # noqa: F401  (joblib's conftest)
except ImportError:
    loop = loop_in_thread = None

import joblib

PUBLIC = {public!r}
UTILITY_MODULES = {utility!r}
_PUBLIC_OBJECTS = {{id(getattr(joblib, n, None)) for n in PUBLIC}}


def _internal(value):
    if id(value) in _PUBLIC_OBJECTS:
        return None
    classes = value.__mro__ if inspect.isclass(value) else type(value).__mro__
    for c in classes:
        mod = getattr(c, "__module__", "") or ""
        if mod.startswith("joblib") and mod not in UTILITY_MODULES and id(c) not in _PUBLIC_OBJECTS:
            return f"{{mod}}.{{c.__qualname__}}"
    if callable(value) and not inspect.isclass(value):
        mod = getattr(value, "__module__", "") or ""
        if mod.startswith("joblib") and mod not in UTILITY_MODULES:
            return f"{{mod}}.{{getattr(value, '__qualname__', value)}}"
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "thread_unsafe: joblib's marker (pytest-run-parallel)")


def pytest_collection_modifyitems(config, items):
    report = {{}}
    for item in items:
        reason = None
        for m in item.iter_markers("skip"):
            r = m.kwargs.get("reason", "")
            if r.startswith("{tag}"):
                reason = r
        if reason is None and hasattr(item, "callspec"):
            for name, value in item.callspec.params.items():
                what = _internal(value)
                if what:
                    reason = f"{tag} a parameter ({{name}}) is an object of joblib's internals ({{what}})"
                    item.add_marker(pytest.mark.skip(reason=reason))
                    break
        report[item.nodeid] = reason
    out = os.environ.get("JOBLIB_SUITE_COLLECT")
    if out:
        with open(out, "w") as f:
            json.dump(report, f)
'''

PYTEST_INI = """[pytest]
addopts = -p no:randomly -p no:cacheprovider --import-mode=prepend
timeout = {timeout}
filterwarnings = ignore::DeprecationWarning
"""


def prepare(dest: Path, lib: str, files: list[str], timeout: int) -> tuple[dict, dict]:
    import joblib

    src_dir = Path(joblib.__file__).parent / "test"
    sources = {f: (src_dir / f).read_text() for f in FILES}
    out, left_out, counts = select(sources, lib)
    for f in FILES:  # every file is written (they import each other's helpers)
        (dest / f).write_text(out[f])
    for f in COPIED_AS_IS:  # helpers the scripts of the tests import by module name
        shutil.copy(src_dir / f, dest / f)
    utility = sorted(UTILITY_MODULES)
    (dest / "conftest.py").write_text(CONFTEST.format(public=sorted(PUBLIC), utility=utility, tag=LEFT_OUT_TAG))
    (dest / "pytest.ini").write_text(PYTEST_INI.format(timeout=timeout))
    return left_out, counts


def collect(dest: Path, files: list[str]) -> dict[str, str | None]:
    report = dest / "collect.json"
    env = {**os.environ, "JOBLIB_SUITE_COLLECT": str(report), "PYTHONPATH": str(dest)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(dest / "pytest.ini"), "--rootdir", str(dest),
         "--collect-only", "-q", *files],
        cwd=dest, env=env, capture_output=True, text=True,
    )
    if not report.exists():
        sys.exit(f"collection failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(report.read_text())


def run_file(dest: Path, f: str, workers: int, timeout: int) -> dict:
    xml = dest / f"{f}.xml"
    env = {**os.environ, "PYTHONPATH": str(dest)}
    env.pop("JOBLIB_SUITE_COLLECT", None)
    cmd = [sys.executable, "-m", "pytest", "-c", str(dest / "pytest.ini"), "--rootdir", str(dest),
           f"--timeout={timeout}", f"--junitxml={xml}", "-v", "-rfE", "--tb=line", f]
    if workers > 0:
        cmd[3:3] = ["-n", str(workers)]
    log = dest / f"{f}.log"  # pytest's output, written as it runs
    t0 = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run(cmd, cwd=dest, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    output = log.read_text(errors="replace")
    res = {"passed": 0, "failed": 0, "skipped": 0, "left_out": 0, "wall": round(wall, 1), "failures": {}}
    if not xml.exists():
        res["failed"] = -1
        res["error"] = output[-3000:]
        return res
    for case in ET.parse(xml).getroot().iter("testcase"):
        nodeid = f"{case.get('classname', '')}::{case.get('name')}"
        kids = {c.tag: c for c in case}
        if "failure" in kids or "error" in kids:
            res["failed"] += 1
            el = kids.get("failure", kids.get("error"))
            res["failures"][nodeid] = (el.get("message") or "")[:300]
        elif "skipped" in kids:
            if (kids["skipped"].get("message") or "").startswith(LEFT_OUT_TAG):
                res["left_out"] += 1
            else:
                res["skipped"] += 1
        else:
            res["passed"] += 1
    res["tail"] = output[-1500:]
    return res


def print_selection(left_out: dict, counts: dict, collected: dict[str, str | None], files: list[str]) -> None:
    print(__doc__.split("The selection rule (printed by every run):")[1].strip())
    print("\nUtility scopes:", "; ".join(f"{f}::{fn}: {why}" for (f, fn), why in UTILITY_SCOPES.items()))
    print("\nSelection (test functions, then collected cases):")
    for f in files:
        items = {k: v for k, v in collected.items() if k.split("::")[0] == f}
        out = sum(1 for v in items.values() if v)
        print(f"  {f}: {counts[f]} test functions, {len(left_out[f])} left out; "
              f"{len(items)} cases, {len(items) - out} selected, {out} left out")
    reasons: dict[str, int] = {}
    for v in collected.values():
        if v:
            for r in v[len(LEFT_OUT_TAG):].split(";"):
                key = re.sub(r"\(\w+=.*", "", r.strip())
                reasons[key] = reasons.get(key, 0) + 1
    print("  cases left out, by reason (a case may have several):")
    for r, n in sorted(reasons.items(), key=lambda x: -x[1]):
        print(f"    {n:4d}  {r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", choices=["par", "joblib"], default="par")
    ap.add_argument("--files", nargs="+", default=FILES, choices=FILES)
    ap.add_argument("--timeout", type=int, default=60)
    ap.add_argument("-n", "--workers", type=int, default=2)
    ap.add_argument("--keep", help="write the rewritten files to this folder and keep them")
    ap.add_argument("--list", action="store_true", help="print the selection only")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("-k", dest="verbose_failures", action="store_true", help="print each failure's message")
    args = ap.parse_args(argv)

    import joblib

    dest = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="joblib-suite-"))
    dest.mkdir(parents=True, exist_ok=True)
    try:
        left_out, counts = prepare(dest, args.against, args.files, args.timeout)
        collected = collect(dest, args.files)
        print(f"joblib {joblib.__version__} tests ({Path(joblib.__file__).parent / 'test'}) "
              f"against {args.against}, in {dest}")
        print_selection(left_out, counts, collected, args.files)
        if args.list:
            for f in args.files:
                for t, rs in left_out[f].items():
                    print(f"  left out {f}::{t}: {'; '.join(rs)}")
            return 0
        results = {}
        for f in args.files:
            print(f"\nrunning {f} ...", flush=True)
            results[f] = run_file(dest, f, args.workers, args.timeout)
            r = results[f]
            print(f"  {r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped, "
                  f"{r['left_out']} left out, {r['wall']} s", flush=True)
            if r.get("error"):
                print(r["error"])
            for nodeid, msg in r["failures"].items():
                print(f"  FAILED {nodeid}" + (f": {msg}" if args.verbose_failures else ""))
        print(f"\njoblib's own tests against {args.against} (pytest -n {args.workers}, --timeout {args.timeout}):\n")
        print("| test file | passed | failed | skipped | left out | wall time |")
        print("|---|---|---|---|---|---|")
        tot = dict.fromkeys(("passed", "failed", "skipped", "left_out", "wall"), 0.0)
        for f, r in results.items():
            print(f"| `{f}` | {r['passed']} | {r['failed']} | {r['skipped']} | {r['left_out']} | {r['wall']:.0f} s |")
            for k in tot:
                tot[k] += r[k]
        print(f"| total | {tot['passed']:.0f} | {tot['failed']:.0f} | {tot['skipped']:.0f} | "
              f"{tot['left_out']:.0f} | {tot['wall']:.0f} s |")
        if args.json:
            Path(args.json).write_text(json.dumps({"against": args.against, "results": results}, indent=1))
        return 1 if tot["failed"] else 0
    finally:
        if not args.keep:
            shutil.rmtree(dest, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
