"""Do the views keep the class? The figures of ``analyze views``, from a store or plain arrays.

LP-CLIP's student learns the teacher's answer on a weak view from a strong view of the same
image: that is sound only where the views keep the image's class, as FixMatch's views do on
photos. ``view_figures`` measures it for each view kind:

- label-free: how often the teacher's pseudo-label on a view equals its label on the clean
  image, the mean cosine between clean and view embeddings, the teacher's mean confidence;
- with labels: the teacher's accuracy on the views; label preservation (a logistic-regression
  probe fitted on the clean embeddings of one half of the images, scored on the other half's
  clean and view embeddings, as view/clean accuracy); and the ceiling of consistency training
  (a true-label probe fitted on that view kind of the first half, scored on the second half's
  clean images).

The world's regime (``world/regime.py``) reuses ``view_figures`` on views it makes itself.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np

from .errors import InputError
from .probe import PROBE_L2, ProbeConvergenceWarning, linear_probe

log = logging.getLogger(__name__)
SHOW_FITS_FROM = 100_000  # embeddings: the demo fits 8,000 in 0.2 s on 2 cores, so from here a fit takes seconds

MAX_IMAGES = 10000  # images analysed at most (a seeded sample): enough for every figure's precision
PROBE_MIN_IMAGES = 4  # labelled images the probe figures need at least: two to fit, two to score


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The labelled rows split at random into two halves (probe fit, probe score)."""
    rows = np.flatnonzero(labels >= 0)
    rows = np.random.default_rng(seed).permutation(rows)
    return np.sort(rows[: len(rows) // 2]), np.sort(rows[len(rows) // 2 :])


def probe_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, str | None]:
    """The probe's fitting and scoring halves of the labelled rows (``halves``), and why the probe
    figures are undefined on them (None where they are defined): fewer than ``PROBE_MIN_IMAGES``
    labelled rows, one class only, or a fitting half that holds one class (a random split of few
    images can)."""
    empty = np.zeros(0, np.int64)
    known = labels >= 0
    count, kinds = int(known.sum()), int(np.unique(labels[known]).size)
    if count < PROBE_MIN_IMAGES or kinds < 2:
        return empty, empty, (f"the probe figures need at least {PROBE_MIN_IMAGES} labelled images of 2 or more "
                              f"classes (half to fit, half to score); there are {count} of {kinds} class(es)")
    fit, score = halves(labels, seed)
    if np.unique(labels[fit]).size < 2:
        return fit, score, (f"the probe's fitting half (seed {seed}: {fit.size} of the {count} labelled images) holds "
                            "one class, so no probe tells classes apart: run again with another --seed, or label "
                            "more images")
    return fit, score, None


def fitted_probe(unconverged: list[str], name: str, train: np.ndarray, labels: np.ndarray, test: np.ndarray,
                 classes: int) -> np.ndarray:
    """``linear_probe``, with ``name`` added to ``unconverged`` when its L-BFGS stopped unconverged
    (a fit of ``SHOW_FITS_FROM`` embeddings or more, seconds long, logs a line as it starts and as it ends)."""
    shown = len(train) >= SHOW_FITS_FROM
    if shown:
        log.info(f"[views] probe {name}: fitting on {len(train):,} embeddings, scoring {len(test):,}")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProbeConvergenceWarning)
        predicted = linear_probe(train, labels, test, classes)
    if shown:
        log.info(f"[views] probe {name}: done in {time.perf_counter() - start:.1f}s")
    for caught_warning in caught:  # any other warning goes on as it came
        if issubclass(caught_warning.category, ProbeConvergenceWarning):
            unconverged.append(name)
        else:
            warnings.warn_explicit(caught_warning.message, caught_warning.category, caught_warning.filename,
                                   caught_warning.lineno)
    return predicted


def ratio(view: float, clean: float) -> dict[str, Any]:
    """``view / clean`` as ``ratio``, or None with the reason beside where the clean probe is never right."""
    if clean > 0:
        return {"ratio": view / clean}
    return {"ratio": None, "undefined": "the clean probe is right on no scored image: a ratio to its accuracy "
                                        "is undefined"}


