"""The API reference page is generated from the docstrings and kept current."""

from pathlib import Path

import edbatch_jax as eb
from edbatch_jax.apidoc import render

ROOT = Path(__file__).resolve().parents[1]


def test_api_page_is_current_and_covers_the_public_surface():
    page = (ROOT / "docs" / "api.md").read_text()
    assert page == render(), "docs/api.md is stale: run python -m edbatch_jax.apidoc docs/api.md"
    modules = {"fsm", "workloads"}
    missing = [n for n in eb.__all__ if n not in modules and f"### `eb.{n}`" not in page]
    assert missing == []
