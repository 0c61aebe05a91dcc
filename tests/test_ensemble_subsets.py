"""Ensemble OOD scores and class subsets, each checked against a hand computation from the probe
weights (numpy/scipy) and sklearn's roc_auc_score: energy and max-logit averaged over the members'
own logits, every row of a class-subset store on the same subset-renormalised probabilities, the
OOD reference in the OOD stores' class space, labels outside a subset refused, and mCE only over
all five severities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import clustered_embeddings, unit, write_store
from scipy.special import logsumexp, softmax
from scipy.stats import entropy
from sklearn.metrics import roc_auc_score

from lpclip_cache.cli import main
from lpclip_cache.evaluation import evaluate, ood_scores, outputs_in
from lpclip_cache.runs import load_run, save_run
from lpclip_cache.store import FeatureStore, cache_key

CLASSES, HALF = 6, 12  # separable world: in-distribution in the first HALF dims, OOD in the rest
SUBSET = [1, 3, 4]
SCORES = ("msp", "entropy", "max_logit", "energy", "mutual_information")


def edit_manifest(path: Path, **fields) -> Path:
    """Replace top-level manifest fields of a store (and its cache key), as extract would have written them."""
    root = zarr.open_group(str(path), mode="r+")
    meta = dict(root.attrs["lpclip_cache"])
    manifest = {**meta["manifest"], **fields}
    meta["manifest"], meta["cache_key"] = manifest, cache_key(manifest)
    root.attrs["lpclip_cache"] = meta
    return path


def with_subset(path: Path, subset: list[int]) -> Path:
    """Mark a store as holding only ``subset`` of its classes (as an ImageNet-A folder is marked)."""
    dataset = FeatureStore(path).manifest["dataset"]
    return edit_manifest(path, dataset={**dataset, "class_subset": subset})


def stored(emb: np.ndarray) -> np.ndarray:
    """Embeddings as a store holds them (fp16), in float64."""
    return emb.astype(np.float16).astype(np.float64)


def member_logits(emb: np.ndarray, weight: np.ndarray, bias: np.ndarray, classes=None) -> np.ndarray:
    """M x N x K logits z W_m^T + b_m by hand in float64, over ``classes`` only when given."""
    w, b = weight.astype(np.float64), bias.astype(np.float64)
    logits = np.stack([stored(emb) @ w[m].T + b[m] for m in range(len(w))])
    return logits if classes is None else logits[..., classes]


def hand_scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    """Every OOD score of an ensemble from its members' logits (higher = in-distribution)."""
    member = softmax(logits, axis=-1)
    mean = member.mean(axis=0)
    return {
        "msp": mean.max(axis=1),
        "entropy": -entropy(mean, axis=1),
        "max_logit": logits.max(axis=-1).mean(axis=0),
        "energy": logsumexp(logits, axis=-1).mean(axis=0),
        "mutual_information": entropy(member, axis=-1).mean(axis=0) - entropy(mean, axis=1),
    }


def sklearn_auroc(id_score: np.ndarray, ood_score: np.ndarray) -> float:
    """AUROC with OOD as the positive class and minus the in-distribution score as the detector."""
    truth = np.r_[np.zeros(len(id_score)), np.ones(len(ood_score))]
    return float(roc_auc_score(truth, -np.r_[id_score, ood_score]))


