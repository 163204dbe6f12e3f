"""mkdocs hook: option tables generated from the CLI parser itself, so the docs cannot drift from `--help`.

A page line `<!-- options: edit uce -->` becomes one table per argument group of `concept-edit edit uce`
(flag, default, meaning), built from `concept_edit.cli.build_parser()`: the same actions `--help` prints.
Any subcommand path works (`<!-- options: probe -->`, `<!-- options: export-lora -->`). A trailing
`(common)` keeps only the general group (the options every `edit` method shares), `(specific)` only the
others (a method's own options and inputs). `<!-- cli-reference -->` becomes a section per verb (and per
`edit` method) with its help line and its tables: the whole command line, found by walking the parser.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

PLACEHOLDER = re.compile(r"<!--\s*options:\s*(?P<path>[^>(]*?)\s*(?:\((?P<which>common|specific)\))?\s*-->")
GENERAL_GROUPS = ("options", "optional arguments")
REFERENCE = re.compile(r"^<!--[ \t]*cli-reference[ \t]*-->[ \t]*$", re.MULTILINE)
_parser: argparse.ArgumentParser | None = None


def on_config(config):
    """Import the package from this checkout's src/ (not from wherever it happens to be installed)."""
    src = str(Path(config.config_file_path).resolve().parent / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    return config


def _root_parser() -> argparse.ArgumentParser:
    global _parser
    if _parser is None:
        try:
            from concept_edit.cli import build_parser
        except ImportError as exc:  # the docs promise `concept_edit.cli.build_parser`
            raise PluginError(f"options hook: cannot import concept_edit.cli.build_parser: {exc}") from exc
        _parser = build_parser()
    return _parser


def subcommand(words: list[str]) -> argparse.ArgumentParser:
    """The parser of `concept-edit WORD WORD ...`."""
    parser = _root_parser()
    for depth, word in enumerate(words):
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or word not in subparsers[0].choices:
            known = sorted(subparsers[0].choices) if subparsers else []
            raise PluginError(
                f"options hook: `concept-edit {' '.join(words[: depth + 1])}` is not a command (known: {known})"
            )
        parser = subparsers[0].choices[word]
    return parser


def _split_default(help_text: str) -> tuple[str, str | None]:
    """Take a "(default: X)" the help text carries (the method options write their default there) out of it."""
    start = help_text.rfind("(default: ")
    if start < 0:
        return help_text, None
    depth, end = 0, None
    for i in range(start, len(help_text)):
        if help_text[i] == "(":
            depth += 1
        elif help_text[i] == ")":
            depth -= 1
            if depth == 0:
                end = i
                break
    if end is None:
        return help_text, None
    default = help_text[start + len("(default: ") : end]
    before, after = help_text[:start].rstrip(), help_text[end + 1 :].strip()
    rest = before + after if after[:1] in (";", ",", ".", ":", ")") else f"{before} {after}".strip()
    return rest, default


def _flag(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    names = " / ".join(action.option_strings) if action.option_strings else action.dest
    if action.nargs == 0:
        return names
    formatter = parser._get_formatter()
    return f"{names} {formatter._format_args(action, action.dest.upper())}"


def _default(action: argparse.Action, from_help: str | None) -> str:
    if action.required:
        return "required"
    if from_help is not None:
        return "" if from_help == "None" else from_help
    value = action.default
    if value is argparse.SUPPRESS or value is None:
        return ""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help is argparse.SUPPRESS:
        return ""
    return parser._get_formatter()._expand_help(action)


def options_table(words: list[str], which: str | None = None, allow_empty: bool = False) -> str:
    """HTML tables (raw HTML: help texts hold `*`, `_` and `|`, which Markdown would read) of every group."""
    parser = subcommand(words)
    command = "concept-edit " + " ".join(words)
    blocks = []
    for group in parser._action_groups:
        actions = [
            a for a in group._group_actions if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        ]
        general = group.title in GENERAL_GROUPS
        if not actions or (which == "common" and not general) or (which == "specific" and general):
            continue
        rows = []
        for action in actions:
            text, default = _split_default(_help(parser, action))
            cells = (
                f"<code>{html.escape(_flag(parser, action))}</code>",
                html.escape(_default(action, default)),
                html.escape(text),
            )
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        title = "general options" if general else group.title
        blocks.append(
            f'<table class="cli-options">\n<caption><code>{html.escape(command)}</code>: '
            f"{html.escape(title)}</caption>\n"
            "<thead><tr><th>option</th><th>default</th><th>meaning</th></tr></thead>\n<tbody>\n"
            + "\n".join(rows)
            + "\n</tbody>\n</table>"
        )
    if not blocks and allow_empty:
        return "No options."
    if not blocks:
        raise PluginError(f"options hook: `{command}` has no options")
    return "\n\n".join(blocks)


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in the order `--help` lists them."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


def cli_reference() -> str:
    root = _root_parser()
    parts = ["## `concept-edit`", "", options_table([])]
    for verb, help_text, parser in _subcommands(root):
        methods = _subcommands(parser)
        parts += ["", f"## `concept-edit {verb}`", "", html.escape(help_text)]
        if methods:
            first = methods[0][0]
            parts += [
                "",
                f"Options every `{verb} METHOD` shares (shown for `{first}`; `--mode` offers each one's own):",
            ]
            parts += ["", options_table([verb, methods[0][0]], "common")]
            for method, method_help, _ in methods:
                parts += ["", f"### `concept-edit {verb} {method}`", "", html.escape(method_help)]
                parts += ["", options_table([verb, method], "specific")]
        else:
            parts += ["", options_table([verb], allow_empty=True)]
    return "\n".join(parts) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    def render(match: re.Match) -> str:
        words = match.group("path").split()
        if words and words[0] == "concept-edit":
            words = words[1:]
        return "\n\n" + options_table(words, match.group("which")) + "\n\n"

    markdown = REFERENCE.sub(lambda _: "\n" + cli_reference() + "\n", markdown)
    return PLACEHOLDER.sub(render, markdown)
