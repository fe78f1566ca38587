"""Docs that cannot drift: what README.md and docs/*.md name (modules, flags, paths, commands) exists.

Each check takes a page's text and returns its problems as `FILE:LINE: ITEM: why`; the page tests run them on
every page, the snippet tests at the end show each one failing. The flags are the parsers' own: each command's
`main([..., "--help"])` runs in this process (docs_hooks/commands.py, which builds the command reference too).
"""

from __future__ import annotations

import difflib
import glob
import importlib.util
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

from docs_hooks import commands as reference
from docs_hooks.commands import options, run_help, subparser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

README_LINES = 150
README_COMMANDS = [  # the README's first block: set up and run the demo; set up and run the tests
    "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python -m experiments.cv",
    "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt -r requirements-dev.txt "
    "&& .venv/bin/python -m pytest -q",
]

# A path in inline code or a link is checked when it starts with one of these (tracked, at the repository's top).
TOP_FOLDERS = {"vfrac", "experiments", "explain", "tests", "bench", "examples", "docs", ".ci"}
# ... except a run's artifacts in MLflow: explain/ is also the run's folder of the review's files (explain/maps/,
# explain/attention.csv), so a path under it that is no Python file and not in the repository is taken for one.
RUN_FOLDERS = {"explain"}
TOP_FILES = ("requirements*.txt", "pyproject.toml", "mkdocs.yml", "CHANGELOG.md", "LICENSE", "CITATION.cff")

# Programs whose flags are their own: a code span or command that begins with one is not checked against vfrac's
# parsers. So is `python` running anything but a vfrac command (pytest, a bench/ script), and any script path.
OTHER_TOOLS = {
    "pip", "pip3", "pytest", "mkdocs", "mlflow", "optuna-dashboard", "optuna", "ssh", "scp", "rsync", "docker",
    "podman", "apptainer", "singularity", "chromium", "git", "curl", "wget", "ruff", "sudo", "apt-get", "apt",
    "psql", "pg_ctl", "initdb", "createuser", "createdb", "postgres", "sbatch", "srun", "salloc", "squeue",
    "scancel", "sacct", "module", "conda", "nvidia-smi", "TotalSegmentator", "tensorboard", "jupyter", "tar",
    "unzip", "kill", "ps", "ls", "du", "df", "cd", "echo", "chmod", "export", "bash", "sh", "make", "tmux",
}
WRAPPERS = {"env", "nohup", "time", "exec", "command"}  # `nohup python -m experiments.cv ...` is the command's

PYTHON_M = re.compile(r"(?<![\w.-])(?:[^\s`'\"]*/)?python(?:3(?:\.\d+)?)?\s+-m\s+([A-Za-z_][\w.]*\w)")
FLAG = re.compile(r"(?<![\w/.-])--[A-Za-z][\w-]*")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


# --- reading a page -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    name: str  # as problems name it: README.md, docs/cohort.md
    folder: Path  # its links are relative to this
    lines: list[str]
    code: list[tuple[int, str]]  # the lines of its fenced code blocks, backslash-continued lines joined: (line, text)
    text: list[tuple[int, str]]  # its paragraphs outside code blocks: (first line, lines joined with newlines)


def parse(name: str, text: str, folder: Path = ROOT) -> Page:
    lines = text.splitlines()
    code, paragraphs, paragraph, fence, pending = [], [], [], None, None
    for number, line in enumerate(lines, 1):
        if fence:
            if re.fullmatch(rf"\s*{re.escape(fence[0])}{{{len(fence)},}}\s*", line):
                if pending:  # a continued last line
                    code.append((pending[0], pending[1].rstrip()))
                fence, pending = None, None
                continue
            start, joined = pending or (number, "")
            joined += line.strip()
            if joined.endswith("\\"):
                pending = (start, joined[:-1].rstrip() + " ")
            else:
                pending = None
                code.append((start, joined))
            continue
        opening = FENCE.match(line)
        if opening or not line.strip():
            if paragraph:
                paragraphs.append((paragraph[0][0], "\n".join(content for _, content in paragraph)))
                paragraph = []
            if opening:
                fence, pending = opening.group(1), None
            continue
        paragraph.append((number, line))
    if paragraph:
        paragraphs.append((paragraph[0][0], "\n".join(content for _, content in paragraph)))
    return Page(name, folder, lines, code, paragraphs)


