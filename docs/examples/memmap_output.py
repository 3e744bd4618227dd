"""Workers write their results into one shared array, memory-mapped from a file.

The output array is created with ``numpy.lib.format.open_memmap`` in a temporary folder;
each worker process maps the same file (memmaps are sent by reference, not copied) and
fills its own rows. The large input array is memmapped automatically because it is
bigger than ``max_nbytes``.

Run: python docs/examples/memmap_output.py
"""

import os
import tempfile

import numpy as np
from numpy.lib.format import open_memmap
from par import Parallel, delayed


def fill_row(data: np.ndarray, out: np.ndarray, i: int) -> None:
    out[i] = data[i].sum()


def main() -> None:
    data = np.arange(40_000, dtype=np.float64).reshape(8, 5_000)  # 320 kB > max_nbytes
    with tempfile.TemporaryDirectory() as folder:
        out = open_memmap(os.path.join(folder, "out.npy"), mode="w+", dtype=np.float64, shape=(8,))
        Parallel(n_jobs=2, max_nbytes="100K")(delayed(fill_row)(data, out, i) for i in range(8))
        print("matches:", bool(np.array_equal(out, data.sum(axis=1))))
        print("row sums:", out[:3].tolist())
        del out  # release the mapping before the folder is removed


if __name__ == "__main__":
    main()
