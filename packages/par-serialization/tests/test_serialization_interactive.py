"""Functions and classes defined in a ``python -c`` script reach spawned workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json, multiprocessing, os
from concurrent.futures import ProcessPoolExecutor
from par_serialization import BatchSerializer, TaskPicklingError, wrap_non_picklable_objects

class DuckBatch:
    def __init__(self, tasks, nested=None, index=0):
        self.tasks, self.nested, self.index = tasks, nested, index
    def __call__(self):
        return [f(*a, **k) for f, a, k in self.tasks]

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self):
        return self.x ** 2 + self.y ** 2

def make_adder(n):
    def add(x):
        return x + n
    return add

def main_function(x):
    return -x

def outer():
    def nested(x):
        return x * 10
    return nested

out = {}
with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
    def run(ser, tasks, batch_type=DuckBatch):
        return pool.submit(ser(batch_type(tasks, None, 0))).result(timeout=60)

    ser = BatchSerializer()
    out["auto"] = run(ser, [(lambda x: x + 1, (1,), {}), (make_adder(5), (1,), {}),
                            (main_function, (3,), {}), (outer(), (2,), {}),
                            (Point.norm2, (Point(3, 4),), {})])
    p = run(ser, [(Point, (1, 2), {})])[0]
    out["class_back"] = [type(p) is Point, p.x, p.y]

    os.environ["LOKY_PICKLER"] = "pickle"
    plain = BatchSerializer()
    try:
        plain(DuckBatch([(lambda: 0, (), {})]))
        out["plain_lambda"] = "no error"
    except TaskPicklingError as exc:
        out["plain_lambda"] = exc.argument
    WDuck = wrap_non_picklable_objects(DuckBatch)
    WPoint = wrap_non_picklable_objects(Point)
    wrapped_main = wrap_non_picklable_objects(main_function)
    res = run(plain, [(wrapped_main, (4,), {}), (WPoint, (5, 6), {})], batch_type=WDuck)
    out["plain_wrapped"] = [res[0], type(res[1]) is WPoint, isinstance(res[1], Point), res[1].norm2()]
print("RESULT " + json.dumps(out))
"""


@pytest.mark.timeout(120)
def test_serialization_python_c_definitions_reach_spawned_workers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LOKY_PICKLER"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=100, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    assert out["auto"] == [2, 6, -3, 20, 25]
    assert out["class_back"] == [True, 1, 2]
    assert out["plain_lambda"] == "function"
    assert out["plain_wrapped"] == [-4, True, True, 61]
