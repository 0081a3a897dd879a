"""Generates the API reference (``docs/api/*.md``) from the docstrings.

``python tools/apidoc.py docs/api`` rewrites every page, each atomically, and removes pages of that folder it no
longer renders; a test checks that the committed pages equal what this module renders.

The pages follow the conventions of mkdocstrings and pdoc for Google-style docstrings: one page per layer of the
package (``graph``, ``scheduling``, ``layout``, ``fsm``, ``engine``, ``training``, ``zoo``, ``dynamic``, ``apps``),
each opening with its layer package's docstring, then one section per module with that module's docstring and its
public names (the module's ``__all__``, or the classes and functions it defines when it has none); ``index.md``
lists every name of ``edbatch_jax.__all__`` by layer. In the docstrings, the sections ``Args:``, ``Attributes:``,
``Raises:`` (lists, names in code), ``Returns:`` and ``Yields:`` become Markdown; reST roles
(``:class:`~edbatch_jax.X```) become code, linked to the entry that documents the target; double backticks become
single ones; literal blocks (``::``) become fenced code blocks.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import edbatch_jax as eb
from edbatch_jax.io import write_text_atomic

__all__ = ["LAYERS", "main", "render_pages"]

LAYERS = (
    ("graph", "Graphs"),
    ("scheduling", "Scheduling"),
    ("layout", "Memory layout"),
    ("fsm", "The learned FSM policy"),
    ("engine", "Execution engines"),
    ("training", "Training"),
    ("zoo", "Model zoo"),
    ("dynamic", "Structure decided while it runs"),
    ("apps", "Applications"),
)
"""Layer packages of ``edbatch_jax``, in import order, with the title of their page."""

COMMAND = "python tools/apidoc.py docs/api"
ROLE = re.compile(r":(?:py:)?(class|func|meth|data|mod|attr|exc|obj|const):`([^`]+)`")
SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Keyword Args|Attributes|Raises|Returns|Return|Yields|Yield|"
    r"Examples?|Notes?|Warnings?|See Also|References):\s*$"
)
LIST_SECTIONS = {"Args": "Args", "Arguments": "Args", "Parameters": "Args", "Keyword Args": "Keyword Args"}
LIST_SECTIONS |= {"Attributes": "Attributes", "Raises": "Raises"}
ITEM = re.compile(r"^(\*{0,2}[A-Za-z_][\w.]*)\s*(?:\(([^)]*)\))?\s*:(?:\s+(.*))?$")


# ----------------------------------------------------------------------------------------------- the model
@dataclass
class Entry:
    """One documented object: where it is documented, its names and how to show it."""

    name: str
    obj: object
    module: str  # the module whose section documents it
    page: str
    kind: str  # "class", "function" or "value"
    aliases: list[str] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass
class Section:
    """One module's section of a layer page."""

    module: object
    names: list[str]
    entries: list[Entry] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.module.__name__


class Registry:
    """Every documented module, object and method, by each dotted path it can be referred to by."""

    def __init__(self):
        self.targets: dict[str, tuple[str, str]] = {}  # dotted path -> (page, anchor)

    def add(self, path: str, page: str, anchor: str) -> None:
        self.targets.setdefault(path, (page, anchor))

    def resolve(self, target: str, module: str, cls: str | None) -> tuple[str, str] | None:
        """The (page, anchor) of ``target`` as a docstring of ``module`` (inside class ``cls``) refers to it."""
        target = target.lstrip(".")
        layer = ".".join(module.split(".")[:2])
        candidates = [target]
        if cls:
            candidates.append(f"{module}.{cls}.{target}")
        candidates += [f"{module}.{target}", f"{layer}.{target}", f"edbatch_jax.{target}"]
        for c in candidates:
            if c in self.targets:
                return self.targets[c]
        tail = "." + target
        found = {v for k, v in self.targets.items() if k.endswith(tail)}
        return found.pop() if len(found) == 1 else None


