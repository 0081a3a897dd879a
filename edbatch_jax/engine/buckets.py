"""Shape bucketing: batch widths and buffer capacities are rounded up to a ladder.

The number of compiled executables is bounded by the number of distinct
bucketed shapes, whatever the graphs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bucket", "bucket_array", "fine_bucket_array", "fine_ladder"]


def bucket(n: int, minimum: int = 1) -> int:
    """Smallest power of two ``>= max(n, minimum)``."""
    n = max(int(n), minimum, 1)
    return 1 << (n - 1).bit_length()


def bucket_array(n: np.ndarray, minimum: int = 1) -> np.ndarray:
    """Vectorised :func:`bucket` over an int array."""
    n = np.maximum(np.asarray(n, dtype=np.int64), max(minimum, 1))
    return (1 << np.ceil(np.log2(n)).astype(np.int64)).astype(np.int64)


def fine_bucket_array(n: np.ndarray) -> np.ndarray:
    """Smallest ``2^k`` or ``3 * 2^k`` that is ``>= n`` (at least 1), vectorised.

    A ladder twice as dense as :func:`bucket_array`: padding to it wastes
    under a third of a batch instead of under half.
    """
    power = bucket_array(n)
    three_quarters = (power * 3) // 4
    return np.where((three_quarters >= np.asarray(n)) & (power >= 4), three_quarters, power)


def fine_ladder(limit: int) -> list[int]:
    """The values of :func:`fine_bucket_array` up to ``limit``, ascending."""
    out, k = [], 1
    while k <= limit:
        out.append(k)
        if k >= 2 and k * 3 // 2 <= limit:
            out.append(k * 3 // 2)
        k *= 2
    return out
