"""The offline demo: the whole method, end to end, in the shapes world.

teacher (trained once, cached) and its regime figures -> for each seed: the demo recipe (extract
train with weak + strong views, test, style shifts, the 15 corruptions at 5 severities and OOD;
train LP-CLIP, an LP-CLIP ensemble and the supervised reference; evaluate, with TransCLIP on the
zero-shot head and atop LP-CLIP; latent clusters), the ablations -> one table with means, spreads
and paired intervals over seeds (JSON, Markdown, PNG).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..config import NEIGHBORS_K, DemoConfig
from .demo_recipe import recipe_path, style_shifts
from .teacher import MODEL_NAME

log = logging.getLogger(__name__)

PROBES = ("lpclip", "ensemble", "supervised")  # the recipe's probes
# TransCLIP, the training-free rival on the same embeddings: the demo's name -> (the probe whose
# report holds it, its method there); the recipe asks for it in LP-CLIP's evaluation alone
TRANSCLIP = {"transclip": ("lpclip", "transclip"), "transclip-lpclip": ("lpclip", "transclip-probe")}
METHODS = ("teacher", *PROBES, *TRANSCLIP)
# the paired differences, seed by seed: (method, minus method)
PAIRS = (("lpclip", "teacher"), ("lpclip", "supervised"), ("transclip", "teacher"), ("lpclip", "transclip"),
         ("transclip-lpclip", "lpclip"), ("transclip-lpclip", "transclip"))
STRENGTHS = (1, 3)  # RandAugment operations per strong view in the strength ablation (the policy's own: 2)
# cached views of each kind in the strength ablation's stores: its rows compare with ``views-2`` (the
# policy's own 2 operations from the first 2 views of the recipe's store, which are these views)
STRENGTH_VIEWS = 2
STYLE_SHIFTS = style_shifts()


STARTED = ".lpclip-cache-demo"  # written first: an interrupted demo's folder is still recognisably ours


def is_demo(path: Path) -> bool:
    """True when ``path`` is a demo output folder, finished or left by an interrupted demo (so
    ``--overwrite`` can replace it)."""
    return (path / "stores").is_dir() and ((path / "results.json").is_file() or (path / STARTED).is_file())


def overrides(config: DemoConfig, checkpoint: Path, seed: int, out: Path) -> list[str]:
    """The recipe's values one seed of the demo sets (``--set`` items): the output folder, the
    teacher's checkpoint, sizes and the world seed in the shapes data specs, the views and their
    seed, the probes' epochs, learning rate, seed and ensemble size. The demo draws its own
    figures, so the reports are JSON alone; the analyses use ``config.NEIGHBORS_K`` neighbours."""
    from ..recipe import load_recipe

    recipe = load_recipe(recipe_path())
    items = [f"out={out}", f"model.pretrained={checkpoint}", f"views.weak={config.views}",
             f"views.strong={config.views}", f"views.seed={seed}", f"analyze.seed={seed}", "evaluate.report=false"]
    if config.test_n <= NEIGHBORS_K:  # too few test images for the neighbour analysis: leave it out
        items.append("analyze.neighbors=false")
    if config.test_n < recipe.analyze.get("k", 1):  # fewer test images than clusters: one cluster each at most
        items.append(f"analyze.k={config.test_n}")
    for name, table in recipe.datasets.items():
        n = config.train_n if table["role"] == "adapt" else config.corrupt_n if table.get("corrupt") else config.test_n
        data = re.sub(r":seed=\d+", f":seed={seed}", re.sub(r":n=\d+", f":n={n}", table["data"]))
        data = re.sub(r":world=\w+", "", data) + f":world={config.world}"
        items.append(f"datasets.{name}.data={data}")
        if table.get("corrupt"):
            corruption = table["corrupt"].partition(":")[0]
            items.append(f"datasets.{name}.corrupt={corruption}:{','.join(str(int(s)) for s in config.severities)}")
    for name, table in recipe.train.items():
        items += [f"train.{name}.{key}={value}" for key, value in
                  (("epochs", config.epochs), ("lr", config.lr), ("seed", seed))]
        if table.get("ensemble", 1) > 1:
            items.append(f"train.{name}.ensemble={config.ensemble}")
    return items


def check_config(config: DemoConfig) -> None:
    """Reject impossible sizes and unknown worlds before anything is written."""
    from ..config import check_choices
    from ..errors import InputError
    from ..transclip import check_size
    from .teacher import TeacherConfig

    check_choices(config)
    sizes = (config.train_n, config.test_n, config.corrupt_n, config.views, config.epochs,
             1 if config.teacher_steps is None else config.teacher_steps, config.ensemble)
    if min(sizes) < 1 or not config.lr > 0 or config.seeds < 2:
        raise InputError("--train-n, --test-n, --corrupt-n, --views, --epochs, --teacher-steps and --ensemble must be "
                         "at least 1, --seeds at least 2 (a spread needs two), --lr > 0")
    if not config.severities or any(s != int(s) or not 1 <= s <= 5 for s in config.severities):
        raise InputError(f"--severities must be whole numbers 1-5, got {','.join(f'{s:g}' for s in config.severities)}")
    check_size(min(config.test_n, config.corrupt_n), "--test-n and --corrupt-n")  # TransCLIP runs on each test set
    if config.teacher_pool < TeacherConfig.batch_size:
        raise InputError(f"--teacher-pool must be at least the teacher's batch size ({TeacherConfig.batch_size})")


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the whole demo into ``config.out``: the teacher and its regime figures once, then the
    recipe, the ablations and the strength ablation for each seed; return the results with their
    spread over seeds (also written as JSON)."""
    from ..outputs import local_folder, prepare_output
    from .regime import measure
    from .teacher import ensure_teacher, world_teacher

    check_config(config)
    started = time.perf_counter()
    out = local_folder(config.out, "--out", "demo output")
    prepare_output(out, config.overwrite, is_demo, "demo output")
    (out / "stores").mkdir(parents=True)
    (out / STARTED).write_text("a demo is writing this folder; results.json appears when it has finished\n")
    if config.progress:
        log.info(f"[demo] teacher: the small CLIP of the {config.world} world (shipped for the default one; others "
                 "trained once and cached)")
    teacher = world_teacher(config.world, seed=config.teacher_seed, steps=config.teacher_steps,
                            pool=config.teacher_pool)
    checkpoint = ensure_teacher(teacher, progress=config.progress)
    timings = {"teacher": round(time.perf_counter() - started, 2)}
    began = time.perf_counter()
    regime = measure(checkpoint, seed=config.seed, train_n=config.train_n, test_n=config.test_n, world=config.world,
                     progress=config.progress)
    timings["regime"] = round(time.perf_counter() - began, 2)
    views = regime["views"]["views"]
    if config.progress:
        log.info(f"[demo] regime ({config.world} world): probe {regime['supervised_probe']:.3f}, zero-shot "
                 f"{regime['zeroshot']:.3f} ({regime['classes']} classes); the probe keeps "
                 f"{views['weak']['label_preservation']['ratio']:.0%} on weak and "
                 f"{views['strong']['label_preservation']['ratio']:.0%} on strong views")
    seeds = [config.seed + i for i in range(config.seeds)]
    per_seed = []
    for seed in seeds:
        if config.progress:
            log.info(f"[demo] seed {seed}: recipe {recipe_path().name}, then the ablations")
        per_seed.append(run_seed(config, checkpoint, seed, out / "seeds" / str(seed), timings))
    results = aggregate(config, per_seed)
    results.update({"regime": regime, "teacher_checkpoint": str(checkpoint), "teacher_config": asdict(teacher)})
    results["timings_s"] = {**timings, "total": round(time.perf_counter() - started, 2)}
    write_outputs(out, results, per_seed[0])
    (out / STARTED).unlink()  # results.json now marks the folder
    return results


