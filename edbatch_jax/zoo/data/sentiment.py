"""Root sentiment metrics of SST, as Tai et al. (2015) report them: fine-grained and binary accuracy.

Every SST tree's root carries a label in ``0..4`` (very negative, negative,
neutral, positive, very positive). :func:`root_sentiment_metrics` scores a
5-class classifier's root logits:

* fine-grained accuracy: the argmax of the 5 logits against the label, over
  every root;
* binary accuracy: over the roots whose label is not neutral (2 left out),
  classes 0 and 1 negative, 3 and 4 positive. The prediction sums the
  softmax probabilities of each polarity, ``p(0) + p(1)`` against
  ``p(3) + p(4)`` (``binary="sum"``, the default; a tie is negative); the
  alternative, ``binary="argmax"``, takes the argmax over the four
  non-neutral classes. Tai et al. train a separate model for the binary task
  (neutral sentences left out of training); the numbers here come from the
  fine-grained model, so put them beside that column with this in mind.

This module is pure NumPy/Python; it does not import JAX.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NEUTRAL", "binary_predictions", "root_sentiment_metrics"]

NEUTRAL = 2
"""The neutral label, left out of binary accuracy; labels below it are negative, above it positive."""


def binary_predictions(logits: np.ndarray, binary: str = "sum") -> np.ndarray:
    """bool ``[N]``: whether each row of 5-class ``logits`` ``[N, 5]`` is predicted positive.

    Args:
      logits: f32 ``[N, 5]``.
      binary: ``"sum"``: ``p(3) + p(4) > p(0) + p(1)`` under the softmax;
        ``"argmax"``: the argmax over classes 0, 1, 3, 4 is 3 or 4.

    Raises:
      ValueError: ``logits`` is not ``[N, 5]``, or ``binary`` is neither rule.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != 5:
        raise ValueError(f"logits must be [N, 5] (the SST classes), got shape {logits.shape}")
    if binary == "sum":
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p[:, 3:].sum(axis=1) > p[:, :2].sum(axis=1)
    if binary == "argmax":
        return logits[:, 3:].max(axis=1) > logits[:, :2].max(axis=1)
    raise ValueError(f"binary must be 'sum' or 'argmax', got {binary!r}")


def root_sentiment_metrics(logits: np.ndarray, labels: np.ndarray, binary: str = "sum") -> dict:
    """Fine-grained and binary root accuracy of SST roots.

    Args:
      logits: f32 ``[N, 5]``, the classifier's logits of ``N`` roots.
      labels: int ``[N]``, their labels in ``0..4``.
      binary: the binary prediction rule (:func:`binary_predictions`).

    Returns:
      ``{"roots": N, "root_accuracy": ..., "root_binary_accuracy": ...,
      "root_binary_count": ...}``: the fraction of roots whose argmax is the
      label, and of the ``root_binary_count`` non-neutral roots whose polarity
      is predicted; an accuracy over no roots is ``None``.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.shape[:1] != labels.shape:
        raise ValueError(f"{logits.shape[0]} rows of logits for {labels.shape} labels")
    polar = labels != NEUTRAL
    correct = binary_predictions(logits[polar], binary) == (labels[polar] > NEUTRAL)
    n, m = int(labels.size), int(polar.sum())
    return {
        "roots": n,
        "root_accuracy": float(np.mean(logits.argmax(axis=1) == labels)) if n else None,
        "root_binary_accuracy": float(correct.mean()) if m else None,
        "root_binary_count": m,
    }
