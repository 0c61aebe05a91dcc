"""Score the zero-shot teacher and a trained probe on stores: accuracy, calibration, OOD.

Every store is scored with the run's own head and probe on its clean view, so an OOD store's
class names do not matter. In-distribution stores must share the run's embedding space and
classes; OOD detection uses the maximum softmax probability, with the first ``--store`` as the
in-distribution reference and OOD as the positive class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .errors import StoreError
from .probe import softmax

METHOD_NAMES = ("teacher", "probe")


def method_names(members: int) -> tuple[str, ...]:
    """Rows of a report: the teacher, the probe (an ensemble's averaged prediction) and, for an
    ensemble, each member on its own (``member-0``, ``member-1``, ...)."""
    return METHOD_NAMES + (tuple(f"member-{m}" for m in range(members)) if members > 1 else ())


def expand_stores(paths: list[str]) -> list[str]:
    """Each path as given, except a folder that is not itself a store but holds stores (as
    ``extract --corrupt all`` writes): its stores, sorted by name."""
    from .store import is_url

    out: list[str] = []
    for path in paths:
        folder = Path(path)
        if not is_url(path) and folder.is_dir() and not (folder / "zarr.json").exists():
            children = sorted(p for p in folder.iterdir() if (p / "zarr.json").is_file())
            if children:
                out.extend(str(p) for p in children)
                continue
        out.append(path)
    return out


def check_compatible(run: Any, store: Any, role: str) -> None:
    """A store must live in the run's embedding space; an ID store must also share its classes."""
    run_model, store_model = run.info["model"], store.manifest["model"]
    if store.layout.dim != run.weight.shape[-1]:
        raise StoreError(
            f"{role} store '{store.path}' has {store.layout.dim}-d embeddings but run '{run.path}' expects "
            f"{run.weight.shape[-1]}-d: extract it with the run's model ({run_model['name']})"
        )
    if (store_model["name"], store_model["pretrained"]) != (run_model["name"], run_model["pretrained"]):
        raise StoreError(
            f"{role} store '{store.path}' was made by {store_model['name']} ({store_model['pretrained']['kind']}) "
            f"but run '{run.path}' by {run_model['name']} ({run_model['pretrained']['kind']}): "
            "extract it with the run's model and weights"
        )
    if role == "in-distribution" and store.classnames != run.classnames:
        raise StoreError(
            f"store '{store.path}' has classes {store.classnames[:3]}... ({len(store.classnames)}) but run "
            f"'{run.path}' has {run.classnames[:3]}... ({len(run.classnames)}): pass it with --ood if it is "
            "out-of-distribution, or re-extract it with the run's --classnames"
        )


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy (top-1, top-5, balanced), NLL, Brier, calibration (ECE, adaptive ECE, MCE and its
    direction), AURC and mean confidence."""
    values = {
        "accuracy": metrics.accuracy(probs, labels),
        "balanced_accuracy": metrics.balanced_accuracy(probs, labels),
        "nll": metrics.nll(probs, labels),
        "brier": metrics.brier(probs, labels),
        "ece": metrics.ece(probs, labels, n_bins=15),
        "adaptive_ece": metrics.adaptive_ece(probs, labels, n_bins=15),
        "mce": metrics.mce(probs, labels, n_bins=15),
        "overconfidence": metrics.calibration_direction(probs, labels),
        "aurc": metrics.aurc(probs, labels),
        "confidence": float(metrics.max_softmax_probability(probs).mean()),
    }
    if probs.shape[1] > 5:
        values["top5_accuracy"] = metrics.top_k_accuracy(probs, labels, 5)
    return values


OOD_SCORES = {
    "msp": lambda probs, logits: metrics.max_softmax_probability(probs),
    "entropy": lambda probs, logits: metrics.entropy_score(probs),
    "max_logit": lambda probs, logits: metrics.max_logit_score(logits),
    "energy": lambda probs, logits: metrics.energy_score(logits),
}


def ood_scores(probs: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Every in-distribution confidence score of a method's outputs (higher = more in-distribution)."""
    return {name: score(probs, logits) for name, score in OOD_SCORES.items()}


def score_logits(run: Any, store: Any) -> dict[str, np.ndarray]:
    """Logits of each method on a store's valid clean embeddings (an ensemble: log mean
    probabilities for ``probe``, and each member's own logits)."""
    from .probe import teacher_logits

    emb = store.read("clean/emb")[store.read("valid")]
    logits = {
        "teacher": teacher_logits(emb, run.head, run.logit_scale, run.temperature).astype(np.float64),
        "probe": run.probe_logits(emb).astype(np.float64),
    }
    if run.members > 1:
        for m, member in enumerate(run.member_logits(emb)):
            logits[f"member-{m}"] = member.astype(np.float64)
    return logits


def class_subset(store: Any) -> list[int] | None:
    """The classes an in-distribution store holds when it covers only part of the label space
    (``imagenet:`` folders such as ImageNet-A and -R), else None."""
    subset = store.manifest.get("dataset", {}).get("class_subset")
    return [int(c) for c in subset] if subset else None


def in_distribution_outputs(run: Any, store: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each method's logits and the labels of a store's valid rows, restricted to the store's
    class subset when it has one (logits of the other classes dropped, labels renumbered)."""
    logits = score_logits(run, store)
    labels = store.labels()[store.read("valid")]
    subset = class_subset(store)
    if subset is not None:
        logits = {m: v[:, subset] for m, v in logits.items()}
        position = np.full(len(store.classnames), -1, np.int64)
        position[subset] = np.arange(len(subset))
        labels = np.where(labels >= 0, position[np.maximum(labels, 0)], labels)
    return logits, labels


def score_store(run: Any, store: Any) -> dict[str, np.ndarray]:
    """Probabilities of each method on a store's valid clean embeddings."""
    return {method: softmax(logits, np.float64) for method, logits in score_logits(run, store).items()}


def evaluate(run_path: str, stores: list[str], ood: list[str] | None = None) -> dict[str, Any]:
    """Evaluate a run on in-distribution stores and OOD stores; return the report as a dict."""
    from .probe import load_run
    from .store import FeatureStore

    stores, ood = expand_stores(stores), expand_stores(ood or [])
    if not stores:
        raise StoreError("evaluate needs at least one --store (the in-distribution test set)")
    run = load_run(run_path)
    methods = method_names(run.members)
    report: dict[str, Any] = {
        "run": str(Path(run_path)),
        "method": run.info["config"]["method"],
        "ensemble": run.members,
        "methods": list(methods),
        "metrics": {"ece_bins": 15, "ood_score": "max softmax probability (others under 'scores')",
                    "ood_positive": True},
        "stores": {},
        "ood": {},
    }
    reference: dict[str, np.ndarray] | None = None
    reference_name = ""
    for path in stores:
        store = FeatureStore(path)
        check_compatible(run, store, "in-distribution")
        logits, labels = in_distribution_outputs(run, store)
        probs = {m: softmax(v, np.float64) for m, v in logits.items()}
        entry: dict[str, Any] = {"samples": int(labels.size)}
        if class_subset(store) is not None:
            entry["classes"] = len(class_subset(store))
        known = labels >= 0
        for method in methods:
            if known.any():
                entry[method] = classification_metrics(probs[method][known], labels[known])
            else:
                entry[method] = {"confidence": float(metrics.max_softmax_probability(probs[method]).mean())}
        entry["shift"] = shift_of(store.manifest)
        report["stores"][path] = entry
        if reference is None:
            reference = {m: ood_scores(probs[m], logits[m]) for m in methods}
            reference_name = path
            if run.members > 1:
                reference_mi = run.mutual_information(store.read("clean/emb")[store.read("valid")])
    for path in ood:
        store = FeatureStore(path)
        check_compatible(run, store, "OOD")
        logits = score_logits(run, store)
        entry = {"samples": int(logits["probe"].shape[0]), "reference": reference_name}
        for method in methods:
            scores = ood_scores(softmax(logits[method], np.float64), logits[method])
            per_score = {
                name: {
                    "auroc": metrics.auroc(reference[method][name], values),
                    "aupr": metrics.aupr(reference[method][name], values),
                    "fpr95": metrics.fpr_at_95_tpr(reference[method][name], values),
                }
                for name, values in scores.items()
            }
            entry[method] = {**per_score["msp"], "confidence": float(scores["msp"].mean()), "scores": per_score}
        if run.members > 1:
            # the ensemble's mutual information as a second score: higher means OOD, so negate it
            ood_mi = run.mutual_information(store.read("clean/emb")[store.read("valid")])
            entry["probe"]["auroc_mutual_information"] = metrics.auroc(-reference_mi, -ood_mi)
            entry["probe"]["fpr95_mutual_information"] = metrics.fpr_at_95_tpr(-reference_mi, -ood_mi)
        report["ood"][path] = entry
    report["corruptions"] = aggregate_corruptions(report["stores"])
    return report


def shift_of(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The corruption a store was made with (``--corrupt``, ``cifar10c:`` or ``shapes:``), or None."""
    if manifest.get("corruption"):
        name, _, severity = str(manifest["corruption"]).partition(":")
        return {"corruption": name, "severity": int(severity)}
    dataset = manifest.get("dataset", {})
    if dataset.get("corruption"):
        return {"corruption": dataset["corruption"], "severity": int(dataset["severity"])}
    return None


def aggregate_corruptions(stores: dict[str, Any]) -> dict[str, Any]:
    """Error and ECE per corruption and severity, their means over severities per corruption,
    and the mean corruption error over all of them (an unnormalised mCE), for each method."""
    table: dict[str, dict[str, dict[int, tuple[float, float]]]] = {}
    for entry in stores.values():
        shift = entry.get("shift")
        if not shift:
            continue
        for method, values in entry.items():
            if isinstance(values, dict) and "accuracy" in values:
                per = table.setdefault(method, {}).setdefault(shift["corruption"], {})
                per[shift["severity"]] = (1.0 - values["accuracy"], values["ece"])
    out: dict[str, Any] = {}
    for method, corruptions in table.items():
        means = {name: float(np.mean([v[0] for v in cells.values()])) for name, cells in corruptions.items()}
        out[method] = {
            "error": {name: {str(k): v[0] for k, v in sorted(cells.items())} for name, cells in corruptions.items()},
            "ece": {name: {str(k): v[1] for k, v in sorted(cells.items())} for name, cells in corruptions.items()},
            "mean_error": means,
            "mean_ece": {name: float(np.mean([v[1] for v in cells.values()])) for name, cells in corruptions.items()},
            "mce": float(np.mean(list(means.values()))),
        }
    return out


def format_table(report: dict[str, Any]) -> str:
    """A readable table: one row per (store, method)."""
    lines = [f"{'set':<28} {'method':<9} {'acc':>7} {'nll':>7} {'brier':>7} {'ece':>7} {'auroc':>7} {'fpr95':>7}"]
    lines.append("-" * len(lines[0]))

    def cell(values: dict[str, float], key: str) -> str:
        return f"{values[key]:7.4f}" if key in values else f"{'-':>7}"

    for group in ("stores", "ood"):
        for path, entry in report[group].items():
            name = Path(path).name + (" (OOD)" if group == "ood" else "")
            for method in report.get("methods", METHOD_NAMES):
                values = entry[method]
                keys = ("accuracy", "nll", "brier", "ece", "auroc", "fpr95")
                lines.append(f"{name[:28]:<28} {method:<9} " + " ".join(cell(values, k) for k in keys))
    return "\n".join(lines)


def write_json_atomic(path: Path, data: dict[str, Any], what: str = "report") -> None:
    """Write JSON to a temporary file beside ``path``, then rename it into place (see ``atomic``)."""
    from .atomic import write_json_atomic as write

    write(path, data, what)
