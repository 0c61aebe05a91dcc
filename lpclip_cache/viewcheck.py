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

from typing import Any

import numpy as np

from .errors import InputError

PROBE_L2 = 1e-4  # the probe's L2 penalty on the weights (the regime's supervised probe uses the same)
MAX_IMAGES = 10000  # images analysed at most (a seeded sample): enough for every figure's precision


def linear_probe(train: np.ndarray, labels: np.ndarray, test: np.ndarray, classes: int,
                 l2: float = PROBE_L2) -> np.ndarray:
    """Predictions on ``test`` of a multinomial logistic regression fitted on ``train`` (L-BFGS,
    mean cross-entropy plus ``l2`` times the squared weights; the bias is not penalised): the
    supervised probe protocol of the CLIP paper, on frozen embeddings."""
    import torch

    x = torch.from_numpy(np.asarray(train, np.float64))
    y = torch.from_numpy(np.asarray(labels, np.int64))
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=500, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * (weight**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (torch.from_numpy(np.asarray(test, np.float64)) @ weight + bias).argmax(1).numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The labelled rows split at random into two halves (probe fit, probe score)."""
    rows = np.flatnonzero(labels >= 0)
    rows = np.random.default_rng(seed).permutation(rows)
    return np.sort(rows[: len(rows) // 2]), np.sort(rows[len(rows) // 2 :])


def view_figures(clean: np.ndarray, views: dict[str, np.ndarray], head: np.ndarray, scale: float,
                 temperature: float = 1.0, labels: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
    """The figures of each view kind (``views[kind]`` is N x K x D beside the N x D ``clean``
    embeddings); with ``labels`` (-1 where unknown), the labelled figures on the labelled rows."""
    from .zeroshot import softmax, teacher_logits

    clean = _unit(clean)
    n, classes = len(clean), len(head)
    clean_probs = softmax(teacher_logits(clean, head, scale, temperature))
    clean_label = clean_probs.argmax(1)
    report: dict[str, Any] = {"images": n, "classes": classes,
                              "clean": {"confidence": float(clean_probs.max(1).mean())}, "views": {}}
    labelled = labels is not None and int((labels >= 0).sum()) >= 4 and np.unique(labels[labels >= 0]).size >= 2
    if labelled:
        fit, score = halves(labels, seed)
        clean_pred = linear_probe(clean[fit], labels[fit], clean[score], classes)
        clean_probe = float(np.mean(clean_pred == labels[score]))
        known = labels >= 0
        report["clean"]["teacher_accuracy"] = float(np.mean(clean_label[known] == labels[known]))
        report["clean"]["probe_accuracy"] = clean_probe
        report["probe"] = {"l2": PROBE_L2, "fit_images": int(fit.size), "score_images": int(score.size),
                           "seed": seed}
    for kind, emb in views.items():
        emb = _unit(emb)
        if emb.ndim != 3 or emb.shape[0] != n or emb.shape[1] < 1:
            raise InputError(f"views '{kind}' must be N x K x D with N = {n} and K >= 1, got {emb.shape}")
        k = emb.shape[1]
        probs = softmax(teacher_logits(emb, head, scale, temperature))
        label = probs.argmax(-1)
        entry = {
            "views": int(k),
            "pseudo_label_agreement": float(np.mean(label == clean_label[:, None])),
            "cosine_to_clean": float(np.mean(np.einsum("nkd,nd->nk", emb, clean))),
            "confidence": float(probs.max(-1).mean()),
        }
        if labelled:
            known = labels >= 0
            entry["teacher_accuracy"] = float(np.mean(label[known] == labels[known, None]))
            view_pred = linear_probe(clean[fit], labels[fit], emb[score].reshape(-1, emb.shape[-1]), classes)
            view_probe = float(np.mean(view_pred == np.repeat(labels[score], k)))
            ceiling = linear_probe(emb[fit].reshape(-1, emb.shape[-1]), np.repeat(labels[fit], k), clean[score],
                                   classes)
            ceiling_accuracy = float(np.mean(ceiling == labels[score]))
            entry["label_preservation"] = {"clean_accuracy": clean_probe, "view_accuracy": view_probe,
                                           "ratio": view_probe / clean_probe if clean_probe > 0 else float("nan")}
            entry["ceiling"] = {"clean_accuracy": ceiling_accuracy,
                                "ratio": ceiling_accuracy / clean_probe if clean_probe > 0 else float("nan")}
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
    """A short text summary: one row per view kind, the clean view first."""
    labelled = "probe" in report
    header = f"{'view':<7} {'K':>2} {'agree':>6} {'cosine':>7} {'conf':>6}"
    header += f" {'teacher':>8} {'keeps':>6} {'ceiling':>8}" if labelled else ""
    clean = report["clean"]
    lines = [header, "-" * len(header),
             f"{'clean':<7} {'':>2} {1.0:6.3f} {1.0:7.3f} {clean['confidence']:6.3f}"
             + (f" {clean['teacher_accuracy']:8.3f} {1.0:6.3f} {clean['probe_accuracy']:8.3f}" if labelled else "")]
    for kind, v in report["views"].items():
        line = f"{kind:<7} {v['views']:>2} {v['pseudo_label_agreement']:6.3f} {v['cosine_to_clean']:7.3f} " \
               f"{v['confidence']:6.3f}"
        if labelled:
            line += f" {v['teacher_accuracy']:8.3f} {v['label_preservation']['ratio']:6.3f} " \
                    f"{v['ceiling']['clean_accuracy']:8.3f}"
        lines.append(line)
    notes = ["agree: teacher's pseudo-label on the view = on the clean image; conf: teacher's mean confidence"]
    if labelled:
        notes.append("keeps: probe accuracy on the views / on clean images (probe fitted on clean embeddings of "
                     "half the images); ceiling: clean accuracy of a true-label probe fitted on these views")
    else:
        notes.append("(no labels in this store: label preservation needs them)")
    return "\n".join(lines + notes)
