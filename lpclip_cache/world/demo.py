"""The offline demo: the whole method, end to end, in the shapes world.

teacher (trained once, cached) -> extract train (weak + strong views), test, style shifts,
corruptions at every severity and OOD -> train LP-CLIP and the supervised reference ->
evaluate all three methods everywhere -> latent clusters -> one table (JSON, Markdown, PNG plots).
Every stage is an ordinary library call, the same the command line makes.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .teacher import MODEL_NAME, TeacherConfig

METHODS = ("teacher", "lpclip", "supervised")
STYLE_SHIFTS = ("outline", "texture")
CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast")
SEVERITIES = (1, 2, 3, 4, 5)
TABLE_METRICS = ("accuracy", "ece", "nll")


@dataclass
class DemoConfig:
    """Sizes and seeds of one demo run; the defaults are the README's demo."""

    out: str = "demo-out"
    seed: int = 0
    train_n: int = 4000
    test_n: int = 1000
    weak_views: int = 4
    strong_views: int = 4
    epochs: int = 30
    lr: float = 1e-2
    severities: tuple[int, ...] = SEVERITIES
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    overwrite: bool = False
    progress: bool = True


STARTED = ".lpclip-cache-demo"  # written first: an interrupted demo's folder is still recognisably ours


def is_demo(path: Path) -> bool:
    """True when ``path`` is a demo output folder, finished or left by an interrupted demo (so
    ``--overwrite`` can replace it)."""
    return (path / "stores").is_dir() and ((path / "results.json").is_file() or (path / STARTED).is_file())


def log(message: str, enabled: bool) -> None:
    """One progress line on stderr."""
    if enabled:
        sys.stderr.write(f"[demo] {message}\n")
        sys.stderr.flush()