def read(path: Path) -> Page:
    return parse(path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8"), path.parent)


def spans(page: Page) -> list[tuple[int, str]]:
    """Inline code outside code blocks: (line, its text on one line)."""
    found = []
    for start, text in page.text:
        for match in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", text, re.DOTALL):
            found.append((start + text[:match.start()].count("\n"), " ".join(match.group(2).split())))
    return found


def links(page: Page) -> list[tuple[int, str]]:
    """Link and image targets: (line, target)."""
    found = []
    for start, text in page.text:
        prose = re.sub(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", lambda m: re.sub(r"[^\n]", " ", m.group()), text,
                       flags=re.DOTALL)  # no links inside inline code
        for pattern in (r"\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*)?\)", r"(?m)^\s{0,3}\[(?!\^)[^\]]+\]:\s*<?([^\s>]+)"):
            for match in re.finditer(pattern, prose):
                found.append((start + prose[:match.start()].count("\n"), match.group(1)))
    return found


# --- commands and their parsers -------------------------------------------------------------------------------


@cache
def subcommands() -> dict:
    """vfrac's subcommands by name, and by the module `python -m` runs (vfrac.synth, vfrac.cohort, ...)."""
    listing = reference.commands()
    return {"vfrac": {c.name: c for c in listing}, "python -m": {c.module.removesuffix(".__main__"): c.module
                                                                for c in listing}}


def top_parser(module: str):
    shown = run_help(module)
    if shown.parser is None:
        raise RuntimeError(f"{module}.main(['--help']) parsed no arguments with argparse")
    return shown.parser


@cache
def every_option() -> frozenset:
    """The options of all of vfrac's commands (those whose module loads: one that does not is reported where shown)."""
    found = {"-h", "--help"}
    for module in set(subcommands()["python -m"].values()):
        try:
            found |= options(top_parser(module), nested=True)
        except Exception:
            pass
    return frozenset(found)


@dataclass(frozen=True)
class Call:
    """A command in a code block or span: a vfrac command (module set) or not; `rest` follows the command's name."""

    line: int
    label: str  # `python -m experiments.cv`, `vfrac cv`, or the program's name
    module: str | None  # the vfrac command's module, None for another program or loose text
    before: tuple[str, ...]  # words put before the user's (`import` of vfrac.cohort)
    rest: str
    other: bool  # another program's command line: its flags are its own


def segments(code: str) -> list[str]:
    """The simple commands of a shell line: comments dropped, split at `&&`, `||`, `;`, `|` and subshells."""
    code = re.sub(r"(^|\s)#.*", "", code)
    parts = re.split(r"&&|\|\||;|\||\$\(|[()`]", code)
    return [part.strip().removeprefix("$ ").strip() for part in parts if part.strip().removeprefix("$").strip()]


def placeholder(word: str) -> bool:
    """`MODULE` in `python -m MODULE`, `SUBCOMMAND` in `vfrac SUBCOMMAND`: a name in capitals stands for any."""
    return re.fullmatch(r"[A-Z][A-Z_]*", word) is not None


def call(line: int, segment: str) -> Call:
    python_m = PYTHON_M.search(segment)
    if python_m and placeholder(python_m.group(1)):
        return Call(line, f"python -m {python_m.group(1)}", None, (), "", True)
    if python_m:
        name = python_m.group(1)
        module = subcommands()["python -m"].get(name)
        return Call(line, f"python -m {name}", module, (), segment[python_m.end():], module is None)
    words = segment.split()
    while words and (re.match(r"[A-Za-z_]\w*=", words[0]) or words[0] in WRAPPERS):
        words.pop(0)
    if not words:
        return Call(line, "", None, (), "", False)
    program = words[0].rsplit("/", 1)[-1]
    rest = segment[segment.index(words[0]) + len(words[0]):]
    if program == "vfrac":
        name = words[1] if len(words) > 1 and not words[1].startswith("-") else None
        if name and placeholder(name):
            return Call(line, f"vfrac {name}", None, (), "", True)  # `vfrac SUBCOMMAND`: a placeholder
        if name is None:
            return Call(line, "vfrac", "experiments.cli", (), rest, False)
        command = subcommands()["vfrac"].get(name)
        after = rest[rest.index(name) + len(name):]
        if command is None:
            return Call(line, f"vfrac {name}", "?", (), after, False)
        return Call(line, f"vfrac {name}", command.module, command.before, after, False)
    if program in subcommands()["python -m"]:  # `experiments.cv --final` in prose
        return Call(line, program, subcommands()["python -m"][program], (), rest, False)
    other = (program in OTHER_TOOLS or program.startswith("python") or "/" in words[0]
             or program.endswith((".py", ".sh")))
    return Call(line, program, None, (), segment, other)


def calls(page: Page, code: bool = True) -> list[Call]:
    """Every inline code span and (with CODE) command line of the page's code blocks, as simple commands."""
    return [call(line, segment) for line, text in [*(page.code if code else []), *spans(page)]
            for segment in segments(text)]


def foreign_flags(page: Page) -> set[str]:
    """The flags the page shows on other programs' command lines: a code block's lines but vfrac's commands
    (comments too: `#SBATCH --array`), and code spans that begin with another program's name."""
    found = set()
    for line, text in page.code:
        parts = [call(line, segment) for segment in segments(text)]
        if not any(c.module for c in parts):
            found.update(FLAG.findall(text))
        found.update(flag for c in parts if c.module is None for flag in FLAG.findall(c.rest))
    found.update(flag for c in calls(page, code=False) if c.other for flag in FLAG.findall(c.rest))
    return found


def command_flags(rest: str) -> list[str]:
    """The --flags of a command's arguments, up to a bare `--` (what follows is another program's)."""
    return FLAG.findall(re.split(r"(?:^|\s)--(?:\s|$)", rest)[0])


def walk(module: str, before: tuple[str, ...], rest: str):
    """The parser a command's arguments reach (subcommands followed) and the subcommand words on the way."""
    parser = top_parser(module)
    chain = []
    for word in [*before, *(word.strip("\"'") for word in rest.split() if not word.startswith("-"))]:
        reached = subparser(parser, [word])
        if reached is not parser:
            parser = reached
            chain.append(word)
    return parser, tuple(chain)


def cli_options() -> set[str]:
    return {"-h", "--help"}  # experiments.cli: `vfrac --help`; anything else is a subcommand


# --- the checks -----------------------------------------------------------------------------------------------


def missing_modules(page: Page) -> list[str]:
    """(a) every `python -m X` names a module that exists."""
    problems = []
    for start, text in [*page.code, *page.text]:
        for match in PYTHON_M.finditer(text):
            name = match.group(1)
            if placeholder(name):
                continue
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                line = start + text[:match.start(1)].count("\n")
                problems.append(f"{page.name}:{line}: python -m {name}: no module {name}")
    return problems


def bad_command_flags(page: Page) -> list[str]:
    """(b) every --flag of a vfrac command line is an option of that command (and `vfrac SUB` names a subcommand)."""
    problems = []
    for c in calls(page):
        if c.module is None:
            continue
        where = f"{page.name}:{c.line}"
        if c.module == "?":
            problems.append(f"{where}: {c.label}: no such subcommand (vfrac --help lists them: "
                            f"{', '.join(subcommands()['vfrac'])})")
            continue
        try:
            parser, chain = (None, ()) if c.module == "experiments.cli" else walk(c.module, c.before, c.rest)
            known = cli_options() if parser is None else options(parser)
            label = " ".join([c.label, *(word for word in chain if word not in c.label.split())])
        except Exception as error:  # a module that does not load is this line's problem
            problems.append(f"{where}: {c.label}: cannot build its parser: {type(error).__name__}: {error}")
            continue
        for flag in command_flags(c.rest):
            if flag not in known:
                close = difflib.get_close_matches(flag, sorted(known), n=1)
                problems.append(f"{where}: {flag}: not an option of {label}"
                                + (f" (did you mean {close[0]}?)" if close else ""))
    return problems


def unknown_flags(page: Page) -> list[str]:
    """(c) every --flag in inline code that is no command line's is an option of one of vfrac's commands, or of
    another program whose command line the page shows with it."""
    problems = []
    known = every_option() | foreign_flags(page)
    for c in calls(page, code=False):
        if c.module is not None or c.other:
            continue
        for flag in FLAG.findall(c.rest):
            if flag not in known:
                problems.append(f"{page.name}:{c.line}: {flag}: not an option of any vfrac command (another "
                                f"program's? begin the code span with the program's name, `PROGRAM {flag}`, "
                                f"or show its command line on the page; OTHER_TOOLS in tests/docs/test_docs.py "
                                f"lists the programs)")
    return problems


def repo_path(token: str) -> str | None:
    """The repository path TOKEN names (`:LINE`, `::name` and `#anchor` dropped), None if it names none."""
    token = token.strip("\"'()[],;").removeprefix("./")
    token = re.sub(r"(::.*|#.*|:\d+(-\d+)?)$", "", token).rstrip(":")
    if not token or "..." in token or any(char in token for char in "<>$~%"):
        return None  # a placeholder or a variable, not a path
    if "/" in token:
        return token if token.split("/")[0] in TOP_FOLDERS else None
    return token if any(fnmatch(token, pattern) for pattern in TOP_FILES) else None


def run_artifact(path: str) -> bool:
    return path.split("/")[0] in RUN_FOLDERS and not path.endswith(".py")


def braces(path: str) -> list[str]:
    """`a/{b,c}.py` as `a/b.py` and `a/c.py`."""
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [expanded for choice in match.group(1).split(",")
            for expanded in braces(path[:match.start()] + choice + path[match.end():])]


def exists(path: str, base: Path = ROOT) -> bool:
    return all(glob.glob(str(base / each), recursive=True) if any(c in each for c in "*?[") else (base / each).exists()
               for each in braces(path))


def missing_paths(page: Page) -> list[str]:
    """(d) every repository path in inline code (from the root) or a link (from the page's folder) exists."""
    problems = []
    for line, text in spans(page):
        for token in re.split(r"[\s=]+", text):
            path = repo_path(token)
            if path and not exists(path) and not run_artifact(path):
                problems.append(f"{page.name}:{line}: {path}: no such file or folder in the repository")
    for line, target in links(page):
        if re.match(r"[A-Za-z][\w+.-]*:", target) or target.startswith(("#", "/")):
            continue  # a URL, an anchor on the page, a site-absolute link
        relative = unquote(re.sub(r"[#?].*$", "", target))
        try:
            path = (page.folder / relative).resolve().relative_to(ROOT).as_posix()
        except ValueError:
            continue  # outside the repository
        if (repo_path(path) or path in TOP_FOLDERS) and not exists(path):
            problems.append(f"{page.name}:{line}: {target}: the link leads nowhere ({path} does not exist)")
    return problems


def failing_helps(page: Page) -> list[str]:
    """(e) the --help of every vfrac command the page shows runs and exits 0."""
    problems = []
    for c in calls(page):
        if c.module is None or c.module == "?":
            continue  # another program; an unknown subcommand is bad_command_flags's
        where = f"{page.name}:{c.line}: {c.label} --help"
        try:
            chain = () if c.module == "experiments.cli" else walk(c.module, c.before, c.rest)[1]
            shown = run_help(c.module, (*chain, "--help"))
        except Exception as error:
            problems.append(f"{where}: cannot run it: {type(error).__name__}: {error}")
            continue
        if shown.code != 0 or not shown.out.strip():
            problems.append(f"{where}: exits {shown.code}, {len(shown.out)} characters of help: "
                            f"{shown.err.strip()[-300:]}")
    return problems


def readme_problems(text: str) -> list[str]:
    """(f) the README is short and begins with the two commands, alone in one bash block."""
    lines = text.splitlines()
    problems = []
    if len(lines) > README_LINES:
        problems.append(f"README.md:{len(lines)}: {len(lines)} lines: at most {README_LINES} (the rest belongs "
                        f"in docs/)")
    first = next((n for n, line in enumerate(lines) if line.strip() and not line.startswith("# ")), len(lines))
    expected = ["```bash", *README_COMMANDS, "```"]
    if [line.rstrip() for line in lines[first:first + len(expected)]] != expected:
        problems.append(f"README.md:{first + 1}: {lines[first] if first < len(lines) else 'end of file'!r}: "
                        f"the README must begin (after its title) with exactly these lines:\n" + "\n".join(expected))
    return problems


FORBIDDEN = [  # (pattern, what the docs should do instead); the docs describe the code, not how it came about
    (re.compile(r"DESIGN\.md"), "a working file outside the repository: say what the code does"),
    (re.compile(r"\bissues?\b(?!\s+(?:a|an|the|one|its|their|no)\b)", re.IGNORECASE),
     "an issue (a work item): say what the code does and why"),
    (re.compile(r"(?<![\w-])(?:(?:this|that|previous|next|last|earlier|later|current|prior|following|work)\s+"
                r"rounds?|round \d+)\b", re.IGNORECASE),
     "a work round: say what the code does, not when it changed (CHANGELOG.md is for that)"),
    (re.compile(r"\bsessions?\b(?![-_ ]scoped?\b)", re.IGNORECASE),
     "a working session: say what the code does, not when it changed"),
]
SESSIONS = {"ssh", "tmux", "screen", "interactive", "login", "shell", "terminal", "jupyter", "browser", "database",
            "sql", "http", "web", "desktop", "vnc", "salloc", "srun", "user's", "x11"}  # sessions of other things


def working_notes(page: Page) -> list[str]:
    """(g) no page names the project's working notes: DESIGN.md, issues, work rounds, sessions."""
    problems = []
    for number, line in enumerate(page.lines, 1):
        for pattern, why in FORBIDDEN:
            for match in pattern.finditer(line):
                if match.group().lower().startswith("session"):
                    before = re.findall(r"[\w'-]+", line[:match.start()].lower())
                    quoted = match.start() > 0 and line[match.start() - 1] in "\"'"  # scope="session"
                    if quoted or (before and before[-1] in SESSIONS):
                        continue
                problems.append(f"{page.name}:{number}: {match.group()!r}: {why}")
    return problems


# --- the pages ------------------------------------------------------------------------------------------------


def page_ids(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", PAGES, ids=page_ids)
def test_every_python_m_module_exists(path):
    assert not (problems := missing_modules(read(path))), "\n".join(problems)


@pytest.mark.parametrize("path", PAGES, ids=page_ids)
def test_every_flag_of_a_command_line_is_that_commands(path):
    assert not (problems := bad_command_flags(read(path))), "\n".join(problems)


@pytest.mark.parametrize("path", PAGES, ids=page_ids)
def test_every_other_flag_is_a_vfrac_commands(path):
    assert not (problems := unknown_flags(read(path))), "\n".join(problems)


@pytest.mark.parametrize("path", PAGES, ids=page_ids)
def test_every_repository_path_exists(path):
    assert not (problems := missing_paths(read(path))), "\n".join(problems)


@pytest.mark.parametrize("path", PAGES, ids=page_ids)
def test_every_command_shown_has_a_help_that_exits_0(path):
    assert not (problems := failing_helps(read(path))), "\n".join(problems)


def test_readme_is_short_and_begins_with_the_two_commands():
    assert not (problems := readme_problems((ROOT / "README.md").read_text(encoding="utf-8"))), "\n".join(problems)


@pytest.mark.parametrize("path", PAGES, ids=page_ids)
def test_no_page_names_working_notes(path):
    assert not (problems := working_notes(read(path))), "\n".join(problems)


def test_the_command_reference_has_every_subcommand_and_its_help():
    """What the hook puts on docs/commands.md: every subcommand of experiments.cli, each with its --help."""
    assert reference.MARKER in (ROOT / "docs" / reference.PAGE).read_text(encoding="utf-8")
    text = reference.render()
    for command in reference.commands():
        assert f"## {command.vfrac} {{#{command.name}}}" in text
        assert f"{command.python_m} [ARGUMENTS]" in text
        assert f"usage: {command.python_m} " in text, command  # its own help, not the top parser's
    assert "vfrac SUBCOMMAND --help" in text


def test_the_hook_fails_the_build_without_the_marker_and_leaves_other_pages_alone():
    from mkdocs.exceptions import PluginError

    class File:
        def __init__(self, src_uri):
            self.src_uri = src_uri

    class FakePage:
        def __init__(self, src_uri):
            self.file = File(src_uri)

    assert reference.on_page_markdown("x <!-- commands -->", FakePage("cohort.md"), {}, None) == "x <!-- commands -->"
    with pytest.raises(PluginError, match="marker"):
        reference.on_page_markdown("# Commands\n", FakePage(reference.PAGE), {}, None)
    assert "## vfrac cv {#cv}" in reference.on_page_markdown("# C\n\n<!-- commands -->\n", FakePage(reference.PAGE),
                                                            {}, None)


def test_a_module_that_does_not_load_fails_the_reference(monkeypatch):
    listing = [reference.Command("nope", "experiments.no_such_command", (), "missing")]
    monkeypatch.setattr(reference, "commands", lambda: listing)
    with pytest.raises(RuntimeError, match="vfrac nope .*no_such_command"):
        reference.render()


# --- each check fails where it should -------------------------------------------------------------------------

SNIPPET = """# Title

Run `python -m experiments.cv --folds 2` or `python -m experiments.nope`; see
`vfrac/prepare.py:12`, `tests/docs/test_docs.py::test_x`, `vfrac/no_such.py` and
[the page](docs/no-such-page.md#part), [a site](https://example.org/vfrac/x.py).
`--epochs 3` and `--no-such-option`; `pip install --no-deps x`; `bench/bench_train.py --paths tf`.
`sbatch --array=0-9 examples/slurm/missing.sbatch`, `experiments.cv --finall`, `python -m MODULE --any`.

```bash
.venv/bin/python -m experiments.cv --folds 2 \\
    --epochs 3 --bogus 1 # a comment about --also-bogus
vfrac import --layout verse DIR --labels labels.csv --out x --nope
vfrac cv --seed 1 | tee log && vfrac frobnicate --x
python -m pytest -q --durations=5 && python -m vfrac.cohort import --layout verse D --labels L --bad
mlflow server --allowed-hosts h  # and vfrac SUBCOMMAND is a placeholder
```

`--allowed-hosts`, shown above, is mlflow's.
"""


def problems_of(check, text=SNIPPET) -> list[str]:
    return check(parse("snippet.md", text))


def test_parse_joins_continued_lines_and_finds_spans_and_links():
    page = parse("snippet.md", SNIPPET)
    assert page.code[0] == (10, ".venv/bin/python -m experiments.cv --folds 2 --epochs 3 --bogus 1 # a comment "
                                "about --also-bogus")
    assert [line for line, _ in page.code] == [10, 12, 13, 14, 15]
    assert (3, "python -m experiments.cv --folds 2") in spans(page)
    assert (4, "tests/docs/test_docs.py::test_x") in spans(page)
    assert links(page) == [(5, "docs/no-such-page.md#part"), (5, "https://example.org/vfrac/x.py")]
    assert segments("a && b --x | c; $(d) # --e") == ["a", "b --x", "c", "d"]


def test_a_module_that_does_not_exist_is_reported():
    assert problems_of(missing_modules) == ["snippet.md:3: python -m experiments.nope: no module experiments.nope"]


def test_a_flag_a_command_lacks_is_reported_with_its_line():
    assert problems_of(bad_command_flags) == [
        "snippet.md:10: --bogus: not an option of python -m experiments.cv",
        "snippet.md:12: --nope: not an option of vfrac import (did you mean --force?)",
        "snippet.md:13: vfrac frobnicate: no such subcommand (vfrac --help lists them: "
        + ", ".join(subcommands()["vfrac"]) + ")",
        "snippet.md:14: --bad: not an option of python -m vfrac.cohort import",
        "snippet.md:7: --finall: not an option of experiments.cv (did you mean --final?)",
    ]


def test_a_loose_flag_no_command_has_is_reported_and_other_programs_flags_are_not():
    assert [problem.split(": not")[0] for problem in problems_of(unknown_flags)] == ["snippet.md:6: --no-such-option"]


def test_a_missing_path_or_link_target_is_reported_and_line_and_pytest_suffixes_are_allowed():
    assert problems_of(missing_paths) == [
        "snippet.md:4: vfrac/no_such.py: no such file or folder in the repository",
        "snippet.md:7: examples/slurm/missing.sbatch: no such file or folder in the repository",
        "snippet.md:5: docs/no-such-page.md#part: the link leads nowhere (docs/no-such-page.md does not exist)",
    ]
    assert repo_path("data/demo/") is None and repo_path("requirements-dev.txt") == "requirements-dev.txt"
    assert repo_path("vfrac/io/{dicom,nifti}.py:3") == "vfrac/io/{dicom,nifti}.py"
    assert exists("vfrac/{cli,prepare}.py") is False and exists("vfrac/{__init__,prepare}.py")
    assert exists("tests/*/test_docs.py")


def test_a_help_that_fails_or_does_not_load_is_reported(monkeypatch):
    assert problems_of(failing_helps) == []
    with monkeypatch.context() as patch:
        patch.setitem(globals(), "run_help", lambda module, argv=(): reference.Help(3, "", "error: boom", None))
        assert problems_of(failing_helps, "Run `vfrac --help`.\n") == [
            "snippet.md:1: vfrac --help: exits 3, 0 characters of help: error: boom"]
    monkeypatch.setitem(subcommands()["python -m"], "experiments.nope", "experiments.nope")
    assert problems_of(failing_helps, "```\npython -m experiments.nope\n```\n") == [
        "snippet.md:2: python -m experiments.nope --help: cannot run it: ModuleNotFoundError: No module named "
        "'experiments.nope'"]


def test_the_readme_rules():
    good = "# vfrac\n\n```bash\n" + "\n".join(README_COMMANDS) + "\n```\n\nMore.\n"
    assert readme_problems(good) == []
    assert readme_problems(good.replace("-q", "-q -x"))[0].startswith("README.md:3: '```bash': the README must")
    assert readme_problems("Intro.\n" + good)[0].startswith("README.md:1: 'Intro.': the README must")
    long = good + "line\n" * 150
    assert readme_problems(long) == ["README.md:158: 158 lines: at most 150 (the rest belongs in docs/)"]


def test_working_notes_are_reported_and_other_sessions_are_not():
    text = ("See DESIGN.md.\nThis fixes issue 12.\nIn round 3 we added it.\nEarlier sessions broke it.\n"
            "Two rounds of tuning, round by round, the best round, --rounds 2.\n"
            "An ssh session, a session-scoped fixture, scope=\"session\".\nIt issues a warning; a round trip.\n")
    assert [problem.split(": ")[1] for problem in problems_of(working_notes, text)] == [
        "'DESIGN.md'", "'issue'", "'round 3'", "'sessions'"]
    assert [problem.split(": ")[0] for problem in problems_of(working_notes, text)] == [
        "snippet.md:1", "snippet.md:2", "snippet.md:3", "snippet.md:4"]
