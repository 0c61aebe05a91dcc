"""analyze views: do the views keep the class? Checked against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import clustered_embeddings, run_cli, unit, write_store

from lpclip_cache.errors import InputError
from lpclip_cache.probe import PROBE_L2, linear_probe
from lpclip_cache.viewcheck import halves, view_figures


@pytest.fixture(scope="module")
def world():
    """Twelve classes in 16 dimensions; weak views close to the clean embedding, strong ones far."""
    centres, labels, clean, weak = clustered_embeddings(600, 12, 16, 0.35, seed=3, views=2)
    rng = np.random.default_rng(4)
    strong = unit(clean[:, None] + 1.2 * rng.normal(size=(600, 3, 16)))
    head = unit(centres + 0.5 * rng.normal(size=centres.shape))  # an imperfect zero-shot head
    return head, labels, clean, {"weak": weak, "strong": strong}


def sklearn_accuracy(train, train_labels, test, test_labels, classes):
    """The same probe by scikit-learn: sum of log-losses + ||W||^2 / (2C) is n times mean CE + l2 ||W||^2."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0 / (2 * len(train) * PROBE_L2), max_iter=5000, tol=1e-10)
    model.fit(train, train_labels)
    return float(np.mean(model.predict(test) == test_labels)), model.predict(test)


def flat(entry: dict, prefix: str = "") -> dict:
    """A nested report entry as one level of dotted keys."""
    out = {}
    for key, value in entry.items():
        out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def test_view_figures_match_an_independent_computation(world):
    head, labels, clean, views = world
    report = view_figures(clean, views, head, 100.0, labels=labels, seed=7)
    logits = lambda x: 100.0 * x @ head.T  # noqa: E731
    softmax = lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)  # noqa: E501,E731
    clean_label = logits(clean).argmax(1)
    fit, score = halves(labels, 7)
    assert len(set(fit) | set(score)) == 600 and not set(fit) & set(score) and abs(len(fit) - len(score)) <= 1
    clean_acc, _ = sklearn_accuracy(clean[fit], labels[fit], clean[score], labels[score], 12)
    assert report["clean"]["probe_accuracy"] == pytest.approx(clean_acc, abs=0.01)
    assert report["clean"]["teacher_accuracy"] == pytest.approx(np.mean(clean_label == labels), abs=1e-9)
    for kind, emb in views.items():
        k = emb.shape[1]
        entry = report["views"][kind]
        by_hand = [np.mean([logits(emb[i, j]).argmax() == clean_label[i] for i in range(600) for j in range(k)]),
                   np.mean([emb[i, j] @ clean[i] for i in range(600) for j in range(k)]),
                   np.mean([softmax(logits(emb[i, j])).max() for i in range(600) for j in range(k)]),
                   np.mean([logits(emb[i, j]).argmax() == labels[i] for i in range(600) for j in range(k)])]
        assert [entry["pseudo_label_agreement"], entry["cosine_to_clean"], entry["confidence"],
                entry["teacher_accuracy"]] == pytest.approx(by_hand, abs=1e-5)
        view_acc, _ = sklearn_accuracy(clean[fit], labels[fit], emb[score].reshape(-1, 16), np.repeat(labels[score], k),
                                       12)
        assert entry["label_preservation"]["view_accuracy"] == pytest.approx(view_acc, abs=0.01)
        assert entry["label_preservation"]["ratio"] == pytest.approx(view_acc / clean_acc, abs=0.015)
        ceiling, _ = sklearn_accuracy(emb[fit].reshape(-1, 16), np.repeat(labels[fit], k), clean[score], labels[score],
                                      12)
        assert entry["ceiling"]["clean_accuracy"] == pytest.approx(ceiling, abs=0.01)
    # the world was made so: weak views keep the class, strong ones lose much of it
    keeps = {kind: entry["label_preservation"]["ratio"] for kind, entry in report["views"].items()}
    assert keeps["weak"] > keeps["strong"]
    assert report["views"]["strong"]["cosine_to_clean"] < report["views"]["weak"]["cosine_to_clean"]


def test_views_identical_to_the_clean_view_keep_everything(world):
    head, labels, clean, _ = world
    same = np.repeat(clean[:, None], 3, axis=1)
    report = view_figures(clean, {"weak": same, "strong": same}, head, 100.0, labels=labels)
    for entry in report["views"].values():
        assert entry["pseudo_label_agreement"] == 1.0
        assert entry["cosine_to_clean"] == pytest.approx(1.0, abs=1e-6)
        assert entry["teacher_accuracy"] == report["clean"]["teacher_accuracy"]
        assert entry["confidence"] == pytest.approx(report["clean"]["confidence"], abs=1e-6)
        assert entry["label_preservation"]["ratio"] == 1.0
        assert entry["ceiling"]["ratio"] == pytest.approx(1.0, abs=1e-9)


def test_the_probe_is_scikit_learns_logistic_regression(world):
    head, labels, clean, _ = world
    ours = linear_probe(clean[:300], labels[:300], clean[300:], 12)
    _, theirs = sklearn_accuracy(clean[:300], labels[:300], clean[300:], labels[300:], 12)
    assert np.mean(ours == theirs) >= 0.99