def domains(config: DemoConfig) -> dict[str, str]:
    """Evaluation sets by name -> data spec (the in-distribution test set first)."""
    tail = f"n={config.test_n}:seed={config.seed}"
    sets = {"test": f"shapes:test:{tail}"}
    sets.update({style: f"shapes:test:{style}:{tail}" for style in STYLE_SHIFTS})
    for corruption in CORRUPTIONS:
        for severity in config.severities:
            sets[f"{corruption}-{severity}"] = f"shapes:test:{corruption}:{severity}:{tail}"
    return sets


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the whole demo into ``config.out``; return the results (also written as JSON)."""
    from ..analysis import latent_clusters
    from ..evaluation import evaluate
    from ..extraction import ExtractConfig, extract
    from ..store import prepare_output
    from ..training import TrainConfig, train
    from .teacher import ensure_teacher

    started = time.perf_counter()
    out = Path(config.out)
    prepare_output(out, config.overwrite, is_demo, "demo output")
    stores = out / "stores"
    stores.mkdir(parents=True)
    (out / STARTED).write_text("a demo is writing this folder; results.json appears when it has finished\n")
    timings: dict[str, float] = {}

    def timed(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 2)
        return now

    log("teacher: the small CLIP trained on shapes captions (cached after the first run)", config.progress)
    checkpoint = ensure_teacher(config.teacher, progress=config.progress)
    mark = timed("teacher", started)

    def extract_set(name: str, spec: str, weak: int, strong: int) -> str:
        path = stores / f"{name}.zarr"
        extract(ExtractConfig(
            data=spec, out=str(path), model=MODEL_NAME, pretrained=str(checkpoint), weak_views=weak,
            strong_views=strong, templates="shapes", seed=config.seed, num_workers=0, device="cpu",
            weak_policy="weak-small", strong_policy="strong-small",
            progress=config.progress and weak + strong > 0,
        ))
        return str(path)

    log(f"extract: train split, {config.weak_views} weak + {config.strong_views} strong views", config.progress)
    train_store = extract_set(
        "train", f"shapes:train:n={config.train_n}:seed={config.seed}", config.weak_views, config.strong_views
    )
    eval_sets = domains(config)
    log(f"extract: {len(eval_sets)} evaluation sets and the OOD set", config.progress)
    eval_stores = {name: extract_set(name, spec, 0, 0) for name, spec in eval_sets.items()}
    ood_store = extract_set("ood", f"shapes:ood:n={config.test_n}:seed={config.seed}", 0, 0)
    mark = timed("extract", mark)

    runs = {}
    for method in ("lpclip", "supervised"):
        log(f"train: {method}", config.progress)
        runs[method] = str(out / "runs" / method)
        train(TrainConfig(store=train_store, out=runs[method], method=method, epochs=config.epochs,
                          lr=config.lr, seed=config.seed, progress=False))
    mark = timed("train", mark)

    log("evaluate: every method on every set", config.progress)
    reports = {m: evaluate(runs[m], list(eval_stores.values()), [ood_store]) for m in runs}
    clusters = latent_clusters(eval_stores["test"], 6, runs["lpclip"], seed=config.seed)
    mark = timed("evaluate", mark)

    results = collect(config, reports, eval_stores, ood_store, clusters)
    results["timings_s"] = {**timings, "total": round(time.perf_counter() - started, 2)}
    results["teacher_checkpoint"] = str(checkpoint)
    write_outputs(out, results, runs, eval_stores)
    (out / STARTED).unlink()  # results.json now marks the folder
    return results


def collect(
    config: DemoConfig, reports: dict[str, Any], eval_stores: dict[str, str], ood_store: str, clusters: dict[str, Any]
) -> dict[str, Any]:
    """Gather per-set metrics into rows (methods) x columns (sets), with corruption means."""
    per_set: dict[str, dict[str, dict[str, float]]] = {m: {} for m in METHODS}
    for name, path in eval_stores.items():
        per_set["teacher"][name] = reports["lpclip"]["stores"][path]["teacher"]
        for method in ("lpclip", "supervised"):
            per_set[method][name] = reports[method]["stores"][path]["probe"]
    ood = {"teacher": reports["lpclip"]["ood"][ood_store]["teacher"]}
    ood.update({m: reports[m]["ood"][ood_store]["probe"] for m in ("lpclip", "supervised")})
    columns = ["test", *STYLE_SHIFTS, *CORRUPTIONS]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for method in METHODS:
        row = {name: {k: per_set[method][name][k] for k in TABLE_METRICS} for name in ("test", *STYLE_SHIFTS)}
        for corruption in CORRUPTIONS:
            cells = [per_set[method][f"{corruption}-{s}"] for s in config.severities]
            row[corruption] = {k: float(np.mean([c[k] for c in cells])) for k in TABLE_METRICS}
        row["ood"] = {"auroc": ood[method]["auroc"], "fpr95": ood[method]["fpr95"]}
        table[method] = row
    return {
        "tool": "lpclip-cache",
        "demo": {**asdict(config), "severities": list(config.severities)},
        "columns": [*columns, "ood"],
        "methods": list(METHODS),
        "table": table,
        "per_set": per_set,
        "ood": ood,
        "clusters": clusters,
    }


def format_table(results: dict[str, Any], markdown: bool = False) -> str:
    """The results table: a row per method; accuracy/ECE/NLL per set (corruptions: mean over
    severities); OOD AUROC and FPR95."""
    columns = results["columns"]
    head = ["method", *[f"{c} acc/ece/nll" for c in columns[:-1]], "ood auroc/fpr95"]
    rows = []
    for method in results["methods"]:
        row = results["table"][method]
        cells = [f"{row[c]['accuracy']:.3f}/{row[c]['ece']:.3f}/{row[c]['nll']:.2f}" for c in columns[:-1]]
        cells.append(f"{row['ood']['auroc']:.3f}/{row['ood']['fpr95']:.3f}")
        rows.append([method, *cells])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in [head, *rows])


def write_outputs(out: Path, results: dict[str, Any], runs: dict[str, str], eval_stores: dict[str, str]) -> None:
    """results.json, results.md and the plots, each written whole or not at all (results.json last)."""
    from ..atomic import write_json_atomic, write_text_atomic
    from .plots import accuracy_by_severity, reliability_diagrams

    plots = {
        "reliability": reliability_diagrams(out / "reliability.png", runs["lpclip"], runs["supervised"],
                                            eval_stores["test"]),
        "severity": accuracy_by_severity(out / "severity.png", results, CORRUPTIONS),
    }
    results["plots"] = {k: str(v) for k, v in plots.items()}
    clusters = results["clusters"]["spaces"]
    cluster_lines = [
        f"| {space} | {v['vs_true_labels']['purity']:.3f} | {v['vs_true_labels']['nmi']:.3f} | "
        f"{v['vs_true_labels']['ari']:.3f} |"
        for space, v in clusters.items()
    ]
    teacher = results["per_set"]["teacher"]["test"]["accuracy"]
    markdown = [
        "# lpclip-cache demo: the shapes world",
        "",
        f"Teacher: `{MODEL_NAME}` trained by the project; zero-shot accuracy on the clean test set "
        f"{teacher:.3f} (6 classes, chance 0.167).",
        "",
        "Cells: accuracy / ECE (15 bins) / NLL; corruption columns average severities "
        f"{', '.join(map(str, results['demo']['severities']))}; OOD: AUROC / FPR at 95% TPR "
        "(maximum softmax probability, OOD positive).",
        "",
        format_table(results, markdown=True),
        "",
        "Latent clusters on the clean test set (k = 6, against true labels):",
        "",
        "| space | purity | NMI | ARI |",
        "| --- | --- | --- | --- |",
        *cluster_lines,
        "",
        f"Timings (s): {json.dumps(results['timings_s'])}",
        "",
        "![reliability](reliability.png)",
        "",
        "![accuracy by severity](severity.png)",
        "",
    ]
    write_text_atomic(out / "results.md", "\n".join(markdown), "demo results")
    write_json_atomic(out / "results.json", results, "demo results")  # last: it marks the demo finished
