"""Prompt templates and class names for CLIP zero-shot heads.

Built-in sets ship as JSON files under ``lpclip_cache/resources`` (see each
file's ``source`` for where the list comes from). User sets are files: a
``.json`` file holding a list of strings (or an object with a ``templates`` /
``classnames`` list), or any other file read as UTF-8 text (a byte-order mark is
dropped) with one entry per line, where blank lines and lines starting with ``#``
are ignored. A template's placeholder is ``{}`` or CLIP_benchmark's ``{c}``.

A CLIP_benchmark root's ``classnames.txt`` is read as CLIP_benchmark reads it,
every line a class (``classnames_from_text(..., one_per_line=True)``): a blank
or ``#`` line there would be a class, so it is refused rather than dropped,
which would shift every later name against the labels.
"""

from __future__ import annotations

import json
import os
import re
import string
from importlib import resources
from pathlib import Path
from typing import Any

from lpclip_cache.errors import InputError

_RESOURCES = "lpclip_cache.resources"
_TEMPLATES_DIR = "templates"
_CLASSNAMES_DIR = "classnames"
_EXAMPLE_TEMPLATE = "a photo of a {}."
_CLIP_BENCHMARK_PLACEHOLDER = re.compile(r"(?<!\{)\{c\}(?!\})")  # {c}, not {{c}}


def _builtin_names(folder: str) -> tuple[str, ...]:
    """Names of the built-in JSON resources in one resource folder, sorted."""
    root = resources.files(_RESOURCES).joinpath(folder)
    return tuple(
        sorted(
            entry.name[: -len(".json")]
            for entry in root.iterdir()
            if entry.name.endswith(".json")
        )
    )


BUILTIN_TEMPLATES: tuple[str, ...] = _builtin_names(_TEMPLATES_DIR)
BUILTIN_CLASSNAMES: tuple[str, ...] = _builtin_names(_CLASSNAMES_DIR)


def list_template_sets() -> list[str]:
    """Return the names of the built-in template sets."""
    return list(BUILTIN_TEMPLATES)


def list_classname_sets() -> list[str]:
    """Return the names of the built-in class-name lists."""
    return list(BUILTIN_CLASSNAMES)


def _one_line(message: str) -> str:
    """Escape line breaks so that an error message stays on one line."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _fail(message: str) -> InputError:
    """Build an InputError whose message is a single line."""
    return InputError(_one_line(message))


def _show(text: str, limit: int = 60) -> str:
    """Quote a user string for an error message, shortened when long."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


def _choices(builtins: tuple[str, ...]) -> str:
    """Build the 'use one of' hint listing built-in names and the file option."""
    return f"use one of: {', '.join(builtins)}, or a path to a .json/.txt file"


