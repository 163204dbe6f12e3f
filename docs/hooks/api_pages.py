"""mkdocs hook: the API reference, one page per module, found by walking src/concept_edit at build time.

Nothing lists the modules by hand, so a module that moves, appears or goes away needs no edit here or in
mkdocs.yml: its page (`::: concept_edit.x.y`, rendered by mkdocstrings from the docstrings) and its nav entry
follow the source tree. The nav entry `API reference: api/index.md` in mkdocs.yml is replaced by the tree.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

PACKAGE = "concept_edit"
API_DIR = "api"
NAV_TITLE = "API reference"


@dataclass
class Package:
    dotted: str
    modules: list[str] = field(default_factory=list)  # dotted names of plain modules
    packages: list[Package] = field(default_factory=list)


_tree: Package | None = None


def _public(name: str) -> bool:
    return not name.startswith("_")


def walk(directory: Path, dotted: str) -> Package:
    """Every importable module under `directory` (a package: it has an __init__.py), private ones left out."""
    package = Package(dotted)
    for child in sorted(directory.iterdir()):
        if child.is_file() and child.suffix == ".py" and _public(child.stem):
            package.modules.append(f"{dotted}.{child.stem}")
        elif child.is_dir() and _public(child.name) and (child / "__init__.py").is_file():
            package.packages.append(walk(child, f"{dotted}.{child.name}"))
    return package


def page_uri(dotted: str, is_package: bool) -> str:
    parts = dotted.split(".")
    return "/".join([API_DIR, *parts, "index.md"]) if is_package else "/".join([API_DIR, *parts]) + ".md"


def _nav(package: Package) -> list:
    items: list = [page_uri(package.dotted, True)]
    items += [{module.rsplit(".", 1)[1]: page_uri(module, False)} for module in package.modules]
    items += [{sub.dotted.rsplit(".", 1)[1] + "/": _nav(sub)} for sub in package.packages]
    return items


def on_config(config):
    global _tree
    root = Path(config.config_file_path).resolve().parent / "src" / PACKAGE
    if not (root / "__init__.py").is_file():
        raise PluginError(f"api hook: no package at {root}")
    _tree = walk(root, PACKAGE)
    nav = config.nav or []
    for i, item in enumerate(nav):
        if isinstance(item, dict) and NAV_TITLE in item:
            nav[i] = {NAV_TITLE: [f"{API_DIR}/index.md", {PACKAGE: _nav(_tree)}]}
            break
    else:
        raise PluginError(f"api hook: mkdocs.yml's nav has no '{NAV_TITLE}' entry to fill")
    return config


def _module_page(dotted: str) -> str:
    return f"# `{dotted}`\n\n::: {dotted}\n    options:\n      show_root_heading: false\n      heading_level: 2\n"


def _package_page(package: Package) -> str:
    here = posixpath.dirname(page_uri(package.dotted, True))

    def link(uri: str) -> str:  # relative to this page's source file
        return posixpath.relpath(uri, here)

    lines = [
        f"# `{package.dotted}`",
        "",
        f"::: {package.dotted}",
        "    options:",
        "      show_root_heading: false",
        "      members: false",
        "",
    ]
    if package.modules or package.packages:
        lines += ["## Modules", ""]
        for module in package.modules:
            lines.append(f"- [`{module}`]({link(page_uri(module, False))})")
        for sub in package.packages:
            lines.append(f"- [`{sub.dotted}`]({link(page_uri(sub.dotted, True))}) (package)")
        lines.append("")
    return "\n".join(lines)


def _all(package: Package):
    yield package
    for sub in package.packages:
        yield from _all(sub)


def on_files(files, config):
    if _tree is None:
        raise PluginError("api hook: on_config did not run")
    for package in _all(_tree):
        files.append(File.generated(config, page_uri(package.dotted, True), content=_package_page(package)))
        for module in package.modules:
            files.append(File.generated(config, page_uri(module, False), content=_module_page(module)))
    return files
