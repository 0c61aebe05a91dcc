"""The Python API: one function per command, with the command's options as keyword arguments.

    import lpclip_cache as lc

    lc.extract(data="cifar10-jpeg/train", out="train.zarr", model="ViT-B-32", pretrained="openai")
    lc.train(store="train.zarr", out="runs/lpclip", epochs=10)
    report = lc.evaluate(run="runs/lpclip", stores=["test.zarr"], ood=["mnist.zarr"], report="report/")
    lc.analyze("clusters", store="test.zarr", run="runs/lpclip", k=10, out="clusters.json")
    lc.analyze("views", store="train.zarr", out="views.json")
    lc.run("pipelines/demo.toml")

Each returns the summary the command prints with ``--json`` and raises the command's errors
(``lpclip_cache.errors.LpclipError`` subclasses) instead of exiting. Option names are the
fields of the Config dataclasses in ``lpclip_cache.config``, the command-line names with ``-``
written ``_`` (``--weak-views`` is ``weak_views``; ``--workers`` is ``num_workers``). Heavy
libraries are imported when a function is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import ExtractConfig, TrainConfig


def extract(data: str, out: str, **options: Any) -> dict[str, Any]:
    """``lpclip-cache extract``: run CLIP over clean, weak and strong views and write a store.

    A ``corrupt`` value naming several corruptions (``"all"``, ``"fog:all"``) writes one store per
    corruption into the folder ``out`` and returns ``{"folder", "stores", "images", "written"}``.
    """
    from .extraction import extract_stores

    return extract_stores(ExtractConfig(data=str(data), out=str(out), **options))


def train(store: str, out: str, **options: Any) -> dict[str, Any]:
    """``lpclip-cache train``: train an LP-CLIP (or supervised) probe from a store into a run."""
    from .training import train as run_train

    return run_train(TrainConfig(store=str(store), out=str(out), **options))


def evaluate(run: str, stores: Sequence[str], ood: Sequence[str] = (), out: str | None = None,
             report: str | None = None, overwrite: bool = False, transclip: bool | list[str] = False,
             predictions: str | None = None) -> dict[str, Any]:
    """``lpclip-cache evaluate``: score the teacher and the probe (and with ``transclip`` TransCLIP,
    zero-shot and atop the probe); write ``out`` (JSON), the ``report`` folder (JSON, Markdown,
    PNG plots) and ``predictions`` (every method's probabilities per image, HDF5) when given;
    return the report.

    ``transclip`` is checked as a recipe's ``[evaluate] transclip`` is: true, false, or a list of
    probe names, which asks for TransCLIP when it names the run (its folder's name, as a recipe
    names its runs). ``out`` and ``predictions`` may be URLs (``s3://...``).
    """
    from pathlib import Path

    from .recipe import transclip_chosen
    from .report import evaluate_into

    chosen = transclip_chosen(transclip, Path(str(run).rstrip("/")).name, "evaluate")
    return evaluate_into(run, list(stores), list(ood), out, report, overwrite, chosen, predictions)


def analyze(kind: str, store: str, **options: Any) -> dict[str, Any]:
    """``lpclip-cache analyze latent KIND``: ``clusters`` (k-means purity/NMI/ARI; ``k`` defaults
    to the number of classes), ``neighbors`` (kNN agreement, silhouette, distance ratio; ``k``
    neighbours) or ``projection`` (a PNG at ``out``); or ``lpclip-cache analyze views``
    (``"views"``: do the store's weak and strong views keep the class). Writes ``out`` when given."""
    from .analysis import analyze as run_analyze

    return run_analyze(kind, str(store), **options)


def run(recipe: str, dry_run: bool = False, overrides: Sequence[str] = (), progress: bool = True) -> dict[str, Any]:
    """``lpclip-cache run``: carry out a recipe (see docs/recipes.md); ``dry_run`` only plans."""
    from .recipe import run_recipe

    return run_recipe(recipe, dry_run=dry_run, overrides=list(overrides), progress=progress)