# ----------------------------------------------------------------------------------------------- collecting
def _layer_modules(layer: str) -> list:
    package = importlib.import_module(f"edbatch_jax.{layer}")
    modules = [package]
    for info in sorted(pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."), key=lambda i: i.name):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def _public_names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(dict.fromkeys(names))
    return [
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(v) or inspect.isfunction(v))
        and getattr(v, "__module__", None) == module.__name__
    ]


def _kind(obj) -> str:
    if not str(getattr(obj, "__module__", None) or "").startswith("edbatch_jax"):
        return "value"  # a value, or a name for something outside the library (``PyTree = typing.Any``)
    if inspect.isclass(obj):
        return "class"
    if callable(obj) and (inspect.isroutine(obj) or hasattr(obj, "__wrapped__")):
        return "function"
    return "value"


def _collect():
    """Pages (layer -> sections), entries by identity and the registry of link targets."""
    public = set(eb.__all__)
    pages: dict[str, list[Section]] = {}
    entries: dict[tuple[str, int], Entry] = {}
    registry = Registry()
    listed: list[tuple[Section, str, object]] = []
    for layer, _ in LAYERS:
        page = f"{layer}.md"
        sections = pages[layer] = []
        for module in _layer_modules(layer):
            section = Section(module, _public_names(module))
            sections.append(section)
            registry.add(section.name, page, section.name)
            for name in section.names:
                try:
                    obj = getattr(module, name)
                except AttributeError:  # a name being added or removed while the pages render
                    continue
                if not inspect.ismodule(obj):
                    listed.append((section, name, obj))
    by_module = {s.name: s for sections in pages.values() for s in sections}
    # an object is documented where it is defined, if that module lists it; else where first listed (not a package)
    for prefer_home in (True, False):
        for section, name, obj in sorted(listed, key=lambda item: hasattr(item[0].module, "__path__")):
            key = (name, id(obj))
            if key in entries:
                continue
            home = getattr(obj, "__module__", None) if _kind(obj) != "value" else None
            if prefer_home and home != section.name and home in by_module and name in by_module[home].names:
                continue
            layer = section.name.split(".")[1]
            entries[key] = entry = Entry(name, obj, section.name, f"{layer}.md", _kind(obj))
            section.entries.append(entry)
    # names of eb.__all__ listed by no module: documented in the module that defines them, if it is on a page
    for name in eb.__all__:
        obj = getattr(eb, name, None)
        if obj is None or inspect.ismodule(obj) or (name, id(obj)) in entries:
            continue
        home = by_module.get(getattr(obj, "__module__", None))
        if home is not None:
            home.names.append(name)
            listed.append((home, name, obj))
            entries[(name, id(obj))] = entry = Entry(name, obj, home.name, f"{home.name.split('.')[1]}.md", _kind(obj))
            home.entries.append(entry)
    for section, name, obj in listed:
        entry = entries[(name, id(obj))]
        entry.aliases.append(f"{section.name}.{name}")
    for (name, _), entry in entries.items():
        if name in public and getattr(eb, name, None) is entry.obj:
            entry.aliases.append(f"edbatch_jax.{name}")
        entry.aliases = list(dict.fromkeys([entry.anchor, *entry.aliases]))
        for alias in entry.aliases:
            registry.add(alias, entry.page, entry.anchor)
        if entry.kind == "class":
            for member in _members(entry.obj):
                for alias in entry.aliases:
                    registry.add(f"{alias}.{member}", entry.page, f"{entry.anchor}.{member}")
            registry.add(f"{entry.obj.__module__}.{entry.obj.__qualname__}", entry.page, entry.anchor)
    for sections in pages.values():
        for section in sections:
            section.entries.sort(key=lambda e: section.names.index(e.name))
    return pages, entries, registry


def _members(cls) -> list[str]:
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod, property)):
            out.append(name)
    return out


# ----------------------------------------------------------------------------------------------- docstrings → Markdown
@dataclass
class Context:
    """Where a docstring is rendered: its module and class (for relative roles) and the page it lands on."""

    registry: Registry
    module: str
    page: str
    cls: str | None = None

    def link(self, target: str) -> str | None:
        found = self.registry.resolve(target, self.module, self.cls)
        if found is None:
            return None
        page, anchor = found
        return f"#{anchor}" if page == self.page else f"{page}#{anchor}"


