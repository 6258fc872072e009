"""What one training of the replica check records, kept small: the model's variables after
every step go to a file (read back one variable at a time), each step's global batch is kept as
a digest, and the losses and logged metrics as numbers. Pure NumPy and files.

A check used to keep every variable of both runs after every step in memory, as float64: some
40 copies of the weights (12 GB at 69M parameters). The judge needs, per step and per
variable, the values before and after the step on both runs; reading them from the files one
variable at a time keeps the check's own memory at a few variables, whatever the model's size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = [
    "BatchRecord",
    "Run",
    "SnapshotSink",
    "Snapshots",
    "batch_record",
    "sorted_rows",
]


class SnapshotSink(Protocol):
    """Takes a model's variables after every step, one variable at a time."""

    def append(self, arrays: Iterable[np.ndarray]) -> None:
        """Take one snapshot."""

    def __len__(self) -> int:
        """Snapshots taken."""
        ...


class Snapshots:
    """The variables of one model after every step, appended in order (snapshot 0: before
    training) to a file, or kept in memory when no file is given (small tests).

    Every snapshot has the layout of the first: the same variables, shapes and dtypes.
    """

    def __init__(
        self,
        path: Path | None = None,
        layout: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
    ) -> None:
        self.path = path
        self.layout: list[tuple[np.dtype, tuple[int, ...]]] = list(layout or [])
        self._memory: list[list[np.ndarray]] = []
        self._offsets: list[int] = []
        self._count = 0
        if path is not None and layout is not None and path.is_file():
            size = self.snapshot_bytes
            self._count = path.stat().st_size // size if size else 0

    @property
    def snapshot_bytes(self) -> int:
        """Bytes of one snapshot in the file."""
        return sum(
            int(np.dtype(dtype).itemsize * int(np.prod(shape))) for dtype, shape in self.layout
        )

    def __len__(self) -> int:
        return self._count

    def append(self, arrays: Iterable[np.ndarray]) -> None:
        """Add one snapshot, one variable at a time (``arrays`` may be a generator)."""
        first = self._count == 0 and not self.layout
        if self.path is None:
            values = [np.array(a) for a in arrays]
            if first:
                self.layout = [(a.dtype, tuple(a.shape)) for a in values]
            self._memory.append(values)
        else:
            with self.path.open("ab") as out:
                for j, array in enumerate(arrays):
                    value = np.ascontiguousarray(array)
                    if first:
                        self.layout.append((value.dtype, tuple(value.shape)))
                    elif j >= len(self.layout) or value.shape != self.layout[j][1]:
                        raise ValueError(
                            f"snapshot {self._count}: variable {j} has shape {value.shape}, "
                            "expected the first snapshot's layout"
                        )
                    value.astype(self.layout[j][0], copy=False).tofile(out)
        self._count += 1

    def read(self, k: int, j: int) -> np.ndarray:
        """Variable ``j`` of snapshot ``k``: float32 for floats of 32 bits or fewer (float32
        holds float16 and bfloat16 exactly), float64 otherwise."""
        if self.path is None:
            value = np.asarray(self._memory[k][j])
        else:
            dtype, shape = self.layout[j]
            if len(self._offsets) != len(self.layout):
                sizes = [int(np.dtype(d).itemsize * int(np.prod(s))) for d, s in self.layout]
                self._offsets = [sum(sizes[:i]) for i in range(len(sizes))]
            offset = k * self.snapshot_bytes + self._offsets[j]
            count = int(np.prod(shape))
            value = np.fromfile(self.path, dtype=dtype, count=count, offset=offset).reshape(shape)
        wide = value.dtype.kind not in "fV" or value.dtype.itemsize > 4
        return value.astype(np.float64 if wide else np.float32)

    @property
    def variables(self) -> int:
        """Variables per snapshot."""
        return len(self.layout)


def sorted_rows(array: np.ndarray) -> np.ndarray:
    """The rows of one batch component in a fixed order (so a batch compares as a set)."""
    flat = (
        np.asarray(array, dtype=np.float64).reshape(array.shape[0], -1)
        if array.ndim
        else (np.asarray(array, dtype=np.float64).reshape(1, 1))
    )
    if flat.shape[1] == 0:
        return flat
    order = np.lexsort(flat.T[::-1])
    return flat[order]


@dataclass(frozen=True)
class BatchRecord:
    """One step's global batch: its size, a digest of its examples (in any order), whether
    every replica got the very same examples, and whether a plain (not per-replica) value
    reached the step."""

    size: int
    digest: str
    duplicated: bool = False
    undistributed: bool = False


def batch_record(local: Sequence[Sequence[np.ndarray]], replicas: int) -> BatchRecord:
    """The record of one step from each input component's per-replica arrays."""
    digest = hashlib.sha256()
    size = 0
    for c, parts in enumerate(local):
        rows = sorted_rows(np.concatenate([np.asarray(p) for p in parts], axis=0))
        size = size or rows.shape[0]
        digest.update(f"{c}:{rows.shape}".encode())
        digest.update(rows.tobytes())
    duplicated = (
        replicas > 1
        and all(len(parts) == replicas for parts in local)
        and all(all(np.array_equal(p, parts[0]) for p in parts[1:]) for parts in local)
    )
    undistributed = replicas > 1 and all(len(parts) == 1 for parts in local)
    return BatchRecord(size, digest.hexdigest(), duplicated, undistributed)


@dataclass
class Run:
    """What one training recorded.

    Attributes:
        losses: the loss per step (NaN where the model logs none).
        metrics: per step, every value the model logs (``loss``, ``d_loss``, ``mae``, ...).
        batches: per step, the global batch as the replicas received it.
        snapshots: the variables, [0] before training and [k + 1] after step k.
        seconds: the training's time.
        error: the training failed: its exception, in one line.
        reread: the input gave other batches when read again with the same seed (None: not
            read twice).
        sink: where the variables go instead of ``snapshots`` (the judge's step comparer).
    """

    losses: list[float] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    batches: list[BatchRecord] = field(default_factory=list)
    snapshots: Snapshots = field(default_factory=Snapshots)
    seconds: float = 0.0
    error: str | None = None
    reread: bool | None = None
    sink: SnapshotSink | None = None

    def keep(self, arrays: Iterable[np.ndarray]) -> None:
        """The variables after the next step (the first call: before training): to the sink
        when there is one (a comparison made as the run trains), else to ``snapshots``."""
        (self.sink if self.sink is not None else self.snapshots).append(arrays)
