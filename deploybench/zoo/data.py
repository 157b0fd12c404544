"""Data sets that ship inside packages: nothing is downloaded at run time."""

from __future__ import annotations

import numpy as np

from deploybench.zoo.spec import Split

HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0


def digits(shape: tuple[int, ...]) -> Split:
    """scikit-learn's bundled 8x8 digits, pixels scaled to [0, 1] (value / 16), row-major.

    The held-out split is stratified and fixed by seed, so golden samples never move.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape((-1, *shape))
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=HELD_OUT_FRACTION, stratify=y, random_state=SPLIT_SEED
    )
    return Split(x_train, y_train, x_test, y_test)