def _code(text: str) -> str:
    if "`" not in text:
        return f"`{text}`"
    return "<code>" + text.replace("&", "&amp;").replace("<", "&lt;").replace("`", "&#96;") + "</code>"


def _role(match: re.Match, ctx: Context) -> str:
    role, content = match.group(1), match.group(2).strip()
    titled = re.fullmatch(r"(.*?)\s*<([^>]+)>", content)
    if titled:
        shown, target = titled.group(1), titled.group(2).lstrip("~")
    elif content.startswith("~"):
        target = content[1:]
        shown = target.rsplit(".", 1)[-1]
    else:
        target = shown = content
    if role == "mod" and not titled and not content.startswith("~"):
        shown = target
    href = ctx.link(target)
    return f"[{_code(shown)}]({href})" if href else _code(shown)


def inline(text: str, ctx: Context) -> str:
    """Roles and double backticks of one piece of prose as Markdown (code spans left alone)."""
    out, pos = [], 0
    for m in re.finditer(r"``(.+?)``", text, re.S):
        out.append(ROLE.sub(lambda r: _role(r, ctx), text[pos : m.start()]))
        out.append(_code(" ".join(m.group(1).split())))
        pos = m.end()
    out.append(ROLE.sub(lambda r: _role(r, ctx), text[pos:]))
    return "".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _fence(block: list[str]) -> list[str]:
    code = textwrap.dedent("\n".join(block)).strip("\n")
    try:
        ast.parse(code)
        lang = "python"
    except SyntaxError:
        lang = "text"
    return [f"```{lang}", *code.splitlines(), "```"]


def _content_indent(line: str) -> int:
    """The indentation of a paragraph's text: past the marker when it opens a list item."""
    bullet = re.match(r"([*+-]|\d+[.)])\s+", line.lstrip())
    return _indent(line) + (len(bullet.group(0)) if bullet else 0)


def _prose(lines: list[str], ctx: Context) -> list[str]:
    """Paragraphs, lists and literal blocks (``::``) of a docstring without sections."""
    out: list[str] = []
    run: list[str] = []  # the lines of the current paragraph: roles and code may span them

    def flush():
        if run:
            out.extend(inline("\n".join(run), ctx).splitlines())
            run.clear()

    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            flush()
            out.append("")
            i += 1
            continue
        if not line.endswith("::"):
            run.append(line)
            i += 1
            continue
        base = _content_indent(run[0] if run else line)
        head = line[:-2].rstrip()
        if head.strip():
            run.append(head + ":")
        flush()
        j = i + 1
        block = []
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            block.append(lines[j])
            j += 1
        while block and not block[-1].strip():
            block.pop()
        if any(b.strip() for b in block):
            out += ["", *(" " * base + x for x in _fence(block)), ""]
        i = j
    flush()
    return out


def _items(body: list[str], ctx: Context, link_names: bool) -> list[str]:
    """A Google-style list section (``name (type): text`` items, continuation lines indented) as a Markdown list."""
    base = min((_indent(line) for line in body if line.strip()), default=0)
    items: list[list[str]] = []
    for line in body:
        if not line.strip():
            continue
        if _indent(line) == base or not items:
            items.append([line.strip()])
        else:
            items[-1].append(line.strip())
    out = []
    for item in items:
        first, rest = item[0], item[1:]
        m = ITEM.match(first)
        if m is None:
            out.append("- " + inline(" ".join(item), ctx))
            continue
        name, kind, text = m.group(1), m.group(2), m.group(3) or ""
        href = ctx.link(name) if link_names else None
        shown = f"[{_code(name)}]({href})" if href else _code(name)
        if kind:
            shown += f" ({inline(kind, ctx)})"
        text = " ".join([text, *rest]).strip()
        out.append(f"- {shown}: {inline(text, ctx)}" if text else f"- {shown}")
    return out


