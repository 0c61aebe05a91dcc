"""Score the zero-shot teacher and a trained probe on stores: accuracy, calibration, OOD.

Every store is scored with the run's own head and probe on its clean view, so an OOD store's
class names do not matter. In-distribution stores must share the run's embedding space and
classes; OOD detection uses the maximum softmax probability (and the scores under ``scores``),
with the first ``--store`` as the in-distribution reference and OOD as the positive class.

Every row comes from ``outputs_in``: each method's logits over one class space (a store's class
subset, or all classes), softmaxed per component (the teacher, a probe, each member of an
ensemble) and, for an ensemble, averaged. The embeddings are read one shard at a time and only
the per-image outputs kept, so ``evaluate`` holds any store that ``train`` streams (TransCLIP
aside: it reads a store's whole set, as it needs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .errors import StoreError
from .numeric import softmax

METHOD_NAMES = ("teacher", "probe")
# evaluate --transclip: TransCLIP on the zero-shot head, and atop the probe's predictions
TRANSCLIP_METHODS = ("transclip", "transclip-probe")
SEVERITIES = (1, 2, 3, 4, 5)  # of every corruption, for a mean corruption error
# the fewest multiply-adds a block of logits is computed in: above every size at which OpenBLAS
# takes a small-matrix or direct kernel (about 10^6 and 7.3 * 10^6), whose float32 sums round
# otherwise than those of one product over the whole store
BLOCK_MULTIPLY_ADDS = 1 << 24


def method_names(members: int) -> tuple[str, ...]:
    """Rows of a report: the teacher, the probe (an ensemble's averaged prediction) and, for an
    ensemble, each member on its own (``member-0``, ``member-1``, ...)."""
    return METHOD_NAMES + (tuple(f"member-{m}" for m in range(members)) if members > 1 else ())


def check_compatible(run: Any, store: Any, role: str) -> None:
    """A store must live in the run's embedding space: the same model, weights and (where both
    record it) image tower digest; an ID store must also share its classes. A store or run made
    before the digest was recorded is compared without it."""
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
    ours, theirs = run_model.get("image_tower_sha256"), store_model.get("image_tower_sha256")
    if ours and theirs and ours != theirs:
        raise StoreError(
            f"{role} store '{store.path}' was made by another {store_model['name']} network than run '{run.path}' "
            f"(image tower sha256 {theirs[:12]}... vs {ours[:12]}...): extract it with the run's weights (with "
            "--pretrained none, the same --seed)"
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


@dataclass
class MethodOutputs:
    """One method's outputs on a store's rows, in one class space.

    ``logits`` (M x N x K) are its components' own: the teacher's or one probe's (M = 1), or each
    member's of an ensemble; ``member_probs`` are their softmaxes and ``probs`` the method's
    prediction (an ensemble's: the mean of its members' probabilities). ``log_probabilities``
    marks logits that are the logarithms of probabilities (TransCLIP's assignments): their
    log-sum-exp is 0 for every image, so they have no energy score.
    """

    logits: np.ndarray
    member_probs: np.ndarray
    probs: np.ndarray
    log_probabilities: bool = False

    @classmethod
    def of(cls, logits: np.ndarray) -> MethodOutputs:
        """The outputs of components with these M x N x K logits (float64)."""
        member_probs = softmax(logits, np.float64)
        return cls(logits, member_probs, member_probs[0] if len(logits) == 1 else member_probs.mean(axis=0))

    @property
    def members(self) -> int:
        """How many components the method averages (more than one for an ensemble)."""
        return len(self.logits)


def ood_scores(outputs: MethodOutputs) -> dict[str, np.ndarray]:
    """Every in-distribution confidence score of a method's outputs (higher = more in-distribution).

    ``msp`` and ``entropy`` come from its probabilities; ``max_logit`` and ``energy`` from each
    component's own logits, averaged (an ensemble's averaged probabilities have no logits of their
    own: their log-sum-exp is 0); an ensemble adds ``mutual_information`` (negated). Outputs whose
    logits are log-probabilities have no ``energy`` (it would be 0 for every image, an AUROC of
    0.5 by construction): it is left out, as TransCLIP's clusters are, and shown as n/a.
    """
    scores = {
        "msp": metrics.max_softmax_probability(outputs.probs),
        "entropy": metrics.entropy_score(outputs.probs),
        "max_logit": np.mean([metrics.max_logit_score(logits) for logits in outputs.logits], axis=0),
    }
    if not outputs.log_probabilities:
        scores["energy"] = np.mean([metrics.energy_score(logits) for logits in outputs.logits], axis=0)
    if outputs.members > 1:
        scores["mutual_information"] = metrics.mutual_information_score(outputs.member_probs)
    return scores


def class_subset(store: Any) -> list[int] | None:
    """The classes an in-distribution store holds when it covers only part of the label space
    (``imagenet:`` folders such as ImageNet-A and -R), sorted, else None."""
    subset = store.manifest.get("dataset", {}).get("class_subset")
    if not subset:
        return None
    n = len(store.classnames)
    if (
        not isinstance(subset, list)
        or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < n for c in subset)
        or len(set(subset)) != len(subset)
    ):
        raise StoreError(
            f"store '{store.path}' has a damaged dataset.class_subset (it must list distinct class indices "
            f"in [0, {n})): extract it again"
        )
    return sorted(subset)


def outputs_in(run: Any, store: Any, classes: list[int] | None, transclip: bool = False) -> dict[str, MethodOutputs]:
    """Each method's outputs on a store's valid clean embeddings over the run's ``classes`` (None:
    all of them): the other classes' logits are dropped before any softmax, for the teacher and
    every member alike, so an ensemble averages its members' renormalised probabilities.

    ``transclip`` adds TransCLIP, transductive over the store's own rows: on the zero-shot head
    (``transclip``) and atop the probe's probabilities (``transclip-probe``). Its assignments are
    the method's probabilities; their logarithms stand for its logits (so max-logit is the log of
    the largest assignment, and it has no energy score: ``ood_scores``)."""
    head = run.head if classes is None else run.head[classes]
    teacher, members = logits_in(run, store, head, classes)
    probe = MethodOutputs.of(members)
    outputs = {"teacher": MethodOutputs.of(teacher), "probe": probe}
    if run.members > 1:
        for m in range(run.members):
            outputs[f"member-{m}"] = MethodOutputs(probe.logits[m : m + 1], probe.member_probs[m : m + 1],
                                                   probe.member_probs[m])
    if transclip:
        from .errors import InputError
        from .progress import Progress
        from .store import store_name
        from .transclip import OUTER_ITERATIONS, PROGRESS_FROM, check_size
        from .transclip import transclip as solve

        emb = store.read("clean/emb")[store.valid_mask()]  # TransCLIP's graph spans the whole set
        try:
            check_size(len(emb), f"the valid images of store '{store.path}' (for --transclip)")
        except InputError as exc:  # the store is too small: its error (exit 5)
            raise StoreError(exc.message) from None
        for name, initial in zip(TRANSCLIP_METHODS, (None, probe.probs)):
            rounds = Progress(OUTER_ITERATIONS + 1, f"{name} {store_name(store.path)}", "rounds",
                              enabled=len(emb) * len(head) >= PROGRESS_FROM)
            start = {"teacher": run.teacher_scale} if initial is None else {"initial": initial}
            z = solve(emb, head, **start, progress=rounds).z
            rounds.close()
            log_z = np.log(np.clip(z, np.finfo(np.float64).tiny, None))[None]
            outputs[name] = MethodOutputs(log_z, z[None], z, log_probabilities=True)
    return outputs


def logits_in(run: Any, store: Any, head: np.ndarray, classes: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's (1 x N x K, with ``head``) and every member's (M x N x K, over ``classes``)
    logits on a store's N valid clean embeddings, as float64, the embeddings read a shard at a time.

    Each block of rows spans at least ``BLOCK_MULTIPLY_ADDS`` (all the rows when fewer): BLAS takes
    the kernel it would for one product over the whole set, whose rows do not depend on the others,
    so the logits equal, to the last bit, those of the whole set read at once.
    """
    total = int(np.count_nonzero(store.valid_mask()))
    teacher = np.empty((1, total, len(head)))
    members = np.empty((run.members, total, len(head)))
    least = -(-BLOCK_MULTIPLY_ADDS // (store.layout.dim * max(1, len(head))))
    done = 0
    for emb in blocks(store.valid_rows("clean/emb"), total, least):
        teacher[0, done : done + len(emb)] = run.teacher_scale.logits(emb, head)
        members[:, done : done + len(emb)] = run.member_logits(emb, classes)
        done += len(emb)
    return teacher, members


def blocks(parts: Iterable[np.ndarray], total: int, least: int) -> Iterator[np.ndarray]:
    """Consecutive ``parts`` (``total`` rows in all) joined into blocks of at least ``least`` rows,
    or into one block when there are fewer."""
    pending: list[np.ndarray] = []
    held = 0
    for part in parts:
        pending.append(part)
        held += len(part)
        total -= len(part)
        if held >= least and (total >= least or total == 0):
            yield np.concatenate(pending)
            pending, held = [], 0
    if pending:
        yield np.concatenate(pending)


def labels_in(store: Any, classes: list[int] | None) -> np.ndarray:
    """The labels of a store's valid rows as positions in ``classes`` (None: unchanged; -1 stays
    unknown); a label outside ``classes`` is a StoreError naming the store."""
    labels = store.labels()[store.valid_mask()].astype(np.int64)
    if classes is None:
        return labels
    names = store.classnames
    position = np.full(len(names), -1, np.int64)
    position[classes] = np.arange(len(classes))
    in_range = (labels >= 0) & (labels < len(names))
    mapped = np.where(in_range, position[np.where(in_range, labels, 0)], -1)
    outside = (labels >= 0) & (mapped < 0)
    if outside.any():
        first = int(labels[outside][0])
        name = f" '{names[first]}'" if first < len(names) else ""
        raise StoreError(
            f"store '{store.path}' has {int(outside.sum())} labels outside its class subset (e.g. {first}{name}; "
            f"its dataset.class_subset lists {len(classes)} classes): its labels and manifest disagree, "
            "extract it again"
        )
    return mapped


def detection(id_conf: np.ndarray, ood_conf: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR and FPR at 95% TPR of one score (OOD positive)."""
    return {
        "auroc": metrics.auroc(id_conf, ood_conf),
        "aupr": metrics.aupr(id_conf, ood_conf),
        "fpr95": metrics.fpr_at_95_tpr(id_conf, ood_conf),
    }


@dataclass
class StoreOutputs:
    """One store's outputs, computed once and shared by the report JSON and its figures: each
    method's ``MethodOutputs`` on the valid rows, their ``labels`` (positions in ``classes``; -1
    unknown), the class space (``classes``: a subset, or None for all the run's classes) and each
    method's OOD scores (``ood_scores``, mutual information included for an ensemble)."""

    path: str
    outputs: dict[str, MethodOutputs]
    labels: np.ndarray
    classes: list[int] | None
    scores: dict[str, dict[str, np.ndarray]]

    @classmethod
    def of(cls, run: Any, store: Any, classes: list[int] | None, labelled: bool,
           transclip: bool = False) -> StoreOutputs:
        """Score a store over ``classes``; ``labelled`` maps its labels into that class space."""
        outputs = outputs_in(run, store, classes, transclip)
        labels = labels_in(store, classes) if labelled else np.full(outputs["probe"].probs.shape[0], -1)
        return cls(str(store.path), outputs, labels, classes, {m: ood_scores(o) for m, o in outputs.items()})

    def probs(self, method: str) -> np.ndarray:
        """A method's probabilities on the store's valid rows."""
        return self.outputs[method].probs


@dataclass
class Evaluation:
    """What ``evaluate`` computed: the report (JSON-ready) and the outputs behind it, per
    in-distribution store and per OOD store (the first store is the OOD reference)."""

    report: dict[str, Any]
    stores: dict[str, StoreOutputs]
    ood: dict[str, StoreOutputs]


def evaluate(run_path: str, stores: list[str], ood: list[str] | None = None,
             transclip: bool = False) -> dict[str, Any]:
    """Evaluate a run on in-distribution stores and OOD stores; return the report as a dict."""
    return score(run_path, stores, ood, transclip).report


def score(run_path: str, stores: list[str], ood: list[str] | None = None, transclip: bool = False) -> Evaluation:
    """Score a run on in-distribution stores and OOD stores, each store read and scored once.

    OOD stores are scored in the class space of the reference (the first in-distribution store):
    its class subset when it has one, else all the run's classes; an OOD store's own subset is
    not used, since a detector may not know which classes an OOD sample's set holds.
    """
    from .runs import load_run
    from .store import FeatureStore, expand_stores

    stores, ood = expand_stores(stores), expand_stores(ood or [])
    if not stores:
        raise StoreError("evaluate needs at least one --store (the in-distribution test set)")
    run = load_run(run_path)
    methods = method_names(run.members) + (TRANSCLIP_METHODS if transclip else ())
    scored = Evaluation(report_header(run_path, run, methods, transclip), {}, {})
    for path in stores:
        store = FeatureStore(path)
        check_compatible(run, store, "in-distribution")
        result = scored.stores[path] = StoreOutputs.of(run, store, class_subset(store), labelled=True,
                                                       transclip=transclip)
        scored.report["stores"][path] = {**store_entry(result, methods), "shift": shift_of(store.manifest)}
    reference = scored.stores[stores[0]]
    for path in ood:
        store = FeatureStore(path)
        check_compatible(run, store, "OOD")
        result = scored.ood[path] = StoreOutputs.of(run, store, reference.classes, labelled=False,
                                                    transclip=transclip)
        scored.report["ood"][path] = ood_entry(result, reference, stores[0], methods)
    scored.report["corruptions"] = aggregate_corruptions(scored.report["stores"])
    return scored


def report_header(run_path: str, run: Any, methods: tuple[str, ...], transclip: bool) -> dict[str, Any]:
    """A report before any store is scored: the run, its methods, how the metrics are taken, and
    empty ``stores`` and ``ood`` sections."""
    return {
        "run": str(Path(run_path)),
        "method": run.info["config"]["method"],
        "ensemble": run.members,
        "methods": list(methods),
        "metrics": {"ece_bins": 15, "ood_score": "max softmax probability (others under 'scores')",
                    "ood_positive": True, "ood_classes": "the reference store's (its class subset, else all)",
                    **({"transclip": "transductive over each store's own valid rows, OOD stores included (each "
                                     "on its own): zero-shot and atop the probe; no energy score (n/a: its "
                                     "logits are log-assignments, whose log-sum-exp is 0 for every image)"}
                       if transclip else {})},
        "stores": {},
        "ood": {},
    }


def store_entry(result: StoreOutputs, methods: tuple[str, ...]) -> dict[str, Any]:
    """An in-distribution store's report entry: its samples, its class count (a subset's) and each
    method's classification metrics on its labelled rows (only the mean confidence without labels)."""
    entry: dict[str, Any] = {"samples": int(result.labels.size)}
    if result.classes is not None:
        entry["classes"] = len(result.classes)
    known = result.labels >= 0
    for method in methods:
        probs = result.probs(method)
        if known.any():
            entry[method] = classification_metrics(probs[known], result.labels[known])
        else:
            entry[method] = {"confidence": float(metrics.max_softmax_probability(probs).mean())}
    return entry


def ood_entry(result: StoreOutputs, reference: StoreOutputs, reference_path: str,
              methods: tuple[str, ...]) -> dict[str, Any]:
    """An OOD store's report entry: each method's detection of it against the reference store, by
    every OOD score (the maximum softmax probability's also at the top), and its mean confidence."""
    entry: dict[str, Any] = {"samples": int(result.labels.size), "reference": reference_path}
    if reference.classes is not None:
        entry["classes"] = len(reference.classes)
    for method in methods:
        per_score = {name: detection(reference.scores[method][name], values)
                     for name, values in result.scores[method].items()}
        entry[method] = {**per_score["msp"], "confidence": float(result.scores[method]["msp"].mean()),
                         "scores": per_score}
    if result.outputs["probe"].members > 1:  # the ensemble's mutual information, also under its earlier names
        entry["probe"]["auroc_mutual_information"] = entry["probe"]["scores"]["mutual_information"]["auroc"]
        entry["probe"]["fpr95_mutual_information"] = entry["probe"]["scores"]["mutual_information"]["fpr95"]
    return entry


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
    """Error and ECE per corruption and severity, their means over the five severities per
    corruption, and the mean corruption error over all corruptions (an unnormalised mCE), for each
    method.

    Means are given only over all five severities: a corruption short of some is left out of
    ``mean_error`` and ``mean_ece`` and listed under ``missing`` (corruption: severities), and
    ``mce`` is then None.
    """
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
        missing = {name: [s for s in SEVERITIES if s not in cells] for name, cells in sorted(corruptions.items())}
        missing = {name: severities for name, severities in missing.items() if severities}
        complete = {name: cells for name, cells in corruptions.items() if name not in missing}
        means = {name: float(np.mean([cells[s][0] for s in SEVERITIES])) for name, cells in complete.items()}
        out[method] = {
            "error": {name: {str(k): v[0] for k, v in sorted(cells.items())} for name, cells in corruptions.items()},
            "ece": {name: {str(k): v[1] for k, v in sorted(cells.items())} for name, cells in corruptions.items()},
            "mean_error": means,
            "mean_ece": {name: float(np.mean([cells[s][1] for s in SEVERITIES])) for name, cells in complete.items()},
            "mce": None if missing else float(np.mean(list(means.values()))),
            "missing": missing,
        }
    return out


def missing_severities(corruptions: dict[str, Any]) -> str:
    """The severities a report's corruptions lack, as text (``fog 3, 5; snow 1``), or ''."""
    missing = next(iter(corruptions.values()), {}).get("missing", {})
    return "; ".join(f"{name} {', '.join(str(s) for s in severities)}" for name, severities in missing.items())


def format_table(report: dict[str, Any]) -> str:
    """A readable table: one row per (store, method)."""
    lines = [f"{'set':<28} {'method':<15} {'acc':>7} {'nll':>7} {'brier':>7} {'ece':>7} {'auroc':>7} {'fpr95':>7}"]
    lines.append("-" * len(lines[0]))

    def cell(values: dict[str, float], key: str) -> str:
        return f"{values[key]:7.4f}" if key in values else f"{'-':>7}"

    for group in ("stores", "ood"):
        for path, entry in report[group].items():
            name = Path(path).name + (" (OOD)" if group == "ood" else "")
            for method in report.get("methods", METHOD_NAMES):
                values = entry[method]
                keys = ("accuracy", "nll", "brier", "ece", "auroc", "fpr95")
                lines.append(f"{name[:28]:<28} {method:<15} " + " ".join(cell(values, k) for k in keys))
    missing = missing_severities(report.get("corruptions", {}))
    if missing:
        lines.append(f"no mean corruption error: severities missing ({missing})")
    return "\n".join(lines)
