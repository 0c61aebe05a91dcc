"""The Python API: one function per command, with the command's options as keyword arguments.

    import lpclip_cache as lc

    lc.extract(data="cifar10-jpeg/train", out="train.zarr", model="ViT-B-32", pretrained="openai")
    lc.train(store="train.zarr", out="runs/lpclip", epochs=10)
    report = lc.evaluate(run="runs/lpclip", stores=["test.zarr"], ood=["mnist.zarr"], report="report/")
    lc.analyze("clusters", store="test.zarr", run="runs/lpclip", k=10, out="clusters.json")
    lc.run("pipelines/demo.toml")

Each returns the summary the command prints with ``--json`` and raises the command's errors
(``lpclip_cache.errors.LpclipError`` subclasses) instead of exiting. Option names are the
command-line names with ``-`` written ``_`` (``--weak-views`` is ``weak_views``; ``--workers`` is
``num_workers``). Heavy libraries are imported when a function is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InputError


def extract(data: str, out: str, **options: Any) -> dict[str, Any]:
    """``lpclip-cache extract``: run CLIP over clean, weak and strong views and write a store.

    A ``corrupt`` value naming several corruptions (``"all"``, ``"fog:all"``) writes one store per
    corruption into the folder ``out`` and returns ``{"folder", "stores", "images", "written"}``.
    """
    from .extraction import ExtractConfig, corruption_plan, extract_corruptions
    from .extraction import extract as run_extract

    config = ExtractConfig(data=str(data), out=str(out), **options)
    if len(corruption_plan(config.corrupt)) > 1:
        return extract_corruptions(config)
    return run_extract(config)


def train(store: str, out: str, **options: Any) -> dict[str, Any]:
    """``lpclip-cache train``: train an LP-CLIP (or supervised) probe from a store into a run."""
    from .training import TrainConfig
    from .training import train as run_train

    return run_train(TrainConfig(store=str(store), out=str(out), **options))


def is_report(path: Path) -> bool:
    """True when ``path`` is a JSON report written by this tool."""
    import json

    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError):
        return False
    return isinstance(data, dict) and data.get("tool") == "lpclip-cache"


def is_report_folder(path: Path) -> bool:
    """True when ``path`` is a folder written by ``evaluate --report``."""
    return (path / "report.json").is_file()


def write_report(report: dict[str, Any], out: str | Path, overwrite: bool) -> None:
    """Write a report JSON atomically, refusing to replace what is not ours (a report there is
    replaced by the rename, so it stays whole until the new one is)."""
    from . import __version__
    from .atomic import write_json_atomic
    from .store import prepare_output

    path = Path(out)
    prepare_output(path, overwrite, is_report, "report", remove=False)
    write_json_atomic(path, {"tool": "lpclip-cache", "version": __version__, **report}, "report")


def evaluate(run: str, stores: Sequence[str], ood: Sequence[str] = (), out: str | None = None,
             report: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """``lpclip-cache evaluate``: score the teacher and the probe; write ``out`` (JSON) and/or the
    ``report`` folder (JSON, Markdown, PNG plots) when given; return the report."""
    from . import __version__
    from .evaluation import evaluate as run_evaluate
    from .report import write_report_folder
    from .store import prepare_output, refuse_output_inside

    run, stores, ood = str(run), [str(s) for s in stores], [str(s) for s in ood]
    for option, target in (("--out", out), ("--report", report)):
        if target:
            refuse_output_inside(str(target), [run, *stores, *ood], option)
    if out:  # refuse early; nothing is removed before the inputs have proven sound
        prepare_output(Path(out), overwrite, is_report, "report", remove=False)
    if report:
        prepare_output(Path(report), overwrite, is_report_folder, "report folder", remove=False)
    result = run_evaluate(run, stores, ood)
    if out:
        write_report(result, out, overwrite)
    if report:
        write_report_folder({"tool": "lpclip-cache", "version": __version__, **result}, run, Path(report),
                            replace=overwrite)  # an old folder goes only once the new one is whole
    return result


def analyze(kind: str, store: str, out: str | None = None, run: str | None = None, k: int | None = None,
            sweep: Sequence[int] = (), seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """``lpclip-cache analyze latent KIND``: ``clusters`` (k-means purity/NMI/ARI; ``k`` defaults
    to the number of classes), ``neighbors`` (kNN agreement, silhouette, distance ratio; ``k``
    neighbours, default 10) or ``projection`` (a PNG at ``out``). Writes ``out`` when given."""
    from .store import prepare_output, refuse_output_inside

    if kind not in ("clusters", "neighbors", "projection"):
        raise InputError(f"analyze kind must be clusters, neighbors or projection, got '{kind}'")
    store, run = str(store), (str(run) if run else None)
    if out:
        refuse_output_inside(str(out), [store, *([run] if run else [])])
    if kind == "projection":
        from .analysis import projection_plot

        if not out:
            raise InputError("analyze projection needs out (the PNG file to write)")
        prepare_output(Path(out), overwrite, lambda path: path.suffix == ".png", "plot", remove=False)
        return projection_plot(store, str(out), run)  # written whole, then renamed over any old plot
    if out:
        prepare_output(Path(out), overwrite, is_report, "report", remove=False)
    if kind == "clusters":
        from .analysis import latent_clusters
        from .store import FeatureStore

        clusters = k if k is not None else FeatureStore(store).layout.n_classes
        result = latent_clusters(store, int(clusters), run, seed, tuple(int(v) for v in sweep))
    else:
        from .analysis import latent_neighbors

        result = latent_neighbors(store, int(k) if k is not None else 10, run)
    if out:
        write_report(result, out, overwrite)
    return result


def run(recipe: str, dry_run: bool = False, overrides: Sequence[str] = (), progress: bool = True) -> dict[str, Any]:
    """``lpclip-cache run``: carry out a recipe (see docs/recipes.md); ``dry_run`` only plans."""
    from .recipe import run_recipe

    return run_recipe(recipe, dry_run=dry_run, overrides=list(overrides), progress=progress)
