"""The documentation is checked against the program: every code block marked runnable offline
runs, every option a command documents exists (and every option is documented), and every
relative link and anchor resolves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from lpclip_cache.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def offline_blocks(page: Path) -> list[tuple[str, str]]:
    """(language, code) of the blocks whose fence says ``offline`` (```bash offline)."""
    return [(lang, code) for lang, info, code in FENCE.findall(page.read_text()) if "offline" in info.split()]


def test_runnable_blocks_exist_in_the_pages_that_promise_them():
    runnable = {page.name for page in DOCS if offline_blocks(page)}
    assert {"quickstart.md", "api.md", "recipes.md", "offline.md"} <= runnable


@pytest.mark.parametrize("page", [p for p in DOCS if offline_blocks(p)], ids=lambda p: p.name)
def test_offline_blocks_run(page, tmp_path, request):
    """Each page's blocks run in order in a fresh folder (with ``pipelines/`` beside them, as in
    a clone), like a reader following the page."""
    if any("pipelines/demo.toml" in code and "--dry-run" not in code for _, code in offline_blocks(page)):
        request.getfixturevalue("shapes_teacher")  # a real demo run needs the teacher, trained once per session
    (tmp_path / "pipelines").symlink_to(ROOT / "pipelines")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    for index, (lang, code) in enumerate(offline_blocks(page)):
        command = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{page.name} block {index} failed:\n{code}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr


def command_tree(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    commands: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            commands.update(command_tree(command, f"{full} "))
        else:
            commands[full] = command
    return commands


def documented_options(page: Path) -> dict[str, set[str]]:
    """Per ``## `command` `` section: the options in the first column of its table(s)."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in page.read_text().splitlines():
        heading = re.match(r"^## `([a-z ]+)`", line)
        if heading:
            current = heading.group(1)
            sections[current] = set()
        elif line.startswith("## "):
            current = None
        elif current and line.startswith("| `-"):
            first = line.split("|")[1]
            sections[current].update(re.findall(r"`(--?[a-z][a-z0-9-]*)", first))
    return sections


def cli_options(command: click.Command) -> set[str]:
    names = set()
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(o for o in param.opts + param.secondary_opts if o.startswith("--"))
    return names - {"--help"}


def test_every_command_is_documented_with_exactly_its_options():
    documented = documented_options(ROOT / "docs" / "cli.md")
    documented.update(documented_options(ROOT / "docs" / "recipes.md"))
    commands = command_tree(main)
    assert set(commands) <= set(documented), f"undocumented commands: {set(commands) - set(documented)}"
    for name, command in commands.items():
        real = cli_options(command)
        listed = {o for o in documented[name] if o.startswith("--")}
        assert listed == real, f"{name}: documented, absent {listed - real}; present, undocumented {real - listed}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page):
    text = FENCE.sub("", page.read_text())
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link to missing {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.name}: no heading '#{anchor}' in {resolved.name}"


def test_commands_named_in_the_docs_exist():
    top = set(main.commands)
    for page in PAGES:
        for _, _, code in FENCE.findall(page.read_text()):
            for match in re.finditer(r"lpclip-cache (?:--debug )?([a-z][a-z|]*)", code):
                for name in match.group(1).split("|"):
                    assert name in top, f"{page.name}: 'lpclip-cache {name}' is not a command"
