"""The docs site: its generated reference pages are current, every command the docs and the
README show is one the CLI accepts (or a Makefile target), and `mkdocs build --strict` passes."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import typer.main

from deploybench.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
CLI = ("deploybench", ".venv/bin/deploybench")
# a placeholder such as runs/<timestamp> or <model>, not `<=` in an SLO gate
PLACEHOLDER = re.compile(r"<[A-Za-z_][\w-]*>")
SHELL_BREAKS = ("|", "||", "&&", ";")


def generator() -> ModuleType:
    """docs/generate.py, loaded from its file (a script, not a package: site-packages holds
    another `docs`)."""
    spec = importlib.util.spec_from_file_location("deploybench_docs_generate",
                                                  DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_generated_reference_pages_are_current(tmp_path: Path) -> None:
    written = generator().write(tmp_path)
    assert {p.relative_to(tmp_path).as_posix() for p in written} == {
        "reference/cli.md", "reference/results.md"}
    for path in written:
        relative = path.relative_to(tmp_path)
        committed = DOCS / relative
        assert committed.exists(), f"docs/{relative} is missing: run .venv/bin/python " \
                                   "docs/generate.py"
        assert committed.read_text() == path.read_text(), (
            f"docs/{relative} differs from what docs/generate.py writes now: run "
            ".venv/bin/python docs/generate.py and commit the result")


def shown_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) for each shell line in a fenced or indented code block that
    starts with deploybench, .venv/bin/deploybench or make (after sudo or VAR=value), its
    backslash-continued lines joined."""
    lines = path.read_text().splitlines()
    found, fenced, i = [], False, 0
    while i < len(lines):
        line, number = lines[i], i + 1
        i += 1
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or line.startswith("    ")):
            continue
        text = line.strip()
        while text.endswith("\\") and i < len(lines):
            text = text[:-1] + " " + lines[i].strip()
            i += 1
        words = command_words(text)
        if words and (words[0] in CLI or words[0] == "make"):
            found.append((number, text))
    return found


def command_words(text: str) -> list[str]:
    """A shown command as argv: placeholders made harmless, a usage synopsis' brackets and
    `a|b` alternatives reduced to the first, leading sudo and VAR=value dropped."""
    text = PLACEHOLDER.sub("placeholder", text)
    try:
        words = shlex.split(text, comments=True)
    except ValueError:  # not shell (an unbalanced quote in prose-like text)
        return []
    for i, word in enumerate(words):
        if word in SHELL_BREAKS:
            words = words[:i]
            break
    words = [w for w in words if w != "[OPTIONS]"]
    words = [w.strip("[]").split("|")[0] if "|" in w or "[" in w or "]" in w else w
             for w in words]
    words = [w for w in words if w]
    while words and (words[0] == "sudo" or re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0])):
        words = words[1:]
    return words


def make_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([^\s#:=][^:=]*?)\s*:(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return targets


def cli_error(words: list[str]) -> str | None:
    """Why the CLI would refuse these arguments at parse time, or None."""
    root = typer.main.get_command(app)
    name, args = words[1], words[2:]
    command = root.commands.get(name)
    if command is None:
        return f"no command {name!r} (commands: {', '.join(root.commands)})"
    try:
        command.make_context(name, list(args), resilient_parsing=False)
    except Exception as error:  # typer's click: NoSuchOption, BadParameter, UsageError, ...
        return f"{type(error).__name__}: {error}"
    return None


def test_every_shown_command_is_accepted() -> None:
    targets = make_targets()
    problems, checked = [], {"cli": 0, "make": 0}
    for page in PAGES:
        for number, text in shown_commands(page):
            where = f"{page.relative_to(ROOT)}:{number}: {text}"
            words = command_words(text)
            if words[0] == "make":
                checked["make"] += 1
                problems += [f"{where}: no Makefile target {goal!r}" for goal in words[1:]
                             if not goal.startswith("-") and "=" not in goal
                             and goal not in targets]
                continue
            checked["cli"] += 1
            if len(words) < 2:
                problems.append(f"{where}: no command")
                continue
            error = cli_error(words)
            if error:
                problems.append(f"{where}: {error}")
    assert not problems, "\n".join(problems)
    # the extraction itself works: the docs show dozens of commands
    assert checked["cli"] >= 20 and checked["make"] >= 4, checked


def test_command_extraction_handles_synopses() -> None:
    assert command_words(".venv/bin/deploybench run [--model digits-cnn] "
                         "[--mode native|docker] [--out runs/NAME]") == [
        ".venv/bin/deploybench", "run", "--model", "digits-cnn", "--mode", "native", "--out",
        "runs/NAME"]
    assert command_words("deploybench report runs/<timestamp>   # rebuild") == [
        "deploybench", "report", "runs/placeholder"]
    assert command_words("sudo DEBUG=1 make images   # root") == ["make", "images"]
    assert cli_error(["deploybench", "load", "--no-such-option"])
    assert cli_error(["deploybench", "no-such-command"])
    assert cli_error(["deploybench", "edge", "--out", "x", "--runs", "0"])  # min 1
    assert cli_error(["deploybench", "edge", "--out", "x", "--runs", "3"]) is None


def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link.split("#")[0] for link in links if "://" not in link]
    assert local, "the README links to the docs"
    missing = [link for link in local if link and not (ROOT / link).exists()]
    assert not missing, missing


def mkdocs_build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """`mkdocs build --strict` of the project at `root` with the venv's mkdocs."""
    mkdocs = Path(sys.executable).parent / "mkdocs"  # the venv's, beside its python
    if not mkdocs.exists():
        pytest.fail(f"{mkdocs.name} is not installed: pip install -e '.[dev]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner, not a build warning
    # no --quiet: mkdocs 1.6 then drops the warnings before --strict counts them
    return subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(site)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    result = mkdocs_build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "reference" / "results.html").exists()
    assert not list((tmp_path / "site").rglob("*.py")), "docs/generate.py is not a page"


def test_mkdocs_strict_fails_on_a_broken_anchor(tmp_path: Path) -> None:
    """The build above would catch one: mkdocs.yml makes a missing anchor a warning."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / "docs" / "concepts.md").open("a") as page:
        page.write("\n[a broken anchor](export.md#no-such-section)\n")
    result = mkdocs_build(tmp_path, tmp_path / "site")
    assert result.returncode != 0 and "no-such-section" in result.stdout + result.stderr