def run_seed(config: DemoConfig, checkpoint: Path, seed: int, out: Path, timings: dict[str, float]) -> dict[str, Any]:
    """One seed: the recipe (stores, probes, reports, analyses), the ablations on its train store
    and the strength ablation; the seed's metrics per method and per variant."""
    from ..recipe import run_recipe

    summary = run_recipe(recipe_path(), overrides=overrides(config, checkpoint, seed, out), progress=config.progress)
    for stamp in sorted((out / ".recipe").glob("*.json")):  # each stage's seconds, summed by kind
        record = json.loads(stamp.read_text())
        kind = "evaluate" if record["stage"].startswith("analyze") else record["stage"].partition("-")[0]
        timings[kind] = round(timings.get(kind, 0.0) + record["seconds"], 2)
    stages = {stage["id"]: stage["out"] for stage in summary["stages"]}
    reports = {m: json.loads(Path(stages[f"evaluate-{m}"]).read_text()) for m in PROBES}
    clusters = {m: json.loads(Path(stages[f"analyze-clusters-test-{m}"]).read_text()) for m in PROBES}
    views = view_row(json.loads(Path(stages["analyze-views-train"]).read_text()))
    stores = {name: stages[f"extract-{name}"] for name in ("train", "test", *STYLE_SHIFTS, "strokes")}
    row = {"teacher": metrics_row(reports["lpclip"], "teacher", stores, clusters["lpclip"]["spaces"]["clip"])}
    row.update({m: metrics_row(reports[m], "probe", stores, clusters[m]["spaces"]["probe"]) for m in PROBES})
    row.update({m: metrics_row(reports[probe], method, stores, None) for m, (probe, method) in TRANSCLIP.items()})
    add_effective_robustness(row)
    began = time.perf_counter()
    ablation = ablations(config, checkpoint, seed, out, stores) if config.ablations else {}
    timings["ablations"] = round(timings.get("ablations", 0.0) + time.perf_counter() - began, 2)
    return {"seed": seed, "table": row, "ablation": ablation, "views": views, "stores": stores, "reports": reports,
            "runs": {m: stages[f"train-{m}"] for m in PROBES}}