@pytest.fixture(scope="module")
def separable(tmp_path_factory):
    """A hand-written 3-member run and stores where OOD is separable: in-distribution embeddings lie in
    the first 12 dims, where the members nearly agree; OOD ones in the last 12, where each member has
    its own random weights. Member biases differ, so members put different mass outside a subset."""
    base = tmp_path_factory.mktemp("separable")
    rng = np.random.default_rng(5)
    centres, labels, clean, _ = clustered_embeddings(300, CLASSES, HALF, spread=0.1, seed=0)
    pad = np.zeros((len(clean), HALF))
    id_emb = np.concatenate([clean, pad], axis=1)
    ood_emb = np.concatenate([np.zeros((200, HALF)), unit(rng.normal(size=(200, HALF)))], axis=1)
    head = np.concatenate([centres, np.zeros((CLASSES, HALF))], axis=1)
    weight = np.stack([20.0 * np.concatenate([centres + 0.05 * rng.normal(size=centres.shape),
                                              unit(rng.normal(size=(CLASSES, HALF)))], axis=1)
                       for _ in range(3)]).astype(np.float32)
    bias = rng.normal(0.0, 2.0, size=(3, CLASSES)).astype(np.float32)
    test = write_store(base / "test.zarr", id_emb, head, labels, scale=30)
    in_subset = np.isin(labels, SUBSET)
    subset = with_subset(write_store(base / "subset.zarr", id_emb[in_subset], head, labels[in_subset], scale=30),
                         SUBSET)
    ood = write_store(base / "ood.zarr", ood_emb, head, np.full(200, -1), scale=30)
    store = FeatureStore(test)
    info = {"config": {"method": "lpclip"}, "model": store.manifest["model"], "classnames": store.classnames,
            "teacher": {"logit_scale": 30.0, "temperature": 1.0}, "ensemble": 3}
    save_run(base / "run", weight, bias, head, info)  # as train writes a run
    return {"base": base, "run": base / "run", "test": test, "subset": subset, "ood": ood, "weight": weight,
            "bias": bias, "head": head, "id_emb": id_emb, "labels": labels, "in_subset": in_subset,
            "ood_emb": ood_emb}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-member ensemble trained by ``train`` (random init, so the members differ), an in-distribution
    test store, the same with a class subset, and an OOD store of random directions."""
    from lpclip_cache.training import TrainConfig, train

    base = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(3)
    centres, labels, clean, views = clustered_embeddings(600, CLASSES, 16, spread=0.25, seed=0, views=4)
    teacher = unit(centres + 0.1 * rng.normal(size=centres.shape))
    write_store(base / "train.zarr", clean, teacher, labels, views[:, :2], views[:, 2:], scale=30)
    train(TrainConfig(store=str(base / "train.zarr"), out=str(base / "run"), ensemble=3, init="random", lr=1e-2,
                      epochs=2, progress=False))
    _, test_labels, test_emb, _ = clustered_embeddings(300, CLASSES, 16, spread=0.25, seed=1, centres=centres)
    in_subset = np.isin(test_labels, SUBSET)
    ood_emb = unit(rng.normal(size=(200, 16)))
    return {
        "base": base, "run": base / "run", "teacher": teacher, "centres": centres,
        "test": write_store(base / "test.zarr", test_emb, teacher, test_labels, scale=30),
        "subset": with_subset(write_store(base / "subset.zarr", test_emb[in_subset], teacher,
                                          test_labels[in_subset], scale=30), SUBSET),
        "ood": write_store(base / "ood.zarr", ood_emb, teacher, np.full(200, -1), scale=30),
        "test_emb": test_emb, "test_labels": test_labels, "in_subset": in_subset, "ood_emb": ood_emb,
    }


def test_every_ensemble_score_detects_separable_ood(separable):
    """Issue 13.4: with OOD separable, each of the five scores of a 3-member ensemble reaches AUROC 0.9,
    as evaluate reports it and as sklearn computes it from member logits recomputed by hand."""
    w = separable
    report = evaluate(str(w["run"]), [str(w["test"])], [str(w["ood"])])
    reported = report["ood"][str(w["ood"])]["probe"]
    assert set(reported["scores"]) == set(SCORES)
    id_scores = hand_scores(member_logits(w["id_emb"], w["weight"], w["bias"]))
    ood = hand_scores(member_logits(w["ood_emb"], w["weight"], w["bias"]))
    for name in SCORES:
        expected = sklearn_auroc(id_scores[name], ood[name])
        assert expected >= 0.9, name
        assert reported["scores"][name]["auroc"] == pytest.approx(expected, abs=1e-3), name
    # the earlier names of the mutual-information figures stay, with the same values
    assert reported["auroc_mutual_information"] == reported["scores"]["mutual_information"]["auroc"]
    assert reported["fpr95_mutual_information"] == reported["scores"]["mutual_information"]["fpr95"]


def test_ensemble_energy_and_max_logit_are_the_members_own_averaged(trained):
    """Issue 13.4: a trained ensemble's energy and max-logit equal the mean over members of each
    member's logsumexp and largest logit by hand; MSP and entropy are those of the mean probability."""
    t = trained
    run = load_run(t["run"])
    assert run.members == 3
    logits = member_logits(t["test_emb"], run.weight, run.bias)
    scores = ood_scores(outputs_in(run, FeatureStore(t["test"]), None)["probe"])
    expected = hand_scores(logits)
    for name in SCORES:
        np.testing.assert_allclose(scores[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    # each member row scores that member alone
    member_scores = ood_scores(outputs_in(run, FeatureStore(t["test"]), None)["member-1"])
    np.testing.assert_allclose(member_scores["energy"], logsumexp(logits[1], axis=1), rtol=1e-5)
    assert "mutual_information" not in member_scores
    # and the report's AUROCs are sklearn's on those hand scores
    report = evaluate(str(t["run"]), [str(t["test"])], [str(t["ood"])])
    ood = hand_scores(member_logits(t["ood_emb"], run.weight, run.bias))
    for name in SCORES:
        assert report["ood"][str(t["ood"])]["probe"]["scores"][name]["auroc"] == pytest.approx(
            sklearn_auroc(expected[name], ood[name]), abs=1e-3), name


def subset_rows(emb, labels, weight, bias):
    """Each member's and the ensemble's probabilities over SUBSET by hand, and the labels' positions."""
    member = softmax(member_logits(emb, weight, bias, SUBSET), axis=-1)
    return member, member.mean(axis=0), np.searchsorted(SUBSET, labels)


def nll(probs: np.ndarray, positions: np.ndarray) -> float:
    return float(-np.log(np.maximum(probs[np.arange(len(positions)), positions], 1e-12)).mean())


def random_run(path: Path, world: dict, seed: int) -> Path:
    """A 3-member run of random, unconfident probes over the separable world's classes, written as
    train writes one: members that disagree and put different mass outside a subset."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 3.0, size=(3, CLASSES, 2 * HALF)).astype(np.float32)
    bias = rng.normal(0.0, 2.0, size=(3, CLASSES)).astype(np.float32)
    save_run(path, weight, bias, world["head"], load_run(world["run"]).info)
    return path


@pytest.mark.parametrize("world", ["random", "trained"])
def test_subset_store_rows_average_the_members_subset_renormalised_probabilities(world, separable, trained,
                                                                                  tmp_path):
    """Issue 13.5: on a class-subset store, each member row is that member's softmax over the subset and
    the ensemble row the mean of those, by hand (NLL, accuracy, Brier)."""
    w = trained if world == "trained" else {**separable, "run": random_run(tmp_path / "run", separable, 7)}
    run = load_run(w["run"])
    emb = w["test_emb" if world == "trained" else "id_emb"][w["in_subset"]]
    labels = w["test_labels" if world == "trained" else "labels"][w["in_subset"]]
    report = evaluate(str(w["run"]), [str(w["subset"])])
    entry = report["stores"][str(w["subset"])]
    assert entry["classes"] == len(SUBSET) and entry["samples"] == len(labels)
    member, ensemble, positions = subset_rows(emb, labels, run.weight, run.bias)
    onehot = np.eye(len(SUBSET))[positions]
    for method, probs in (("probe", ensemble), *((f"member-{m}", member[m]) for m in range(3))):
        assert entry[method]["nll"] == pytest.approx(nll(probs, positions), rel=1e-5), method
        assert entry[method]["accuracy"] == pytest.approx(float((probs.argmax(1) == positions).mean())), method
        assert entry[method]["brier"] == pytest.approx(float(((probs - onehot) ** 2).sum(1).mean()), rel=1e-5)
    if world == "random":
        # renormalising the mean of the members' full probabilities instead is another prediction here
        full = softmax(member_logits(emb, run.weight, run.bias), axis=-1).mean(axis=0)[:, SUBSET]
        other = nll(full / full.sum(axis=1, keepdims=True), positions)
        assert abs(other - entry["probe"]["nll"]) > 0.01


@pytest.mark.parametrize(("subset", "labels", "fragments"), [
    (SUBSET, "outside", ["labels outside its class subset", "'class 2'"]),
    ([1, 9], "inside", ["damaged dataset.class_subset", "[0, 6)"]),
])
def test_a_label_outside_the_subset_is_an_error_naming_the_store(separable, tmp_path, subset, labels, fragments):
    """Issue 13.5: a subset store whose labels fall outside its subset (or whose subset names no class of
    the run) is refused with one line naming the store, exit 5, no traceback, nothing written."""
    w = separable
    keep = w["in_subset"].copy()
    keep[np.flatnonzero(w["labels"] == 2)[:2]] = labels == "outside"  # two rows of class 2, outside SUBSET
    path = with_subset(write_store(tmp_path / "bad.zarr", w["id_emb"][keep], w["head"], w["labels"][keep],
                                   scale=30), subset)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["evaluate", "--run", str(w["run"]), "--store", str(path), "--out", str(out)])
    assert result.exit_code == 5, (result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpclip-cache: error: "), result.stderr
    assert "Traceback" not in result.output + result.stderr and not out.exists()
    for fragment in [str(path), *fragments]:
        assert fragment in lines[0], (fragment, lines[0])
    if labels == "outside":
        assert "2 labels" in lines[0]


def test_ood_stores_are_scored_in_the_reference_class_space(trained, tmp_path):
    """Issue 13.5: with a class-subset store as the in-distribution reference, OOD stores are scored over
    the same subset (every method, every score), by hand and sklearn; and with a full reference, an OOD
    store's own subset is not used."""
    t = trained
    run = load_run(t["run"])
    report = evaluate(str(t["run"]), [str(t["subset"])], [str(t["ood"])])
    entry = report["ood"][str(t["ood"])]
    assert entry["reference"] == str(t["subset"]) and entry["classes"] == len(SUBSET)
    id_logits = member_logits(t["test_emb"][t["in_subset"]], run.weight, run.bias, SUBSET)
    ood_logits = member_logits(t["ood_emb"], run.weight, run.bias, SUBSET)
    expected = {"probe": (hand_scores(id_logits), hand_scores(ood_logits))}
    expected.update({f"member-{m}": (hand_scores(id_logits[m : m + 1]), hand_scores(ood_logits[m : m + 1]))
                     for m in range(3)})
    teacher = [30.0 * stored(emb) @ t["teacher"][SUBSET].T for emb in (t["test_emb"][t["in_subset"]], t["ood_emb"])]
    expected["teacher"] = (hand_scores(teacher[0][None]), hand_scores(teacher[1][None]))
    for method, (id_scores, ood_scores_) in expected.items():
        names = SCORES if method == "probe" else SCORES[:4]
        assert set(entry[method]["scores"]) == set(names)
        for name in names:
            assert entry[method]["scores"][name]["auroc"] == pytest.approx(
                sklearn_auroc(id_scores[name], ood_scores_[name]), abs=1e-3), (method, name)
    # the reference over the subset against OOD over all classes (mixed spaces) is another figure here
    mixed = hand_scores(member_logits(t["ood_emb"], run.weight, run.bias))["msp"]
    assert abs(sklearn_auroc(expected["probe"][0]["msp"], mixed) - entry["probe"]["auroc"]) > 0.1
    # the report folder plots what evaluate scored: its ROC area is the reported AUROC
    from lpclip_cache.evaluation import score
    from lpclip_cache.figures.curves import roc_curve

    folder = tmp_path / "report"
    result = CliRunner().invoke(main, ["evaluate", "--run", str(t["run"]), "--store", str(t["subset"]), "--ood",
                                       str(t["ood"]), "--report", str(folder)])
    assert result.exit_code == 0, result.stderr
    assert (folder / "roc.png").is_file()
    plotted = score(str(t["run"]), [str(t["subset"])], [str(t["ood"])]).ood[str(t["ood"])].scores["probe"]["msp"]
    fpr, tpr = roc_curve(expected["probe"][0]["msp"], plotted)
    assert np.trapezoid(tpr, fpr) == pytest.approx(entry["probe"]["auroc"], abs=1e-3)

    # vice versa: a full reference, and an OOD store that has a subset of its own: all classes
    ood_subset = with_subset(write_store(tmp_path / "ood-subset.zarr", t["ood_emb"], t["teacher"],
                                         np.full(200, -1), scale=30), SUBSET)
    report = evaluate(str(t["run"]), [str(t["test"])], [str(ood_subset)])
    entry = report["ood"][str(ood_subset)]
    assert "classes" not in entry
    id_full = hand_scores(member_logits(t["test_emb"], run.weight, run.bias))
    ood_full = hand_scores(member_logits(t["ood_emb"], run.weight, run.bias))
    for name in SCORES:
        assert entry["probe"]["scores"][name]["auroc"] == pytest.approx(
            sklearn_auroc(id_full[name], ood_full[name]), abs=1e-3), name


def corrupted_store(path: Path, t: dict, corruption: str, severity: int) -> str:
    """A test store of the trained world, noisier with severity, recorded as made with a corruption."""
    seed = 10 * severity + len(corruption)
    _, labels, emb, _ = clustered_embeddings(60, CLASSES, 16, spread=0.2 + 0.15 * severity, seed=seed,
                                             centres=t["centres"])
    write_store(path, emb, t["teacher"], labels, scale=30)
    edit_manifest(path, corruption=f"{corruption}:{severity}")
    return str(path)


def hand_error(path: str, run) -> float:
    """1 - accuracy of the ensemble (the mean of its members' probabilities) on a store, by hand."""
    store = FeatureStore(path)
    emb, labels = store.read("clean/emb"), store.labels()
    probs = softmax(member_logits(emb, run.weight, run.bias), axis=-1).mean(axis=0)
    return float(1.0 - (probs.argmax(1) == labels).mean())


def test_mce_needs_all_five_severities_or_names_the_missing_ones(trained, tmp_path):
    """Issue 13.5: with fog severity 3 missing, the report gives every error it has, the mean error of the
    complete corruption, no mCE, and says what is missing (JSON, table, report.md); once fog 3 is there,
    mCE is the mean over corruptions of the mean over five severities, by hand."""
    t = trained
    run = load_run(t["run"])
    folder = tmp_path / "shifted"
    paths = {(c, s): corrupted_store(folder / f"{c}-{s}.zarr", t, c, s)
             for c in ("contrast", "fog") for s in (1, 2, 3, 4, 5) if (c, s) != ("fog", 3)}
    report = evaluate(str(t["run"]), [str(t["test"]), str(folder)])
    probe = report["corruptions"]["probe"]
    assert probe["missing"] == {"fog": [3]} and probe["mce"] is None
    errors = {key: hand_error(path, run) for key, path in paths.items()}
    assert probe["error"]["fog"] == pytest.approx({str(s): errors[("fog", s)] for s in (1, 2, 4, 5)})
    assert probe["error"]["contrast"] == pytest.approx({str(s): errors[("contrast", s)] for s in range(1, 6)})
    assert probe["mean_error"] == pytest.approx({"contrast": np.mean([errors[("contrast", s)] for s in range(1, 6)])})
    assert set(probe["mean_ece"]) == {"contrast"}
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["evaluate", "--run", str(t["run"]), "--store", str(t["test"]), "--store",
                                       str(folder), "--report", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "severities missing (fog 3)" in result.stdout
    assert "missing: fog 3" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["corruptions"]["teacher"]["missing"] == {"fog": [3]}

    paths[("fog", 3)] = corrupted_store(folder / "fog-3.zarr", t, "fog", 3)
    errors[("fog", 3)] = hand_error(paths[("fog", 3)], run)
    probe = evaluate(str(t["run"]), [str(t["test"]), str(folder)])["corruptions"]["probe"]
    means = {c: np.mean([errors[(c, s)] for s in range(1, 6)]) for c in ("contrast", "fog")}
    assert probe["missing"] == {} and probe["mean_error"] == pytest.approx(means)
    assert probe["mce"] == pytest.approx(np.mean(list(means.values())))


def test_mutual_information_score_is_scipys_and_refuses_bad_shapes():
    """metrics.mutual_information_score: mean member entropy minus the entropy of the mean (scipy), 0 for
    members that agree, InputError for anything but non-negative (M, N, C) probabilities."""
    from lpclip_cache import metrics
    from lpclip_cache.errors import InputError

    member = np.random.default_rng(2).dirichlet(np.ones(5), size=(4, 30))
    expected = entropy(member, axis=-1).mean(axis=0) - entropy(member.mean(axis=0), axis=1)
    np.testing.assert_allclose(metrics.mutual_information_score(member), expected, rtol=1e-12, atol=1e-15)
    assert (expected < 0).all()
    np.testing.assert_allclose(metrics.mutual_information_score(np.stack([member[0]] * 3)), 0.0, atol=1e-12)
    for bad in (member[0], np.zeros((2, 0, 5)), -member, np.full((2, 3, 4), np.nan)):
        with pytest.raises(InputError):
            metrics.mutual_information_score(bad)
