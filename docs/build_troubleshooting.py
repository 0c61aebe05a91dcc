"""Rebuild the generated part of docs/troubleshooting.md from the error messages in the code.

Every ``raise InputError(...)``, ``ModelError``, ``StoreError`` or ``LpclipError``, and every
function that builds one (``return StoreError(...)``), is listed under its exit code with the module and
function that raise it; the parts of a message that depend on the input are shown as ``…``.

    python docs/build_troubleshooting.py          # rewrite the page
    python docs/build_troubleshooting.py --check  # exit 1 when the page is out of date (tests)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "troubleshooting.md"
START, END = "<!-- generated from the code: start -->", "<!-- generated from the code: end -->"
CODES = {"InputError": (3, "bad input"),
         "DataUnavailable": (3, "data that cannot be read now: run the same command again"),
         "ModelError": (4, "model or weights"),
         "StoreError": (5, "store, run or output"), "LpclipError": (1, "other")}
# functions that build an error of a class from a message, and subclasses listed with their class (name -> class)
HELPERS = {"_fail": "InputError", "damaged": "StoreError", "Diverged": "InputError"}


def render(node: ast.expr) -> str | None:
    """The text of a message expression with every computed part shown as an ellipsis."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif not parts or parts[-1] != "…":
                parts.append("…")
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = render(node.left), render(node.right)
        return (left or "…") + (right or "…")
    return None


def collect() -> list[tuple[str, str, str]]:
    """(class, message, where) for every raise site in the package, in file order."""
    found = []
    for path in sorted((ROOT / "lpclip_cache").rglob("*.py")):
        tree = ast.parse(path.read_text())
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                # raise XError(...), or return XError(...) in a function that builds one
                value = None
                if isinstance(node, ast.Raise):
                    value = node.exc
                elif isinstance(node, ast.Return):
                    value = node.value
                if not isinstance(value, ast.Call):
                    continue
                call = value
                name = getattr(call.func, "id", None) or getattr(call.func, "attr", None)
                kind = name if name in CODES else HELPERS.get(name or "")
                if kind is None or not call.args:
                    continue
                message = render(call.args[-1] if name in HELPERS and len(call.args) > 1 else call.args[0])
                if message and message.strip("…").strip():
                    found.append((kind, " ".join(message.split()), f"{module}.{function.name}"))
    unique: dict[tuple[str, str], str] = {}
    for kind, message, where in found:
        unique.setdefault((kind, message), where)
    return [(kind, message, where) for (kind, message), where in unique.items()]


def generated() -> str:
    lines = [START, ""]
    entries = collect()
    for kind, (code, title) in sorted(CODES.items(), key=lambda item: item[1][0]):
        rows = [e for e in entries if e[0] == kind]
        if not rows:
            continue
        lines += [f"### Exit {code}: {title} ({kind}, {len(rows)} messages)", ""]
        for _, message, where in sorted(rows, key=lambda e: e[1].lower()):
            text = message.replace("`", "'")
            lines.append(f"- `{text}` ({where})")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    page = PAGE.read_text()
    if START not in page or END not in page:
        print(f"{PAGE}: markers missing", file=sys.stderr)
        return 1
    head, rest = page.split(START, 1)
    tail = rest.split(END, 1)[1]
    updated = head + generated() + tail
    if "--check" in sys.argv:
        if updated != page:
            print(f"{PAGE} is out of date: run python docs/build_troubleshooting.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
