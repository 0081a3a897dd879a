"""The API reference is generated from the docstrings and kept current; the documentation's links resolve."""

import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

import edbatch_jax as eb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from apidoc import render_pages  # noqa: E402

API = ROOT / "docs" / "api"
REGENERATE = "run: python tools/apidoc.py docs/api"
RAW_ROLE = re.compile(r":(class|func|meth|data|mod|attr):")
DOUBLE_BACKTICK = re.compile(r"(?<!`)``(?!`)")  # a reST literal; code fences (three or more) are Markdown
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return render_pages()


def test_api_pages_are_current(pages):
    on_disk = {p.name for p in API.glob("*.md")}
    assert on_disk == set(pages), f"docs/api holds {sorted(on_disk)}, the tool renders {sorted(pages)}: {REGENERATE}"
    stale = [name for name, text in pages.items() if (API / name).read_text() != text]
    assert stale == [], f"docs/api/{', docs/api/'.join(stale)} stale: {REGENERATE}"
    assert not (ROOT / "docs" / "api.md").exists(), "the reference is docs/api/index.md now"


def test_api_pages_have_no_raw_rest(pages):
    for name, text in pages.items():
        for number, line in enumerate(text.splitlines(), 1):
            assert not RAW_ROLE.search(line), f"docs/api/{name}:{number}: a raw reST role: {line}"
            assert not DOUBLE_BACKTICK.search(line), f"docs/api/{name}:{number}: a double backtick: {line}"


def test_every_public_name_is_documented_and_indexed(pages):
    names = [n for n in eb.__all__ if not isinstance(getattr(eb, n), type(eb))]  # module names like fsm aside
    layer_pages = "".join(text for name, text in pages.items() if name != "index.md")
    undocumented = [n for n in names if f'<a id="edbatch_jax.{n}"></a>' not in layer_pages]
    assert undocumented == [], f"not documented on any layer page: {undocumented}"
    unindexed = [n for n in names if f"[`eb.{n}`](" not in pages["index.md"]]
    assert unindexed == [], f"not in docs/api/index.md: {unindexed}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    ids = set(re.findall(r'<a id="([^"]+)"></a>', text))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M):
        slug = _slug(heading)
        ids.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return ids


def test_relative_links_resolve():
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for doc in documents:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # an absolute address
            path, _, anchor = unquote(target).partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such anchor)")
    assert broken == []