def view_figures(clean: np.ndarray, views: dict[str, np.ndarray], head: np.ndarray, scale: float,
                 temperature: float = 1.0, labels: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
    """The figures of each view kind (``views[kind]`` is N x K x D beside the N x D ``clean``
    embeddings); with ``labels`` (-1 where unknown), the labelled figures on the labelled rows: the
    teacher's accuracy wherever a row is labelled, and the probe figures where ``probe_halves``
    allows them (else ``probe.undefined`` says why). The probes whose L-BFGS stopped unconverged
    are listed in ``probe.unconverged``."""
    from .numeric import softmax
    from .zeroshot import teacher_logits

    clean = _unit(clean)
    n, classes = len(clean), len(head)
    clean_probs = softmax(teacher_logits(clean, head, scale, temperature))
    clean_label = clean_probs.argmax(1)
    report: dict[str, Any] = {"images": n, "classes": classes,
                              "clean": {"confidence": float(clean_probs.max(1).mean())}, "views": {}}
    known = np.zeros(n, bool) if labels is None else labels >= 0
    views = {kind: _unit(emb) for kind, emb in views.items()}
    for kind, emb in views.items():
        if emb.ndim != 3 or emb.shape[0] != n or emb.shape[1] < 1:
            raise InputError(f"views '{kind}' must be N x K x D with N = {n} and K >= 1, got {emb.shape}")
    probed = False
    if known.any():
        report["labelled_images"] = int(known.sum())
        report["clean"]["teacher_accuracy"] = float(np.mean(clean_label[known] == labels[known]))
        fit, score, undefined = probe_halves(labels, seed)
        report["probe"] = {"l2": PROBE_L2, "fit_images": int(fit.size), "score_images": int(score.size), "seed": seed}
        if undefined:
            report["probe"]["undefined"] = undefined
        else:
            probed, unconverged = True, []
            # one probe on the fitting half's clean embeddings, scored on the other half's clean and view embeddings
            tests = [clean[score], *(emb[score].reshape(-1, emb.shape[-1]) for emb in views.values())]
            predicted = np.split(fitted_probe(unconverged, "clean", clean[fit], labels[fit], np.concatenate(tests),
                                              classes), np.cumsum([len(t) for t in tests])[:-1])
            clean_probe = float(np.mean(predicted[0] == labels[score]))
            report["clean"]["probe_accuracy"] = clean_probe
            report["probe"]["unconverged"] = unconverged
    for index, (kind, emb) in enumerate(views.items()):
        k = emb.shape[1]
        probs = softmax(teacher_logits(emb, head, scale, temperature))
        label = probs.argmax(-1)
        entry = {
            "views": int(k),
            "pseudo_label_agreement": float(np.mean(label == clean_label[:, None])),
            "cosine_to_clean": float(np.mean(np.einsum("nkd,nd->nk", emb, clean))),
            "confidence": float(probs.max(-1).mean()),
        }
        if known.any():
            entry["teacher_accuracy"] = float(np.mean(label[known] == labels[known, None]))
        if probed:
            view_probe = float(np.mean(predicted[index + 1] == np.repeat(labels[score], k)))
            ceiling = fitted_probe(unconverged, f"ceiling on {kind} views", emb[fit].reshape(-1, emb.shape[-1]),
                                   np.repeat(labels[fit], k), clean[score], classes)
            ceiling_accuracy = float(np.mean(ceiling == labels[score]))
            entry["label_preservation"] = {"clean_accuracy": clean_probe, "view_accuracy": view_probe,
                                           **ratio(view_probe, clean_probe)}
            entry["ceiling"] = {"clean_accuracy": ceiling_accuracy, **ratio(ceiling_accuracy, clean_probe)}
        report["views"][kind] = entry
    return report


def analyze_views(store: str, out: str | None = None, seed: int = 0, max_images: int = MAX_IMAGES,
                  overwrite: bool = False) -> dict[str, Any]:
    """``lpclip-cache analyze views``: the figures of each view kind a store holds (its valid rows,
    at most ``max_images`` of them, a sample drawn with ``seed``). Writes ``out`` when given."""
    from .outputs import check_output, is_report, write_report
    from .store import FeatureStore

    store = str(store)
    if max_images < 4:
        raise InputError(f"--max-images must be at least 4, got {max_images}")
    if out:
        check_output(str(out), [store], overwrite, is_report, "report")
    feature_store = FeatureStore(store)
    kinds = [kind for kind in ("weak", "strong") if feature_store.layout.views(kind) > 0]
    if not kinds:
        raise InputError(f"store {store} holds no weak or strong views (extracted with --weak-views 0 "
                         "--strong-views 0): extract the adaptation split with views to analyse them")
    rows = np.flatnonzero(feature_store.read("valid"))
    if rows.size > max_images:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_images, replace=False))
    if rows.size < 2:
        raise InputError(f"store {store} has {rows.size} valid image(s): the view figures need at least 2")
    labels = feature_store.labels()[rows].astype(np.int64)
    report = view_figures(feature_store.read("clean/emb")[rows],
                          {kind: feature_store.read(f"{kind}/emb")[rows] for kind in kinds},
                          feature_store.head(), feature_store.logit_scale, feature_store.temperature,
                          labels if (labels >= 0).any() else None, seed)
    report = {"store": store, "valid_images": int(feature_store.read("valid").sum()), "seed": seed, **report}
    if out:
        write_report(report, out, overwrite)
    return report