VIEW_COLUMNS = ("teacher_accuracy", "pseudo_label_agreement", "cosine_to_clean", "keeps", "ceiling")


def view_row(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """One seed's view figures of its train store (``analyze views``), per view kind and the clean
    view: the teacher's accuracy, its agreement with its clean answer, the cosine to the clean
    embedding, the share of a clean probe's accuracy kept and the consistency ceiling."""
    clean = report["clean"]
    rows = {"clean": {"teacher_accuracy": clean["teacher_accuracy"], "pseudo_label_agreement": 1.0,
                      "cosine_to_clean": 1.0, "keeps": 1.0, "ceiling": clean["probe_accuracy"]}}
    for kind, entry in report["views"].items():
        rows[kind] = {"teacher_accuracy": entry["teacher_accuracy"],
                      "pseudo_label_agreement": entry["pseudo_label_agreement"],
                      "cosine_to_clean": entry["cosine_to_clean"], "keeps": entry["label_preservation"]["ratio"],
                      "ceiling": entry["ceiling"]["clean_accuracy"]}
    return rows


def metrics_row(report: dict[str, Any], method: str, stores: dict[str, str],
                space: dict[str, Any] | None) -> dict[str, float]:
    """One method's cells of one seed: clean test accuracy, ECE and NLL; accuracy, ECE and NLL under
    each style shift; mean error and ECE over every corrupted store; OOD AUROC and FPR95; purity,
    NMI and ARI of k-means on its space against the true labels (left out for a method without a
    space of its own: TransCLIP keeps CLIP's embeddings)."""
    test = report["stores"][stores["test"]][method]
    row = {"test_accuracy": test["accuracy"], "test_ece": test["ece"], "test_nll": test["nll"]}
    for style in STYLE_SHIFTS:
        cell = report["stores"][stores[style]][method]
        row.update({f"{style}_accuracy": cell["accuracy"], f"{style}_ece": cell["ece"], f"{style}_nll": cell["nll"]})
    corrupted = [entry[method] for entry in report["stores"].values() if entry.get("shift")]
    row["corruption_error"] = float(np.mean([1 - c["accuracy"] for c in corrupted]))
    row["corruption_ece"] = float(np.mean([c["ece"] for c in corrupted]))
    ood = report["ood"][stores["strokes"]][method]
    row.update({"ood_auroc": ood["auroc"], "ood_fpr95": ood["fpr95"]})
    if space is not None:
        row.update({key: space["vs_true_labels"][key] for key in ("purity", "nmi", "ari")})
    return row


def add_effective_robustness(row: dict[str, dict[str, float]]) -> None:
    """Each method's effective robustness under each style shift, in its cells of one seed
    (``{style}_effective_robustness``): its shifted accuracy above the line through that seed's
    zero-shot teacher and supervised probe (``metrics.effective_robustness``; 0 for both of them)."""
    from ..metrics import effective_robustness

    for style in STYLE_SHIFTS:
        column = f"{style}_accuracy"
        anchors = [(row[m]["test_accuracy"], row[m][column]) for m in ("teacher", "supervised")]
        for cells in row.values():
            cells[f"{style}_effective_robustness"] = effective_robustness(cells["test_accuracy"], cells[column],
                                                                          *anchors)


def ablations(config: DemoConfig, checkpoint: Path, seed: int, out: Path, stores: dict[str, str]) -> dict[str, Any]:
    """The method's ablations on this seed's train store (``ablate``), and the strength of the
    strong augmentation: LP-CLIP trained on stores whose strong views apply 1 or 3 RandAugment
    operations instead of 2, with ``STRENGTH_VIEWS`` views of each kind (compare with ``views-2``);
    every variant scored on the test set, the style shifts and OOD."""
    from ..ablate import run_ablation
    from ..augment import load_policy
    from ..config import AblationConfig, ExtractConfig, TrainConfig
    from ..extraction import extract
    from ..recipe import load_recipe, plan
    from ..report import evaluate_into
    from ..training import train

    eval_stores = [stores["test"], *(stores[s] for s in STYLE_SHIFTS)]
    if config.progress:
        log.info(f"[demo] seed {seed}: ablations (ablate on its train store)")
    ablation = run_ablation(AblationConfig(store=stores["train"], eval_stores=eval_stores, ood=[stores["strokes"]],
                                           out=str(out / "ablation"), epochs=config.epochs, lr=config.lr, seed=seed,
                                           thresholds=(0.5,), progress=config.progress))
    rows = {name: ablation_row(entry, stores) for name, entry in ablation["rows"].items()}
    recipe = load_recipe(recipe_path(), overrides(config, checkpoint, seed, out))
    options = next(s.options for s in plan(recipe) if s.kind == "extract" and s.name == "train")
    base = load_policy(options["strong_policy"])
    for ops in STRENGTHS:
        if config.progress:
            log.info(f"[demo] seed {seed}: strength ablation, {ops} RandAugment operation(s) per strong view: "
                     "extract, train, evaluate")
        policy = out / "ablation" / f"strong-{ops}-ops.json"
        policy.write_text(json.dumps({**base, "name": f"{base['name']}-{ops}-ops", "num_ops": ops}))
        store = out / "ablation" / f"train-strong-{ops}-ops.zarr"
        views = min(STRENGTH_VIEWS, config.views)
        extract(ExtractConfig(**{**options, "strong_policy": str(policy), "pretrained": str(checkpoint),
                                 "weak_views": views, "strong_views": views}, out=str(store),
                              progress=config.progress))
        run = out / "ablation" / "runs" / f"strong-{ops}-ops"
        train(TrainConfig(store=str(store), out=str(run), epochs=config.epochs, lr=config.lr, seed=seed,
                          progress=config.progress))
        report = evaluate_into(str(run), eval_stores, [stores["strokes"]], out=f"{run}.json")
        rows[f"strong-{ops}-ops"] = ablation_row({"stores": {p: report["stores"][p]["probe"] for p in eval_stores},
                                                  "ood": {p: report["ood"][p]["probe"] for p in report["ood"]}}, stores)
    return rows


def ablation_row(entry: dict[str, Any], stores: dict[str, str]) -> dict[str, float]:
    """One variant's cells: test accuracy, ECE and NLL, accuracy under each style shift, OOD AUROC
    (NaN for a variant that was not trained: a threshold that kept no sample)."""
    nan = float("nan")
    test = entry["stores"][stores["test"]]
    row = {f"test_{k}": test.get(k, nan) for k in ("accuracy", "ece", "nll")}
    row.update({f"{style}_accuracy": entry["stores"][stores[style]].get("accuracy", nan) for style in STYLE_SHIFTS})
    row["ood_auroc"] = entry["ood"][stores["strokes"]].get("auroc", nan)
    return row


def interval(values: list[float]) -> dict[str, Any]:
    """Mean, standard deviation (n - 1) and the 95% t-interval of the mean of per-seed values."""
    from scipy import stats

    x = np.asarray(values, np.float64)
    sd = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    half = float(stats.t.ppf(0.975, len(x) - 1) * sd / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "sd": sd, "ci95": [float(x.mean()) - half, float(x.mean()) + half],
            "values": x.tolist()}


def aggregate(config: DemoConfig, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation and 95% interval over seeds of every cell; the paired differences
    of ``PAIRS`` per cell, seed by seed ("lpclip - teacher": ...); the same for the ablations. A
    method lacks the cells that do not apply to it (TransCLIP's clusters), and a pair those of
    either side."""
    columns = list(per_seed[0]["table"]["teacher"])
    first = per_seed[0]["table"]
    table = {m: {c: interval([s["table"][m][c] for s in per_seed]) for c in columns if c in first[m]}
             for m in METHODS}
    paired = {f"{a} - {b}": {c: interval([s["table"][a][c] - s["table"][b][c] for s in per_seed]) for c in columns
                             if c in first[a] and c in first[b]} for a, b in PAIRS}
    ablation: dict[str, Any] = {}
    if per_seed[0]["ablation"]:
        keys = list(per_seed[0]["ablation"]["lpclip"])
        ablation = {v: {k: interval([s["ablation"][v][k] for s in per_seed]) for k in keys}
                    for v in per_seed[0]["ablation"]}
    views = {kind: {c: interval([s["views"][kind][c] for s in per_seed]) for c in VIEW_COLUMNS}
             for kind in per_seed[0]["views"]}
    return {"tool": "lpclip-cache", "demo": {**asdict(config), "severities": [int(s) for s in config.severities]},
            "world": config.world, "seeds": [s["seed"] for s in per_seed], "methods": list(METHODS),
            "columns": columns, "table": table, "paired": paired, "ablation": ablation, "views": views,
            "per_seed": [{k: s[k] for k in ("seed", "table", "ablation", "views")} for s in per_seed]}


def cell(stat: dict[str, Any], digits: int = 3, missing: str = "not trained") -> str:
    """``mean ± sd`` of a cell (``missing`` where a seed has no value: an ablation variant that kept
    no sample, an effective robustness without a line because teacher and supervised probe tie)."""
    if stat["mean"] != stat["mean"]:
        return missing
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def difference(stat: dict[str, Any] | None) -> str:
    """``mean [95% interval]`` of a paired difference (``n/a`` where a side does not apply)."""
    if stat is None:
        return "n/a"
    return f"{stat['mean']:+.3f} [{stat['ci95'][0]:+.3f}, {stat['ci95'][1]:+.3f}]"


def format_table(results: dict[str, Any], markdown: bool = False) -> str:
    """The results table: a row per measure, a column per method (mean ± standard deviation over
    seeds); then the paired differences seed by seed (mean [95% interval]), a column per pair."""
    from ..figures import text_table

    table = results["table"]
    rows = [[column, *(cell(table[m][column], missing="undefined") if column in table[m] else "n/a"
                       for m in results["methods"])] for column in results["columns"]]
    pairs = [[column, *(difference(diff.get(column)) for diff in results["paired"].values())]
             for column in results["columns"]]
    return (text_table(["measure", *results["methods"]], rows, markdown) + "\n\n"
            + text_table(["paired difference [95% CI]", *results["paired"]], pairs, markdown))


def format_views(results: dict[str, Any], markdown: bool = False) -> str:
    """The view table: a row per view kind of the train stores, mean ± standard deviation over seeds."""
    from ..figures import text_table

    rows = [[kind, *(cell(values[c]) for c in VIEW_COLUMNS)] for kind, values in results["views"].items()]
    return text_table(["view", *VIEW_COLUMNS], rows, markdown)


def format_ablation(results: dict[str, Any], markdown: bool = False) -> str:
    """The ablation table: a row per variant, mean ± standard deviation over seeds."""
    from ..figures import text_table

    if not results["ablation"]:
        return "(no ablations in this run)"
    keys = list(next(iter(results["ablation"].values())))
    rows = [[name, *(cell(values[k]) for k in keys)] for name, values in results["ablation"].items()]
    return text_table(["variant", *keys], rows, markdown)


def robustness_points(results: dict[str, Any]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The effective-robustness plot's inputs, means over seeds: each method's clean test accuracy,
    and its accuracy under each style shift and over every corrupted store (1 - corruption error)."""
    table = results["table"]
    clean = {m: table[m]["test_accuracy"]["mean"] for m in results["methods"]}
    shifts = {style: {m: table[m][f"{style}_accuracy"]["mean"] for m in results["methods"]} for style in STYLE_SHIFTS}
    shifts["corruptions"] = {m: 1.0 - table[m]["corruption_error"]["mean"] for m in results["methods"]}
    return clean, shifts


def reliability_inputs(first: dict[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The reliability plot's inputs on the first seed's test store: the teacher's, LP-CLIP's and
    the supervised probe's probabilities, and the labels."""
    from ..evaluation import labels_in, outputs_in
    from ..runs import load_run
    from ..store import FeatureStore

    store = FeatureStore(first["stores"]["test"])
    lpclip = outputs_in(load_run(first["runs"]["lpclip"]), store, None)
    probs = {"teacher": lpclip["teacher"].probs, "lpclip": lpclip["probe"].probs,
             "supervised": outputs_in(load_run(first["runs"]["supervised"]), store, None)["probe"].probs}
    return probs, labels_in(store, None)


def write_outputs(out: Path, results: dict[str, Any], first: dict[str, Any]) -> None:
    """results.json, results.md and the plots (from the first seed), each written whole or not at
    all (results.json last)."""
    from ..figures import DEMO_LABELS
    from ..figures.calibration import demo_reliability_figure
    from ..figures.shift import demo_severity_figure, effective_robustness_figure
    from ..outputs import write_json_atomic, write_text_atomic

    plots = {
        "reliability": demo_reliability_figure(out / "reliability.png", *reliability_inputs(first)),
        "severity": demo_severity_figure(out / "severity.png", first["reports"], first["stores"]["test"]),
        "effective_robustness": effective_robustness_figure(
            out / "effective_robustness.png", *robustness_points(results), line=("teacher", "supervised"),
            names=DEMO_LABELS, title=f"effective robustness, {results['world']} world (mean over seeds)", whole=True),
    }
    results["plots"] = {k: str(v) for k, v in plots.items()}
    write_text_atomic(out / "results.md", results_markdown(results), "demo results")
    write_json_atomic(out / "results.json", results, "demo results")  # last: it marks the demo finished


def regime_summary(results: dict[str, Any]) -> str:
    """results.md's paragraph on the teacher and its regime on the clean test set."""
    regime = results["regime"]
    views = regime["views"]["views"]
    return (
        f"Teacher: `{MODEL_NAME}` trained by the project. Regime on the clean test set (world seed "
        f"{regime['seed']}): {regime['classes']} classes; supervised linear probe on the frozen embeddings "
        f"{regime['supervised_probe']:.3f}; zero-shot {regime['zeroshot']:.3f} (gap {regime['gap']:.3f}); "
        + "; ".join(f"{k} accuracy {v['accuracy']:.3f} at ECE {v['ece']:.3f}" for k, v in regime["shifts"].items())
        + f"; OOD MSP AUROC {regime['ood_msp_auroc']:.3f}. Views ({regime['views']['images']} train images): a "
        f"probe fitted on clean embeddings keeps {views['weak']['label_preservation']['ratio']:.3f} of its accuracy "
        f"on weak views and {views['strong']['label_preservation']['ratio']:.3f} on strong ones; the teacher is "
        f"right on {regime['views']['clean']['teacher_accuracy']:.3f} of clean and "
        f"{views['weak']['teacher_accuracy']:.3f} of weak views. In regime: {regime['in_regime']}"
        + (f" (failing: {', '.join(k for k, ok in regime['checks'].items() if not ok)})."
           if not regime["in_regime"] else ".")
    )


def results_markdown(results: dict[str, Any]) -> str:
    """results.md: the regime, the view table, the results and paired differences, the ablations,
    the timings and the plots."""
    seeds = ", ".join(map(str, results["seeds"]))
    return "\n".join([
        f"# lpclip-cache demo: the shapes world ({results['world']})",
        "",
        regime_summary(results),
        "",
        "Do the method's views keep the class? `analyze views` on each seed's train store (mean ± standard "
        "deviation over seeds): the teacher's accuracy on the view, its agreement with its own answer on the clean "
        "image, the cosine to the clean embedding, the share of a clean probe's accuracy kept on the view, and "
        "the clean accuracy of a true-label probe trained on the view (the ceiling of consistency training).",
        "",
        format_views(results, markdown=True),
        "",
        f"Mean ± standard deviation over seeds {seeds} (world data, views and probes; one teacher). "
        "transclip is TransCLIP on the teacher's zero-shot head and transclip-lpclip TransCLIP atop LP-CLIP's "
        "probabilities, each transductive over the whole of every test set (OOD sets on their own: the score is the "
        "largest assignment). corruption_* average every corruption and severity; ood_* use the maximum softmax "
        "probability (OOD positive); purity, NMI and ARI score k-means on each method's space (the teacher's: "
        "CLIP's embeddings; n/a for TransCLIP, which keeps CLIP's). The second table holds paired differences, "
        "seed by seed: mean [95% t-interval].",
        "",
        format_table(results, markdown=True),
        "",
        "Ablations (LP-CLIP variants on the same stores; mean ± standard deviation over the same seeds):",
        "",
        format_ablation(results, markdown=True),
        "",
        f"Timings (s): {json.dumps(results['timings_s'])}",
        "",
        "![reliability](reliability.png)",
        "",
        "![accuracy by severity](severity.png)",
        "",
        "![effective robustness](effective_robustness.png)",
        "",
    ])