def test_unlabelled_rows_give_the_label_free_figures_only(world):
    head, labels, clean, views = world
    report = view_figures(clean, views, head, 100.0, labels=np.full(600, -1))
    assert "probe" not in report and set(report["views"]["weak"]) == {"views", "pseudo_label_agreement",
                                                                      "cosine_to_clean", "confidence"}
    partly = labels.copy()
    partly[::2] = -1  # labelled figures on the labelled half only
    half = view_figures(clean, views, head, 100.0, labels=partly)
    assert half["probe"]["fit_images"] + half["probe"]["score_images"] == 300
    assert half["views"]["weak"]["teacher_accuracy"] == pytest.approx(
        np.mean((100 * views["weak"][1::2] @ head.T).argmax(-1) == labels[1::2, None]), abs=1e-9)
    with pytest.raises(InputError, match="N x K x D"):
        view_figures(clean, {"weak": clean}, head, 100.0)


def test_analyze_views_command_on_a_store(world, tmp_path):
    head, labels, clean, views = world
    store = write_store(tmp_path / "s.zarr", clean, head, labels, weak=views["weak"], strong=views["strong"])
    out = tmp_path / "views.json"
    result = run_cli("analyze", "views", "--store", str(store), "--out", str(out), "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert "weak" in result.stdout and "strong" in result.stdout and "keeps" in result.stdout
    report = json.loads(out.read_text())
    stored = {k: v.astype(np.float16).astype(np.float32) for k, v in views.items()}  # the store holds fp16
    expected = view_figures(clean.astype(np.float16), stored, head, 100.0, labels=labels, seed=2)
    for kind, entry in expected["views"].items():
        assert flat(report["views"][kind]) == pytest.approx(flat(entry), abs=1e-6)
    assert report["store"] == str(store) and report["images"] == 600
    again = run_cli("analyze", "views", "--store", str(store), "--out", str(out), "--json")
    assert again.returncode != 0 and "exists" in again.stderr and again.stderr.count("\n") == 1
    as_json = run_cli("analyze", "views", "--store", str(store), "--out", str(tmp_path / "b.json"), "--json",
                      "--max-images", "100")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["images"] == 100


def test_analyze_views_refuses_a_store_without_views(world, tmp_path):
    head, labels, clean, _ = world
    store = write_store(tmp_path / "eval.zarr", clean, head, labels)
    result = run_cli("analyze", "views", "--store", str(store), "--out", str(tmp_path / "v.json"))
    assert result.returncode != 0 and "holds no weak or strong views" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "v.json").exists()


def test_analyze_views_from_the_api_and_a_recipe(world, tmp_path):
    import lpclip_cache as lc
    from lpclip_cache.recipe import load_recipe, plan

    head, labels, clean, views = world
    store = write_store(tmp_path / "s.zarr", clean, head, labels, weak=views["weak"])
    report = lc.analyze("views", store=str(store), out=str(tmp_path / "v.json"))
    assert set(report["views"]) == {"weak"} and json.loads((tmp_path / "v.json").read_text())["views"] == \
        json.loads(json.dumps(report["views"]))
    with pytest.raises(InputError, match="no run, k or sweep"):
        lc.analyze("views", store=str(store), k=3)
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "v"\nout = "o"\n[model]\nname = "test-tiny"\npretrained = "none"\n'
                      '[datasets.train]\nrole = "adapt"\ndata = "shapes:train:n=8"\n'
                      '[datasets.test]\nrole = "test"\ndata = "shapes:test:n=8"\n'
                      '[train.lpclip]\nmethod = "lpclip"\n[analyze]\nviews = true\n')
    stages = [s for s in plan(load_recipe(recipe)) if s.kind == "analyze"]
    assert [(s.id, s.options["store"]) for s in stages] == [("analyze-views-train", "o/stores/train.zarr")]


def test_a_store_whose_views_are_its_clean_view_keeps_everything(world, tmp_path):
    """The requirement as a user meets it: a store extracted with views identical to the clean
    view (written through the store, fp16 and all) gives 100% on every figure."""
    import lpclip_cache as lc

    head, labels, clean, _ = world
    same = np.repeat(clean[:, None], 2, axis=1)
    store = write_store(tmp_path / "same.zarr", clean, head, labels, weak=same, strong=same)
    report = lc.analyze("views", store=str(store))
    for entry in report["views"].values():
        assert entry["pseudo_label_agreement"] == 1.0 and entry["label_preservation"]["ratio"] == 1.0
        assert entry["cosine_to_clean"] == pytest.approx(1.0, abs=1e-6)
        assert entry["teacher_accuracy"] == report["clean"]["teacher_accuracy"]