def format_views(report: dict[str, Any]) -> str:
    """A short text summary: one row per view kind, the clean view first (n/a for an undefined figure),
    then notes saying why and any probe that stopped unconverged."""
    clean = report["clean"]
    labelled, probed = "teacher_accuracy" in clean, "probe_accuracy" in clean

    def number(value: float | None, width: int) -> str:
        return f"{'n/a':>{width}}" if value is None else f"{value:{width}.3f}"

    header = f"{'view':<7} {'K':>2} {'agree':>6} {'cosine':>7} {'conf':>6}"
    header += f" {'teacher':>8} {'keeps':>6} {'ceiling':>8}" if labelled else ""
    lines = [header, "-" * len(header),
             f"{'clean':<7} {'':>2} {1.0:6.3f} {1.0:7.3f} {clean['confidence']:6.3f}"
             + (f" {clean['teacher_accuracy']:8.3f} {number(1.0 if probed else None, 6)} "
                f"{number(clean.get('probe_accuracy'), 8)}" if labelled else "")]
    undefined = []
    for kind, v in report["views"].items():
        line = f"{kind:<7} {v['views']:>2} {v['pseudo_label_agreement']:6.3f} {v['cosine_to_clean']:7.3f} " \
               f"{v['confidence']:6.3f}"
        if labelled:
            keeps = v.get("label_preservation", {})
            line += f" {v['teacher_accuracy']:8.3f} {number(keeps.get('ratio'), 6)} " \
                    f"{number(v.get('ceiling', {}).get('clean_accuracy'), 8)}"
            undefined += [f"{kind} keeps n/a: {keeps['undefined']}"] if "undefined" in keeps else []
        lines.append(line)
    notes = ["agree: teacher's pseudo-label on the view = on the clean image; conf: teacher's mean confidence"]
    if probed:
        notes.append("keeps: probe accuracy on the views / on clean images (probe fitted on clean embeddings of "
                     "half the images); ceiling: clean accuracy of a true-label probe fitted on these views")
        notes += undefined
        if report["probe"]["unconverged"]:
            notes.append(f"warning: L-BFGS stopped unconverged for the probe(s): "
                         f"{', '.join(report['probe']['unconverged'])}")
    elif labelled:
        notes.append(f"keeps, ceiling n/a: {report['probe']['undefined']}")
    else:
        notes.append("(no labels in this store: the teacher's accuracy and label preservation need them)")
    return "\n".join(lines + notes)
