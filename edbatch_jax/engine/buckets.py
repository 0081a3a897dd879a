"""Shape bucketing: batch widths and buffer capacities are rounded up to a ladder.

The number of compiled executables is bounded by the number of distinct
bucketed shapes, whatever the graphs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bucket", "bucket_array"]


def bucket(n: int, minimum: int = 1) -> int:
    """Smallest power of two ``>= max(n, minimum)``."""
    n = max(int(n), minimum, 1)
    return 1 << (n - 1).bit_length()


def bucket_array(n: np.ndarray, minimum: int = 1) -> np.ndarray:
    """Vectorised :func:`bucket` over an int array."""
    n = np.maximum(np.asarray(n, dtype=np.int64), max(minimum, 1))
    return (1 << np.ceil(np.log2(n)).astype(np.int64)).astype(np.int64)