def docstring(doc: str | None, ctx: Context) -> list[str]:
    """A Google-style docstring (already dedented, as :func:`inspect.getdoc` gives it) as Markdown lines."""
    if not doc:
        return []
    lines = doc.expandtabs().splitlines()
    out: list[str] = []
    chunk: list[str] = []
    i = 0
    while i < len(lines):
        m = SECTION.match(lines[i]) if _indent(lines[i]) == 0 else None
        if m is None:
            chunk.append(lines[i])
            i += 1
            continue
        out += _prose(chunk, ctx)
        chunk = []
        j = i + 1
        body = []
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > 0):
            body.append(lines[j])
            j += 1
        while body and not body[-1].strip():
            body.pop()
        title = m.group(1)
        out += ["", f"**{LIST_SECTIONS.get(title, title)}:**", ""]
        if title in LIST_SECTIONS:
            out += _items(body, ctx, link_names=title == "Raises")
        elif any(line.strip().startswith(">>>") for line in body):
            out += _fence(body)
        else:
            out += _prose(textwrap.dedent("\n".join(body)).splitlines(), ctx)
        out.append("")
        i = j
    out += _prose(chunk, ctx)
    return _tidy(out)


def _tidy(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    while out and not out[-1]:
        out.pop()
    return out


def summary(doc: str | None, ctx: Context) -> str:
    """The first paragraph of a docstring, on one line."""
    first = (doc or "").strip().split("\n\n")[0]
    first = " ".join(line.strip() for line in first.splitlines())
    if first.endswith("::"):
        first = first[:-1]
    return inline(first, ctx)


# ----------------------------------------------------------------------------------------------- signatures
class _Raw:
    """An annotation written as a string (``from __future__ import annotations``), shown without quotes."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _clean(text: str) -> str:
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)  # default values whose repr holds an address
    return re.sub(r"ForwardRef\(('([^']*)')\)", r"\2", text)


def _signature(obj, drop_first: bool = False) -> inspect.Signature | None:
    try:
        sig = inspect.signature(obj)
        if (
            inspect.isclass(obj)
            and obj.__init__ is not object.__init__
            and all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values())
        ):
            init = inspect.signature(obj.__init__)  # a metaclass hides the constructor's signature (flax.nnx)
            sig = init.replace(parameters=list(init.parameters.values())[1:])
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if drop_first and params and params[0].name in ("self", "cls"):
        params = params[1:]
    params = [p.replace(annotation=_Raw(p.annotation)) if isinstance(p.annotation, str) else p for p in params]
    ret = sig.return_annotation
    if inspect.isclass(obj):
        ret = inspect.Signature.empty
    elif isinstance(ret, str):
        ret = _Raw(ret)
    return sig.replace(parameters=params, return_annotation=ret)


def _format_signature(prefix: str, sig: inspect.Signature | None) -> str:
    if sig is None:
        return prefix
    text = _clean(prefix + str(sig))
    if len(text) <= 100 or not sig.parameters:
        return text
    params = list(sig.parameters.values())
    shown = []
    for k, p in enumerate(params):  # the markers of keyword-only and positional-only parameters, as str(sig) has them
        before = {q.kind for q in params[:k]}
        if p.kind == p.KEYWORD_ONLY and not before & {p.VAR_POSITIONAL, p.KEYWORD_ONLY}:
            shown.append("*")
        shown.append(_clean(str(p)))
        if p.kind == p.POSITIONAL_ONLY and (k + 1 == len(params) or params[k + 1].kind != p.POSITIONAL_ONLY):
            shown.append("/")
    ret = (
        ""
        if sig.return_annotation is inspect.Signature.empty
        else " -> " + _clean(inspect.formatannotation(sig.return_annotation))
    )
    return prefix + "(\n" + "".join(f"    {p},\n" for p in shown) + ")" + ret


def _value_line(name: str, value) -> str:
    text = _clean(repr(value))
    if isinstance(value, os.PathLike):  # where this machine has it: not the page's business
        return f"{name}: {type(value).__name__}"
    if len(text) <= 90 and "\n" not in text:
        return f"{name} = {text}"
    size = f" ({len(value)} entries)" if hasattr(value, "__len__") else ""
    return f"{name}: {type(value).__name__}{size}"


_ATTRIBUTE_DOCS: dict[str, dict[str, str]] = {}


def _attribute_doc(module_name: str, name: str) -> str | None:
    """The string literal right after ``name = ...`` at the top level of a module (an attribute docstring)."""
    if module_name not in _ATTRIBUTE_DOCS:
        docs: dict[str, str] = {}
        try:
            tree = ast.parse(inspect.getsource(sys.modules[module_name]))
        except (OSError, TypeError, SyntaxError):
            tree = ast.Module(body=[], type_ignores=[])
        body = tree.body
        for node, after in zip(body, body[1:], strict=False):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                for t in targets:
                    if isinstance(t, ast.Name):
                        docs[t.id] = inspect.cleandoc(after.value.value)
        _ATTRIBUTE_DOCS[module_name] = docs
    return _ATTRIBUTE_DOCS[module_name].get(name)


# ----------------------------------------------------------------------------------------------- pages
def _anchors(*ids: str) -> str:
    return "".join(f'<a id="{i}"></a>' for i in dict.fromkeys(ids))


def _bases(cls, ctx: Context) -> str:
    shown = []
    for base in cls.__bases__:
        if base is object:
            continue
        path = f"{base.__module__}.{base.__qualname__}"
        label = (
            base.__qualname__ if base.__module__ in ("builtins",) or base.__module__.startswith("edbatch_jax") else path
        )
        href = ctx.link(path)
        shown.append(f"[{_code(label)}]({href})" if href else _code(label))
    return ", ".join(shown)


def _entry(entry: Entry, registry: Registry) -> list[str]:
    ctx = Context(registry, entry.module, entry.page, entry.name if entry.kind == "class" else None)
    lines = [_anchors(*entry.aliases), f"### `{entry.name}`", ""]
    obj = entry.obj
    if entry.kind == "value":
        lines += ["```python", _value_line(entry.name, obj), "```", ""]
        doc = _attribute_doc(entry.module, entry.name)
        if doc is None:
            defined = [m for m in {a.rsplit(".", 1)[0] for a in entry.aliases} if m in sys.modules]
            doc = next((d for m in defined if (d := _attribute_doc(m, entry.name))), None)
    else:
        prefix = f"class {entry.name}" if entry.kind == "class" else entry.name
        lines += ["```python", _format_signature(prefix, _signature(obj)), "```", ""]
        doc = inspect.getdoc(obj)
        if entry.kind == "class" and doc == inspect.getdoc(type(obj)):
            doc = None
    others = [a for a in entry.aliases if a != entry.anchor]
    shown = [("eb." + a[len("edbatch_jax.") :]) if a == f"edbatch_jax.{entry.name}" else a for a in others]
    if shown:
        lines += ["Also " + ", ".join(f"`{s}`" for s in shown) + ".", ""]
    if entry.kind == "class" and (bases := _bases(obj, ctx)):
        lines += [f"Bases: {bases}.", ""]
    lines += docstring(doc, ctx)
    lines.append("")
    if entry.kind == "class":
        for member in _members(obj):
            lines += _member(entry, member, vars(obj)[member], ctx)
    return lines


def _member(entry: Entry, name: str, value, ctx: Context) -> list[str]:
    cls = entry.obj
    ids = [f"{a}.{name}" for a in entry.aliases]
    lines = [_anchors(f"{entry.anchor}.{name}", *ids), f"#### `{entry.name}.{name}`", ""]
    if isinstance(value, property):
        target = value.fget
        sig = _signature(target)
        ret = (
            ""
            if sig is None or sig.return_annotation is inspect.Signature.empty
            else ": " + _clean(inspect.formatannotation(sig.return_annotation))
        )
        lines += ["```python", f"{name}{ret}  # property", "```", ""]
    else:
        target = getattr(cls, name)
        label = {classmethod: "classmethod ", staticmethod: "staticmethod "}.get(type(value), "")
        sig = _signature(target, drop_first=not isinstance(value, staticmethod))
        text = _format_signature(name, sig)
        lines += ["```python", f"@{label.strip()}\n{text}" if label else text, "```", ""]
    lines += docstring(inspect.getdoc(target), ctx)
    lines.append("")
    return lines


def _layer_page(layer: str, title: str, sections: list[Section], registry: Registry) -> str:
    page = f"{layer}.md"
    package = sections[0]
    ctx = Context(registry, package.name, page)
    out = [
        f"# {title}: `{package.name}`",
        "",
        f"[API index](index.md). Generated from the docstrings by `{COMMAND}`.",
        "",
        _anchors(package.name),
        *docstring(inspect.getdoc(package.module), ctx),
        "",
    ]
    modules = [s for s in sections if s is not package or s.entries]
    if len(modules) > 1:
        out += ["Modules:", ""]
        for s in modules:
            brief = summary(inspect.getdoc(s.module), Context(registry, s.name, page))
            out.append(f"- [`{s.name}`](#{s.name})" + (f": {brief}" if brief else ""))
        out.append("")
    for s in modules:
        out += [f"## `{s.name}`", ""]
        if s is package:
            out += [f"Names defined in the package `{s.name}` itself.", ""]
        else:
            out += [_anchors(s.name), *docstring(inspect.getdoc(s.module), Context(registry, s.name, page)), ""]
        for entry in s.entries:
            out += _entry(entry, registry)
    return "\n".join(_tidy(out)) + "\n"


def _index_page(pages: dict[str, list[Section]], entries: dict, registry: Registry) -> str:
    ctx = Context(registry, "edbatch_jax", "index.md")
    out = [
        "# API reference",
        "",
        f"Generated from the docstrings by `{COMMAND}`. `import edbatch_jax as eb` gives every name below; "
        "each layer's page documents the names of its modules too.",
        "",
        "| page | package | what it holds |",
        "|---|---|---|",
    ]
    for layer, title in LAYERS:
        package = pages[layer][0]
        brief = summary(inspect.getdoc(package.module), ctx).replace("|", "\\|")
        out.append(f"| [{title}]({layer}.md) | `{package.name}` | {brief} |")
    out.append("")
    by_layer: dict[str, list[tuple[str, str, str]]] = {layer: [] for layer, _ in LAYERS}
    for name in eb.__all__:
        obj = getattr(eb, name, None)
        if inspect.ismodule(obj):
            layer = obj.__name__.split(".")[1] if obj.__name__.count(".") else ""
            if layer in by_layer:
                doc = summary(inspect.getdoc(obj), ctx)
                by_layer[layer].append((name, f"{layer}.md", f"module `{obj.__name__}`: {doc}"))
            continue
        entry = entries.get((name, id(obj)))
        if entry is None:
            continue
        layer = entry.page[: -len(".md")]
        doc = inspect.getdoc(obj) if entry.kind != "value" else _attribute_doc(entry.module, name)
        by_layer[layer].append((name, f"{entry.page}#{entry.anchor}", summary(doc, ctx)))
    for layer, title in LAYERS:
        rows = by_layer[layer]
        if not rows:
            continue
        out += [f"## {title}", "", f"On the page [{layer}.md]({layer}.md).", "", "| name | summary |", "|---|---|"]
        for name, href, brief in rows:
            out.append(f"| [`eb.{name}`]({href}) | {brief.replace('|', chr(92) + '|')} |")
        out.append("")
    return "\n".join(_tidy(out)) + "\n"


def render_pages() -> dict[str, str]:
    """Every page of the reference: file name (in ``docs/api``) -> Markdown text."""
    pages, entries, registry = _collect()
    out = {"index.md": _index_page(pages, entries, registry)}
    for layer, title in LAYERS:
        out[f"{layer}.md"] = _layer_page(layer, title, pages[layer], registry)
    return out


def main(argv: list[str]) -> int:
    """Writes the pages into the folder ``argv[0]``; removes the folder's other Markdown pages."""
    if len(argv) != 1:
        raise SystemExit(f"usage: {COMMAND.replace('docs/api', 'OUT_DIR')}")
    folder = Path(argv[0])
    pages = render_pages()
    for name, text in pages.items():
        write_text_atomic(folder / name, text.rstrip("\n"))  # the writer ends the file with one newline
    for stale in sorted(folder.glob("*.md")):
        if stale.name not in pages:
            stale.unlink()
    print(f"wrote {len(pages)} pages to {folder}: {', '.join(pages)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
