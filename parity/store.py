"""Activations on disk: one append-only file per store plus an index, so a full-size comparison holds statistics in
memory, not every module's output. Arrays are written once, read back (memory-mapped) when the other side's module
produces its output, compared, and dropped."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


class ActivationStore:
    def __init__(self, directory: str | Path | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="mindport-activations-", dir=directory)
        self.path = Path(self._tmp.name) / "activations.bin"
        self._file = open(self.path, "wb")
        self._index: dict = {}  # key -> (offset, shape, dtype)
        self._offset = 0
        self._dirty = False

    def put(self, key, array: np.ndarray) -> None:
        a = np.ascontiguousarray(array)
        self._file.write(memoryview(a).cast("B"))
        self._index[key] = (self._offset, a.shape, a.dtype.str)
        self._offset += a.nbytes
        self._dirty = True

    def get(self, key) -> np.ndarray:
        offset, shape, dtype = self._index[key]
        if self._dirty:
            self._file.flush()
            self._dirty = False
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.zeros(shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=shape)

    def __contains__(self, key) -> bool:
        return key in self._index

    def keys(self):
        return self._index.keys()

    @property
    def nbytes(self) -> int:
        return self._offset

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.cleanup()
