"""The API reference page is generated from the docstrings and kept current."""

import sys
from pathlib import Path

import edbatch_jax as eb
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from apidoc import render  # noqa: E402


def test_api_page_is_current_and_covers_the_public_surface():
    page = (ROOT / "docs" / "api.md").read_text()
    assert page == render(), "docs/api.md is stale: run python tools/apidoc.py docs/api.md"
    modules = {"fsm", "workloads"}
    missing = [n for n in eb.__all__ if n not in modules and f"### `eb.{n}`" not in page]
    assert missing == []