def _json_type(value: object) -> str:
    """Name a parsed JSON value's type the way JSON does."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    names = {dict: "object", list: "array", str: "string", type(None): "null"}
    return names.get(type(value), type(value).__name__)


class _Source:
    """Where a list was read from, for error messages."""

    def __init__(self, label: str, is_text: bool) -> None:
        self.label = label
        self.is_text = is_text

    def at(self, position: int) -> str:
        """Describe one entry: a 1-based line for text, a 1-based entry for JSON."""
        unit = "line" if self.is_text else "entry"
        return f"{self.label}, {unit} {position}"


def _resolve(
    name_or_path: str | os.PathLike[str],
    kind: str,
    folder: str,
    builtins: tuple[str, ...],
) -> tuple[str, _Source]:
    """Read a built-in set or a user file; return its text and where it came from."""
    raw = os.fspath(name_or_path)
    hint = _choices(builtins)
    if not raw.strip():
        raise _fail(f"empty {kind} set name; {hint}")
    key = raw.strip().lower()
    if key in builtins:
        resource = resources.files(_RESOURCES).joinpath(folder, f"{key}.json")
        return resource.read_text(encoding="utf-8"), _Source(
            f"built-in {kind} set '{key}'", False
        )

    path = Path(raw).expanduser()
    looks_like_name = os.sep not in raw and "/" not in raw and not path.suffix
    if not path.exists():
        if looks_like_name:
            raise _fail(f"unknown {kind} set {raw!r}: no such built-in set or file; {hint}")
        shown = str(path) if path.is_absolute() else f"{path} (from {Path.cwd()})"
        raise _fail(f"{kind} file not found: {shown}; check the path, or {hint}")
    if path.is_dir():
        raise _fail(f"{kind} file {path} is a directory, not a file; "
                    "give the path of a .json or .txt file inside it")
    if not path.is_file():
        raise _fail(f"{kind} file {path} is not a regular file; "
                    "give the path of a .json or .txt file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _fail(f"cannot read {kind} file {path}: {reason}; "
                    "check that it exists and is readable") from exc
    label = f"{kind} file {path}"
    return _decode(data, label), _Source(label, path.suffix.lower() != ".json")


def _decode(data: bytes, label: str) -> str:
    """A file's bytes as UTF-8 text, without a byte-order mark; refuses other encodings and
    empty files."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _fail(f"{label} is not UTF-8 text "
                    f"(invalid byte at offset {exc.start}); save it as UTF-8") from exc
    if not text.strip():
        raise _fail(f"{label} is empty; put one entry per line (.txt) "
                    "or a JSON list of strings (.json)")
    return text


def _entries(text: str, source: _Source, kind: str, key: str) -> list[tuple[int, str]]:
    """Split file text into (position, stripped entry) pairs; JSON or one per line."""
    if source.is_text:
        entries = []
        for number, line in enumerate(text.split("\n"), start=1):
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                entries.append((number, stripped))
        if not entries:
            raise _fail(f"{source.label} has no {kind}s (only blank lines and # comments); "
                        f"add one {kind} per line")
        return entries

    expected = f"a JSON list of strings or an object with a {key!r} list"
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"{source.label} is not valid JSON "
                    f"(line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                    f"fix the JSON so that it is {expected}") from exc
    if isinstance(document, dict):
        if key not in document:
            raise _fail(f"{source.label} is a JSON object without a {key!r} key; "
                        f"expected {expected}")
        document = document[key]
    if not isinstance(document, list):
        raise _fail(f"{source.label} holds a JSON {_json_type(document)}, not an array; "
                    f"expected {expected}")
    if not document:
        raise _fail(f"{source.label} has an empty {kind} list; add at least one {kind}")
    entries = []
    for index, item in enumerate(document, start=1):
        if not isinstance(item, str):
            raise _fail(f"{source.at(index)}: expected a string, got a JSON "
                        f"{_json_type(item)} {_show(json.dumps(item))}; "
                        f"write every {kind} as a quoted string")
        entries.append((index, item.strip()))
    return entries


def _check_unique(entries: list[tuple[int, str]], source: _Source, kind: str) -> None:
    """Raise on an entry that repeats an earlier one."""
    seen: dict[str, int] = {}
    unit = "line" if source.is_text else "entry"
    for position, value in entries:
        if value in seen:
            raise _fail(f"{source.at(position)}: duplicate {kind} {_show(value)} "
                        f"(same as {unit} {seen[value]}); remove one of them")
        seen[value] = position


def _check_template(template: str, where: str) -> None:
    """Raise unless the template has exactly one '{}' and formats with one argument."""
    fix = (
        "write '{}' exactly once where the class name goes, "
        f"e.g. {_EXAMPLE_TEMPLATE!r}"
    )
    braces = "and double any other braces as '{{' and '}}'"
    count = template.count("{}")
    if count == 0:
        raise _fail(f"{where}: template {_show(template)} has no '{{}}' placeholder; {fix}")
    if count > 1:
        raise _fail(f"{where}: template {_show(template)} has {count} '{{}}' "
                    f"placeholders; {fix}")
    try:
        fields = [
            field
            for _, field, _, _ in string.Formatter().parse(template)
            if field is not None
        ]
        template.format("x")
    except (ValueError, IndexError, KeyError) as exc:
        raise _fail(f"{where}: template {_show(template)} is not a valid format string "
                    f"({exc}); {fix}, {braces}") from exc
    if fields != [""]:
        raise _fail(f"{where}: template {_show(template)} must have exactly one plain "
                    f"'{{}}' field and no other braces; {fix}, {braces}")


