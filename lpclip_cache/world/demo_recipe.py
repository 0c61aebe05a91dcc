"""The demo's recipe file and what other modules read from it (its style shifts, its view policies)."""

from __future__ import annotations

from pathlib import Path


def recipe_path() -> Path:
    """The demo's recipe, the one definition of its datasets, views, probes and analyses
    (``pipelines/demo.toml`` is the same file)."""
    from importlib import resources

    return Path(str(resources.files("lpclip_cache") / "resources" / "demo.toml"))


def style_shifts() -> tuple[str, ...]:
    """The recipe's style shifts: its shifted datasets that are not corruptions, in its order."""
    import tomllib

    datasets = tomllib.loads(recipe_path().read_text())["datasets"]
    return tuple(name for name, table in datasets.items() if table["role"] == "shift" and "corrupt" not in table)


def view_policies() -> tuple[str, str]:
    """The recipe's weak and strong view policies (the regime measures what they do to the class)."""
    import tomllib

    views = tomllib.loads(recipe_path().read_text())["views"]
    return views["weak_policy"], views["strong_policy"]