def small_store(tmp_path, labels: list[int]):
    """A store of len(labels) images in 2 classes with 2 weak views each, labelled as given (-1 unknown)."""
    rng = np.random.default_rng(5)
    centres = unit(rng.normal(size=(2, 8)))
    truth = np.where(np.array(labels) >= 0, labels, np.arange(len(labels)) % 2)
    clean = unit(centres[truth] + 0.2 * rng.normal(size=(len(labels), 8)))
    weak = unit(clean[:, None] + 0.1 * rng.normal(size=(len(labels), 2, 8)))
    return write_store(tmp_path / "small.zarr", clean, centres, np.array(labels), weak=weak)


def analyze_views_cli(store, out, *options: str):
    from click.testing import CliRunner

    from lpclip_cache.cli import main

    result = CliRunner().invoke(main, ["analyze", "views", "--store", str(store), "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text(), parse_constant=pytest.fail)  # strict: no NaN


def test_a_fitting_half_of_one_class_says_why_and_writes_no_nan(tmp_path):
    """Issue 30.6: 4 labelled images in 2 classes and --seed 1: the fitting half is rows 0 and 1, both
    class 0, so the clean probe is right on no scored image and every ratio was NaN. The report says
    why, gives no probe figures, and still gives the teacher's accuracy."""
    store = small_store(tmp_path, [0, 0, 1, 1])
    assert np.unique(np.array([0, 0, 1, 1])[halves(np.array([0, 0, 1, 1]), 1)[0]]).size == 1
    text, report = analyze_views_cli(store, tmp_path / "v.json", "--seed", "1")
    assert "holds one class" in report["probe"]["undefined"] and "--seed" in report["probe"]["undefined"]
    assert "probe_accuracy" not in report["clean"] and "label_preservation" not in report["views"]["weak"]
    assert report["clean"]["teacher_accuracy"] == 1.0 and report["views"]["weak"]["teacher_accuracy"] == 1.0
    assert "holds one class" in text and "n/a" in text and "nan" not in text.lower()
    _, other = analyze_views_cli(store, tmp_path / "w.json", "--seed", "0")  # rows 0 and 2: both classes
    assert other["views"]["weak"]["label_preservation"]["ratio"] == 1.0 and "undefined" not in other["probe"]


def test_fewer_than_four_labelled_images_keep_the_teachers_accuracy(tmp_path):
    """Issue 30.6: with 3 labelled rows the report said "no labels in this store" and left out the
    teacher's accuracy. It gives the teacher's accuracy on the labelled rows and says why no probe."""
    store = small_store(tmp_path, [0, 1, 0, -1, -1, -1])
    text, report = analyze_views_cli(store, tmp_path / "v.json")
    assert report["labelled_images"] == 3 and report["clean"]["teacher_accuracy"] == 1.0
    assert "teacher_accuracy" in report["views"]["weak"]
    assert "at least 4 labelled images" in report["probe"]["undefined"]
    assert "no labels in this store" not in text and "at least 4 labelled images" in text
    assert text.splitlines()[0].split()[-3:] == ["teacher", "keeps", "ceiling"]


def test_an_unconverged_probe_is_reported(world, monkeypatch):
    """L-BFGS stopped at its iteration limit says so: a ProbeConvergenceWarning from linear_probe,
    and in analyze views' report the probes that stopped unconverged (a warning line in its text)."""
    from lpclip_cache import probe
    from lpclip_cache.probe import ProbeConvergenceWarning
    from lpclip_cache.viewcheck import format_views

    head, labels, clean, views = world
    with pytest.warns(ProbeConvergenceWarning, match="L-BFGS stopped unconverged after"):
        linear_probe(clean[:300], labels[:300], clean[300:], 12, max_iter=2)
    report = view_figures(clean[:200], {"weak": views["weak"][:200]}, head, 100.0, labels=labels[:200])
    assert report["probe"]["unconverged"] == []
    monkeypatch.setattr(probe, "PROBE_MAX_ITER", 2)
    report = view_figures(clean[:200], {"weak": views["weak"][:200]}, head, 100.0, labels=labels[:200])
    assert report["probe"]["unconverged"] == ["clean", "ceiling on weak views"]
    assert "warning: L-BFGS stopped unconverged for the probe(s): clean, ceiling on weak views" in format_views(report)


def test_a_probe_fit_of_seconds_says_so_and_a_small_one_stays_quiet(caplog):
    """``analyze views`` fits its probes silently for seconds on a large store: such a fit logs a
    line as it starts and as it ends; the small fits of a small store add nothing to its output."""
    import logging

    from lpclip_cache.viewcheck import SHOW_FITS_FROM, fitted_probe

    caplog.set_level(logging.INFO, logger="lpclip_cache")
    rng = np.random.default_rng(0)
    for n in (SHOW_FITS_FROM - 1, SHOW_FITS_FROM):
        train = rng.normal(size=(n, 8))
        fitted_probe([], f"n{n}", train, np.arange(n) % 3, train[:5], 3)
    lines = [record.getMessage() for record in caplog.records if record.name == "lpclip_cache.viewcheck"]
    assert [line.split(":")[0] for line in lines] == [f"[views] probe n{SHOW_FITS_FROM}"] * 2
    assert f"fitting on {SHOW_FITS_FROM:,} embeddings, scoring 5" in lines[0] and "done in" in lines[1]
