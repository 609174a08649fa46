"""The command-line reference, generated from the click commands of ``groqbatch``.

:func:`cli_commands` walks :data:`pipeline.cli.main` and its groups; :func:`render_cli_reference`
writes each command as a section: its usage line, its help and a table of its options with
their help, as ``groqbatch COMMAND --help`` shows them. ``docs/hooks.py`` puts the result into
``cli.md`` at build time; ``tests/unit/test_docs.py`` checks that every command and option
has help and is in it.

Uses only click and the CLI, never MkDocs.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import click

from pipeline.cli import main

MARKER = "<!-- groqbatch:cli-reference -->"
PROG = "groqbatch"


@dataclass(frozen=True)
class CliCommand:
    """One command, with the click context it is shown in."""

    path: str
    """``groqbatch adapters pack``."""
    command: click.Command
    context: click.Context

    @property
    def anchor(self) -> str:
        """Its section's id, as MkDocs makes it from the heading: ``groqbatch-adapters-pack``."""
        return self.path.replace(" ", "-")


def cli_commands(group: click.Group = main) -> Iterator[CliCommand]:
    """The top command and every subcommand, depth first, in alphabetical order."""
    root = click.Context(group, info_name=PROG, **group.context_settings)
    yield CliCommand(PROG, group, root)
    yield from _subcommands(group, root)


def _subcommands(group: click.Group, parent: click.Context) -> Iterator[CliCommand]:
    for name in group.list_commands(parent):
        command = group.get_command(parent, name)
        if command is None or command.hidden:
            continue
        context = click.Context(command, info_name=name, parent=parent,
                                **command.context_settings)
        yield CliCommand(context.command_path, command, context)
        if isinstance(command, click.Group):
            yield from _subcommands(command, context)


def options(command: click.Command, context: click.Context) -> list[click.Option]:
    """The options a user can give, ``--help`` last, as ``--help`` lists them."""
    given = [param for param in command.params
             if isinstance(param, click.Option) and not param.hidden]
    help_option = command.get_help_option(context)
    return given + ([help_option] if help_option is not None else [])


def _help_text(command: click.Command) -> str:
    """The command's help as Markdown paragraphs (click's ``\\b`` no-rewrap marks dropped)."""
    text = inspect.cleandoc(command.help or "")
    return "\n".join(line for line in text.splitlines() if line.strip() != "\b")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_command(item: CliCommand) -> str:
    command, context = item.command, item.context
    usage = " ".join([item.path, *command.collect_usage_pieces(context)])
    out = [f"## `{item.path}`" if item.path != PROG else f"## `{PROG}`", "",
           "```text", f"Usage: {usage}", "```", "", _help_text(command), ""]
    if isinstance(command, click.Group):
        subs = [f"[`{sub.path}`](#{sub.anchor})" for sub in _subcommands(command, context)
                if sub.context.parent is context]
        out += ["Commands: " + ", ".join(subs) + ".", ""]
    rows = []
    for option in options(command, context):
        record = option.get_help_record(context)
        if record is None:
            continue
        names, help_text = record
        rows.append(f"| `{_cell(names)}` | {_cell(help_text)} |")
    if rows:
        out += ["| option | what it does |", "| --- | --- |", *rows, ""]
    return "\n".join(out)


def render_cli_reference() -> str:
    """Every command's section, the top command first."""
    return "\n".join(render_command(item) for item in cli_commands())


if __name__ == "__main__":
    print(render_cli_reference())
