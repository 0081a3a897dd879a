"""Shared pytest configuration.

Reusable hypothesis strategies and graph helpers live in ``tests/strategies.py``;
this file makes that module importable (``import strategies``) from any test
file, whatever pytest's import mode.
"""

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
