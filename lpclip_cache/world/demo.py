"""The offline demo: the whole method, end to end, in the shapes world.

teacher (trained once, cached) -> extract train (weak + strong views), test, style shifts,
corruptions at every severity and OOD -> train LP-CLIP and the supervised reference ->
evaluate all three methods everywhere -> latent clusters -> one table (JSON, Markdown, PNG plots).
Every stage is an ordinary library call, the same the command line makes.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..config import NEIGHBORS_K, DemoConfig
from .teacher import MODEL_NAME

METHODS = ("teacher", "lpclip", "supervised")
TABLE_METRICS = ("accuracy", "ece", "nll")


def recipe_path() -> Path:
    """The demo's recipe, the one definition of its datasets, views, probes and analyses
    (``pipelines/demo.toml`` is the same file)."""
    from importlib import resources

    return Path(str(resources.files("lpclip_cache") / "resources" / "demo.toml"))


def shifted_sets() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The recipe's style shifts (shifted datasets) and corruptions (their names), in its order."""
    import tomllib

    datasets = tomllib.loads(recipe_path().read_text())["datasets"]
    shifted = [table for table in datasets.values() if table["role"] == "shift"]
    return (tuple(name for name, table in datasets.items() if table["role"] == "shift" and "corrupt" not in table),
            tuple(table["corrupt"].partition(":")[0] for table in shifted if "corrupt" in table))


STYLE_SHIFTS, CORRUPTIONS = shifted_sets()


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


def overrides(config: DemoConfig, checkpoint: Path) -> list[str]:
    """The recipe's values this demo run sets (``--set`` items): sizes and seeds in the shapes
    data specs, views, probe epochs, learning rate and seeds, the teacher's checkpoint; the
    demo draws its own figures, so the reports are JSON alone. The recipe's analyses use the
    neighbour count of ``config.NEIGHBORS_K``."""
    from ..recipe import load_recipe

    recipe = load_recipe(recipe_path())
    items = [f"out={config.out}", f"model.pretrained={checkpoint}", f"views.weak={config.views}",
             f"views.strong={config.views}", f"views.seed={config.seed}", f"analyze.seed={config.seed}",
             "evaluate.report=false"]
    if config.test_n <= NEIGHBORS_K:  # too few test images for the neighbour analysis: leave it out
        items.append("analyze.neighbors=false")
    for name, table in recipe.datasets.items():
        n = config.train_n if table["role"] == "adapt" else config.test_n
        data = re.sub(r":seed=\d+", f":seed={config.seed}", re.sub(r":n=\d+", f":n={n}", table["data"]))
        items.append(f"datasets.{name}.data={data}")
        if table.get("corrupt"):
            corruption = table["corrupt"].partition(":")[0]
            items.append(f"datasets.{name}.corrupt={corruption}:{','.join(map(str, config.severities))}")
    for name in recipe.train:
        items += [f"train.{name}.{key}={value}" for key, value in
                  (("epochs", config.epochs), ("lr", config.lr), ("seed", config.seed))]
    return items


def check_config(config: DemoConfig) -> None:
    """Reject impossible sizes before anything is written."""
    from ..errors import InputError
    from .teacher import TeacherConfig

    sizes = (config.train_n, config.test_n, config.views, config.epochs, config.teacher_steps)
    if min(sizes) < 1 or not config.lr > 0:
        raise InputError("--train-n, --test-n, --views, --epochs and --teacher-steps must be at least 1, --lr > 0")
    if config.teacher_pool < TeacherConfig.batch_size:
        raise InputError(f"--teacher-pool must be at least the teacher's batch size ({TeacherConfig.batch_size})")


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the whole demo into ``config.out`` through the recipe runner; return the results (also
    written as JSON)."""
    from ..outputs import prepare_output
    from ..recipe import run_recipe
    from .teacher import TeacherConfig, ensure_teacher

    check_config(config)
    started = time.perf_counter()
    out = Path(config.out)
    prepare_output(out, config.overwrite, is_demo, "demo output")
    (out / "stores").mkdir(parents=True)
    (out / STARTED).write_text("a demo is writing this folder; results.json appears when it has finished\n")
    log("teacher: the small CLIP trained on shapes captions (cached after the first run)", config.progress)
    teacher = TeacherConfig(seed=config.seed, steps=config.teacher_steps, pool=config.teacher_pool)
    checkpoint = ensure_teacher(teacher, progress=config.progress)
    timings = {"teacher": round(time.perf_counter() - started, 2)}
    log(f"recipe {recipe_path().name}: extract, train, evaluate, analyze", config.progress)
    summary = run_recipe(recipe_path(), overrides=overrides(config, checkpoint), progress=config.progress)
    for stamp in sorted((out / ".recipe").glob("*.json")):  # each stage's seconds, summed by kind
        record = json.loads(stamp.read_text())
        kind = "evaluate" if record["stage"].startswith("analyze") else record["stage"].partition("-")[0]
        timings[kind] = round(timings.get(kind, 0.0) + record["seconds"], 2)
    stages = {stage["id"]: stage["out"] for stage in summary["stages"]}
    runs = {m: stages[f"train-{m}"] for m in ("lpclip", "supervised")}
    reports = {m: json.loads(Path(stages[f"evaluate-{m}"]).read_text()) for m in runs}
    eval_stores = {Path(path).stem: path for path in reports["lpclip"]["stores"]}
    ood_store = next(iter(reports["lpclip"]["ood"]))
    clusters = json.loads(Path(stages["analyze-clusters-test-lpclip"]).read_text())

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
    from ..figures import text_table

    columns = results["columns"]
    head = ["method", *[f"{c} acc/ece/nll" for c in columns[:-1]], "ood auroc/fpr95"]
    rows = []
    for method in results["methods"]:
        row = results["table"][method]
        cells = [f"{row[c]['accuracy']:.3f}/{row[c]['ece']:.3f}/{row[c]['nll']:.2f}" for c in columns[:-1]]
        cells.append(f"{row['ood']['auroc']:.3f}/{row['ood']['fpr95']:.3f}")
        rows.append([method, *cells])
    return text_table(head, rows, markdown)


def write_outputs(out: Path, results: dict[str, Any], runs: dict[str, str], eval_stores: dict[str, str]) -> None:
    """results.json, results.md and the plots, each written whole or not at all (results.json last)."""
    from ..outputs import write_json_atomic, write_text_atomic
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