def load_templates(name_or_path: str | os.PathLike[str]) -> list[str]:
    """Load prompt templates from a built-in set name or a .json/.txt file."""
    text, source = _resolve(name_or_path, "template", _TEMPLATES_DIR, BUILTIN_TEMPLATES)
    return _templates(text, source)


def templates_from_text(data: bytes, where: str) -> list[str]:
    """Templates from a text file's bytes read elsewhere (a CLIP_benchmark root's
    ``zeroshot_classification_templates.txt``), with the checks of ``load_templates``."""
    label = f"template file {where}"
    return _templates(_decode(data, label), _Source(label, True))


def _templates(text: str, source: _Source) -> list[str]:
    entries = [(position, _CLIP_BENCHMARK_PLACEHOLDER.sub("{}", template))
               for position, template in _entries(text, source, "template", "templates")]
    for position, template in entries:
        if not template:
            raise _fail(f"{source.at(position)}: empty template; "
                        f"remove it or write one such as {_EXAMPLE_TEMPLATE!r}")
        _check_template(template, source.at(position))
    _check_unique(entries, source, "template")
    return [template for _, template in entries]


def load_classnames(name_or_path: str | os.PathLike[str]) -> list[str]:
    """Load class names, in label order, from a built-in name or a .json/.txt file."""
    text, source = _resolve(
        name_or_path, "class-name", _CLASSNAMES_DIR, BUILTIN_CLASSNAMES
    )
    return _classnames(_entries(text, source, "class name", "classnames"), source)


def classnames_from_text(data: bytes, where: str, one_per_line: bool = False) -> list[str]:
    """Class names from a text file's bytes read elsewhere, with the checks of
    ``load_classnames``. ``one_per_line`` reads them as CLIP_benchmark reads a root's
    ``classnames.txt``: every line (``str.splitlines``) is a class, so a blank line or a ``#``
    line before the last name is refused (dropping it would shift every later name against the
    labels); blank lines after the last name are ignored."""
    label = f"class-name file {where}"
    text = _decode(data, label)
    source = _Source(label, True)
    if not one_per_line:
        return _classnames(_entries(text, source, "class name", "classnames"), source)
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line:
            raise _fail(f"{source.at(number)}: blank line; CLIP_benchmark reads one class name per line, so "
                        f"it is class {number - 1} with an empty name, and dropping it would shift every later "
                        "name: remove the line, or write the class name there")
        if line.startswith("#"):
            raise _fail(f"{source.at(number)}: {_show(line)} starts with '#'; CLIP_benchmark reads it as the name "
                        f"of class {number - 1}, this tool's class-name files as a comment: remove it or rename "
                        "the class so both read the file alike")
    return _classnames(list(enumerate(lines, start=1)), source)


def _classnames(entries: list[tuple[int, str]], source: _Source) -> list[str]:
    for position, name in entries:
        if not name:
            raise _fail(f"{source.at(position)}: empty class name; "
                        "give every class a non-empty name")
    _check_unique(entries, source, "class name")
    return [name for _, name in entries]


def prompt_name(folder_name: str) -> str:
    """Turn a dataset folder/class name such as 'aquarium_fish' into 'aquarium fish'."""
    name = " ".join(folder_name.replace("_", " ").split())
    if not name:
        raise _fail(f"class name {_show(folder_name)} is empty once underscores and "
                    "spaces are removed; rename the class folder or give the class names "
                    "in a file")
    return name
