"""The package's shape, read from its source: no import circle, nothing imports upward, worlds are plug-ins that
nothing outside them imports, and library code holds no CLI code."""

import ast

import import_graph as graph
import pytest

EDGES = graph.graph()
WORLDS = sorted({graph.fold(m) for m in EDGES if graph.fold(m).startswith(graph.PLUGINS + ".")})


def test_the_graph_is_read():
    """The reader sees the imports it must see (a reader that saw nothing would pass every check below)."""
    assert len(EDGES) > 100
    assert "concept_edit.methods.registry" in EDGES["concept_edit.methods.uce.config"]
    assert "concept_edit.worlds.shapes.judge" in EDGES["concept_edit.worlds.shapes"]  # a lazy "module:Class" string
    assert "concept_edit.evaluation.suites" in EDGES["concept_edit.worlds.shapes.suites"]
    assert set(WORLDS) >= {"concept_edit.worlds.shapes", "concept_edit.worlds.digits", "concept_edit.worlds.real"}


def test_no_import_circle_between_modules():
    assert graph.cycles(EDGES) == []


def test_no_import_circle_between_the_parts_of_the_package():
    assert graph.cycles(graph.package_edges(EDGES)) == []


def test_no_module_imports_a_package_that_holds_it():
    assert graph.climbs(EDGES) == []


@pytest.mark.parametrize("world", WORLDS)
def test_nothing_outside_a_world_imports_it(world):
    outside = sorted(
        (a, b) for a, targets in EDGES.items() for b in targets
        if graph.fold(b) == world and graph.fold(a) != world and a != graph.PACKAGE
    )  # fmt: skip
    assert outside == []


@pytest.mark.parametrize("world", WORLDS)
def test_no_file_outside_a_world_names_its_modules(world):
    """The issue's bar: `grep -rl "worlds.shapes|worlds/shapes" src` lists only files inside that world."""
    folder = graph.SRC.joinpath(*world.split("."))
    dotted, slashed = world.removeprefix(graph.PACKAGE + "."), world.removeprefix(graph.PACKAGE + ".").replace(".", "/")
    naming = sorted(
        str(path.relative_to(graph.SRC)) for path in graph.SRC.rglob("*") if path.is_file() and path.suffix != ".pyc"
        and folder not in path.parents and "egg-info" not in str(path)
        and (dotted in (text := path.read_text(errors="ignore")) or slashed in text)
    )  # fmt: skip
    assert naming == []


def test_library_code_holds_no_cli_code():
    """argparse only in `concept_edit.cli` and in modules run as scripts (the worlds' training scripts)."""
    offenders = []
    for name, path in graph.modules().items():
        if name.startswith(f"{graph.PACKAGE}.cli"):
            continue
        source = path.read_text()
        tree = ast.parse(source)
        uses_argparse = any(
            isinstance(node, ast.Import | ast.ImportFrom)
            and "argparse" in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module])
            for node in ast.walk(tree)
        )
        if uses_argparse and '__name__ == "__main__"' not in source:
            offenders.append(name)
    assert offenders == []
    assert not [a for a, targets in EDGES.items() for b in targets
                if b.startswith(f"{graph.PACKAGE}.cli") and not a.startswith(f"{graph.PACKAGE}.cli")]  # fmt: skip
