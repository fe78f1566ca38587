"""MkDocs hook: the command reference (docs/commands.md), generated from the commands' parsers at build time.

On the commands page, `<!-- commands -->` becomes, for `vfrac` and each of its subcommands (the COMMANDS of
experiments.cli, so a new subcommand appears by itself), a heading, its `python -m` and `vfrac` forms and its
`--help` text. Each --help runs in this process (nothing else of the command runs: argparse exits after printing
it); a command module that does not import, or whose --help fails, fails the build with the reason.

tests/docs/test_docs.py uses run_help() and options() too: the flags the docs name must be the parsers'.
Under `mkdocs serve` the help is that of the code as it was when the server started (modules load once).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = "commands.md"  # the page, relative to docs/
MARKER = "<!-- commands -->"
COLUMNS = "100"  # argparse wraps the help to $COLUMNS: one width wherever the site is built


def _importable() -> None:
    """Put the repository on sys.path: mkdocs runs from .venv/bin, and restores sys.path after loading hooks."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Command:
    """One `vfrac` subcommand: `vfrac NAME ...` runs `MODULE.main([*BEFORE, ...])`."""

    name: str
    module: str  # the module whose main(argv) runs it, as experiments.cli.COMMANDS names it
    before: tuple[str, ...]  # arguments put before the user's ("import" for vfrac.cohort)
    summary: str

    @property
    def python_m(self) -> str:
        """The `python -m` form: `python -m vfrac.cohort import`."""
        return " ".join(["python -m", self.module.removesuffix(".__main__"), *self.before])

    @property
    def vfrac(self) -> str:
        return f"vfrac {self.name}"


def commands() -> list[Command]:
    """The subcommands of `vfrac`, in the order of experiments.cli.COMMANDS."""
    _importable()
    from experiments.cli import COMMANDS

    return [Command(name, module, tuple(before), summary) for name, (module, before, summary) in COMMANDS.items()]


@dataclass(frozen=True)
class Help:
    """What `python -m MODULE ARGV` did in this process."""

    code: int  # exit status
    out: str  # its stdout: the help text
    err: str
    parser: argparse.ArgumentParser | None  # the first parser main() parsed with (None: it used none)


@cache
def run_help(module: str, argv: tuple[str, ...] = ("--help",)) -> Help:
    """Run `MODULE.main(ARGV)` in this process, its output captured, the environment restored afterwards.

    For ARGV ending in --help: argparse prints the help and exits before the command does anything. An import
    error propagates (a module that does not exist is the caller's to report).
    """
    _importable()
    main = importlib.import_module(module).main
    parsers: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_args

    def recording(self, *args, **kwargs):
        parsers.append(self)
        return original(self, *args, **kwargs)

    environ = dict(os.environ)  # commands set process defaults (vfrac.runtime) before parsing
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(COLUMNS=COLUMNS, NO_COLOR="1")
    for name in ("FORCE_COLOR", "PYTHON_COLORS"):
        os.environ.pop(name, None)
    argparse.ArgumentParser.parse_args = recording
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv)) or 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        argparse.ArgumentParser.parse_args = original
        os.environ.clear()
        os.environ.update(environ)
    return Help(code, out.getvalue(), err.getvalue(), parsers[0] if parsers else None)


def subparser(parser: argparse.ArgumentParser, words) -> argparse.ArgumentParser:
    """The parser that the positional WORDS lead to through subcommands (`import` of vfrac.cohort's)."""
    for word in words:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and word in action.choices:
                parser = action.choices[word]
                break
    return parser


def options(parser: argparse.ArgumentParser, nested: bool = False) -> set[str]:
    """The option strings of PARSER (--cohort, -h, ...); with NESTED, of its subcommands' parsers too."""
    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if nested and isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found |= options(child, nested=True)
    return found


def command_help(command: Command) -> str:
    """The --help text of COMMAND, or a RuntimeError saying why there is none."""
    try:
        shown = run_help(command.module, (*command.before, "--help"))
    except Exception as error:  # the build stops with the reason, whatever it is
        raise RuntimeError(f"{command.vfrac} ({command.module}): cannot import its module: "
                           f"{type(error).__name__}: {error}") from error
    if shown.code != 0 or not shown.out.strip():
        raise RuntimeError(f"{command.vfrac} ({command.module}): `{command.python_m} --help` exits {shown.code} "
                           f"with {'no output' if not shown.out.strip() else 'output'}: {shown.err.strip()[-500:]}")
    return shown.out.rstrip()


def render() -> str:
    """The Markdown that replaces MARKER: `vfrac` itself, then each subcommand."""
    _importable()
    from experiments.cli import usage

    parts = ["## vfrac {#vfrac}\n\n```text\n" + usage() + "\n```\n"]
    for command in commands():
        parts.append(
            f"## {command.vfrac} {{#{command.name}}}\n\n{command.summary[:1].upper()}{command.summary[1:]}.\n\n"
            f"```bash\n{command.python_m} [ARGUMENTS]\n{command.vfrac} [ARGUMENTS]\n```\n\n"
            f"```text\n{command_help(command)}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    from mkdocs.exceptions import PluginError

    if MARKER not in markdown:
        raise PluginError(f"docs_hooks/commands.py: {PAGE} lacks the marker {MARKER} that the reference replaces")
    try:
        return markdown.replace(MARKER, render())
    except RuntimeError as error:
        raise PluginError(f"docs_hooks/commands.py: the command reference: {error}") from error


def on_pre_build(config, **kwargs) -> None:
    run_help.cache_clear()  # `mkdocs serve` rebuilds: run each --help again
