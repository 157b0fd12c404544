"""A batch of model inputs: named arrays that share their first (batch) axis.

Most models take one float32 input; a text model takes token ids and an attention mask, int32,
whose second axis (the sequence) is as long as the longest row of the batch. A Batch knows each
row's length, so taking rows out of it gives what a client would send for those rows: padded to
their own longest row, not to the longest of the whole set.

Light on purpose: numpy only (the locust process imports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Batch:
    """Named input arrays (in the model's input order) sharing axis 0; for inputs listed in
    `variable`, axis 1 is a sequence whose length per row is `lengths` (the rest is padding)."""

    arrays: dict[str, np.ndarray]
    lengths: np.ndarray | None = None  # one per row, for the variable-length inputs
    variable: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.arrays:
            raise ValueError("a batch needs at least one input")
        rows = {len(a) for a in self.arrays.values()}
        if len(rows) != 1:
            raise ValueError(f"inputs disagree on the number of rows: {sorted(rows)}")
        unknown = self.variable - set(self.arrays)
        if unknown:
            raise ValueError(f"variable-length inputs {sorted(unknown)} are not in the batch")
        if self.variable and (self.lengths is None or len(self.lengths) != len(self)):
            raise ValueError("variable-length inputs need one length per row")

    @classmethod
    def single(cls, name: str, array: np.ndarray) -> Batch:
        """A batch of a one-input model."""
        return cls({name: array})

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def names(self) -> list[str]:
        return list(self.arrays)

    @property
    def only(self) -> np.ndarray:
        """The array of a one-input model's batch."""
        if len(self.arrays) != 1:
            raise ValueError(f"this model takes {len(self.arrays)} inputs: {self.names}")
        return next(iter(self.arrays.values()))

    @property
    def width(self) -> int | None:
        """The sequence length of the variable-length inputs (None where there are none)."""
        if not self.variable:
            return None
        return next(self.arrays[n] for n in self.variable).shape[1]

    def rows(self, index: slice | np.ndarray | list[int]) -> Batch:
        """The chosen rows, variable-length inputs cut to the longest of them."""
        lengths = None if self.lengths is None else self.lengths[index]
        width = int(lengths.max()) if self.variable and len(lengths) else None
        arrays = {
            name: (array[index][:, :width] if name in self.variable else array[index])
            for name, array in self.arrays.items()
        }
        return Batch(arrays, lengths, self.variable)

    __getitem__ = rows

    def padded(self, width: int) -> Batch:
        """The batch with its variable-length inputs padded (zeros) or cut to `width`."""
        arrays = {}
        for name, array in self.arrays.items():
            if name in self.variable:
                array = array[:, :width]
                if array.shape[1] < width:
                    pad = [(0, 0), (0, width - array.shape[1]), *[(0, 0)] * (array.ndim - 2)]
                    array = np.pad(array, pad)
            arrays[name] = array
        return Batch(arrays, self.lengths, self.variable)

    def contiguous(self) -> Batch:
        return Batch({n: np.ascontiguousarray(a) for n, a in self.arrays.items()},
                     self.lengths, self.variable)

    # golden.npz keeps each input under "input:<name>"
    def to_npz(self) -> dict[str, np.ndarray]:
        stored = {f"input:{name}": array for name, array in self.arrays.items()}
        if self.variable:
            stored["lengths"] = self.lengths
            stored["variable"] = np.array(sorted(self.variable))
        return stored

    @classmethod
    def from_npz(cls, data: dict[str, np.ndarray] | np.lib.npyio.NpzFile) -> Batch:
        arrays = {key.split(":", 1)[1]: data[key] for key in data.keys()
                  if key.startswith("input:")}
        if not arrays:
            raise KeyError("no input:<name> arrays")
        variable = frozenset(str(n) for n in data["variable"]) if "variable" in data else (
            frozenset())
        return cls(arrays, data["lengths"] if variable else None, variable)
