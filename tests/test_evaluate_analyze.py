"""evaluate and analyze: report values equal metrics recomputed from the stores by hand."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import clustered_embeddings, unit, write_store

from lpclip_cache import metrics
from lpclip_cache.analysis import latent_clusters, spherical_kmeans
from lpclip_cache.errors import StoreError
from lpclip_cache.evaluation import evaluate
from lpclip_cache.training import TrainConfig, train


@pytest.fixture
def world(tmp_path):
    """A noisy teacher (centres plus noise) over 6 classes, an ID test store and an OOD store."""
    rng = np.random.default_rng(3)
    centres, labels, clean, views = clustered_embeddings(900, 6, 24, spread=0.15, seed=0, views=4)
    teacher = unit(centres + 0.15 * rng.normal(size=centres.shape))
    _, test_labels, test_clean, _ = clustered_embeddings(300, 6, 24, spread=0.15, seed=1, centres=centres)
    ood_clean = unit(rng.normal(size=(200, 24)))
    paths = {
        "train": write_store(tmp_path / "train.zarr", clean, teacher, labels, views[:, :2], views[:, 2:], scale=30),
        "test": write_store(tmp_path / "test.zarr", test_clean, teacher, test_labels, scale=30),
        "ood": write_store(tmp_path / "ood.zarr", ood_clean, teacher[:4], np.full(200, -1), scale=30),
    }
    train(TrainConfig(store=str(paths["train"]), out=str(tmp_path / "run"), epochs=5, progress=False))
    paths["run"] = tmp_path / "run"
    return {**paths, "teacher": teacher, "test_clean": test_clean, "test_labels": test_labels, "ood_clean": ood_clean}


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_report_equals_metrics_recomputed_from_stored_embeddings(world):
    from lpclip_cache.runs import load_run

    report = evaluate(str(world["run"]), [str(world["test"])], [str(world["ood"])])
    run = load_run(world["run"])
    emb = world["test_clean"].astype(np.float16).astype(np.float64)
    teacher = softmax(30.0 * emb @ world["teacher"].T)
    probe = softmax(emb @ run.weight.T.astype(np.float64) + run.bias)
    labels = world["test_labels"]
    entry = report["stores"][str(world["test"])]
    for name, probs in (("teacher", teacher), ("probe", probe)):
        assert entry[name]["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
        picked = np.maximum(probs[np.arange(300), labels], 1e-12)  # nll clips at eps=1e-12
        assert entry[name]["nll"] == pytest.approx(float(-np.log(picked).mean()), rel=1e-4)
        assert entry[name]["ece"] == pytest.approx(metrics.ece(probs, labels), abs=1e-5)
        assert entry[name]["brier"] == pytest.approx(metrics.brier(probs, labels), rel=1e-4)
    ood = report["ood"][str(world["ood"])]
    ood_emb = world["ood_clean"].astype(np.float16).astype(np.float64)
    ood_teacher = softmax(30.0 * ood_emb @ world["teacher"].T).max(1)
    # float32 logits round a few near-1 confidences into ties: allow a handful of the 60,000 pairs
    assert ood["teacher"]["auroc"] == pytest.approx(metrics.auroc(teacher.max(1), ood_teacher), abs=1e-4)
    assert 0.0 <= ood["probe"]["fpr95"] <= 1.0
    # the teacher is noisy but far better than chance on in-distribution data
    assert entry["teacher"]["accuracy"] > 0.5


def test_ood_store_scored_with_the_runs_head_even_with_other_classes(world):
    report = evaluate(str(world["run"]), [str(world["test"])], [str(world["ood"])])
    assert report["ood"][str(world["ood"])]["samples"] == 200


def test_in_distribution_store_with_other_classes_is_refused(world):
    with pytest.raises(StoreError, match="--ood"):
        evaluate(str(world["run"]), [str(world["ood"])])


def test_store_of_another_embedding_size_is_refused(world, tmp_path):
    other = write_store(tmp_path / "o.zarr", unit(np.ones((10, 8))), unit(np.eye(6, 8)), np.zeros(10, int))
    with pytest.raises(StoreError, match="8-d embeddings"):
        evaluate(str(world["run"]), [str(world["test"])], [str(other)])


def test_evaluate_reads_a_shard_at_a_time_and_scores_as_the_whole_store_would(tmp_path, monkeypatch):
    """``evaluate`` reads the clean embeddings one shard at a time (no read longer than a shard),
    and its report and probabilities equal, bit for bit, those computed from every embedding read
    at once: the store spans three blocks of logits, with invalid rows (NaN) and a short last
    shard. (A product per shard, this size, takes another BLAS kernel: its logits would differ.)"""
    import zarr

    from lpclip_cache import evaluation
    from lpclip_cache.store import FeatureStore

    rng = np.random.default_rng(5)
    dim, classes, shard = 512, 10, 1000
    centres, labels, clean, views = clustered_embeddings(300, classes, dim, spread=0.3, seed=0, views=2)
    teacher = unit(centres + 0.2 * rng.normal(size=centres.shape))
    adapt = write_store(tmp_path / "adapt.zarr", clean, teacher, labels, views[:, :1], views[:, 1:], scale=30)
    train(TrainConfig(store=str(adapt), out=str(tmp_path / "run"), epochs=1, ensemble=2, progress=False))
    n = 4 * evaluation.BLOCK_MULTIPLY_ADDS // (dim * classes)  # 10% invalid: three blocks of logits
    _, labels, clean, _ = clustered_embeddings(n, classes, dim, spread=0.3, seed=4, centres=centres)
    big = write_store(tmp_path / "big.zarr", clean, teacher, labels, scale=30, shard_size=shard)
    group = zarr.open_group(str(big), mode="r+")
    invalid = rng.choice(n, n // 10, replace=False)
    valid = group["valid"][:]
    valid[invalid] = False
    group["valid"][:] = valid
    emb = group["clean/emb"][:]
    emb[invalid] = np.nan
    group["clean/emb"][:] = emb
    ood = write_store(tmp_path / "ood.zarr", unit(rng.normal(size=(2500, dim))), teacher, np.full(2500, -1),
                      scale=30, shard_size=shard)
    stores = [str(big), str(ood)]

    reads: list[tuple[str, int]] = []
    read_rows = FeatureStore.read_rows

    def counted(self, name, start=0, stop=None, check_finite=True):
        data = read_rows(self, name, start, stop, check_finite)
        if name == "clean/emb":
            reads.append((str(self.path), len(data)))
        return data

    monkeypatch.setattr(FeatureStore, "read_rows", counted)
    streamed = evaluation.score(str(tmp_path / "run"), stores[:1], stores[1:])
    for path in stores:
        spans = FeatureStore(path).spans()
        assert len(spans) > 1 and [rows for where, rows in reads if where == path] == [b - a for a, b in spans]
    assert max(rows for _, rows in reads) == shard
    monkeypatch.setattr(FeatureStore, "spans", lambda self, n=None: [(0, self.layout.n)])  # the whole store at once
    reads.clear()
    whole = evaluation.score(str(tmp_path / "run"), stores[:1], stores[1:])
    assert max(rows for _, rows in reads) == n
    assert streamed.report == whole.report
    for scored, reference in ((streamed.stores, whole.stores), (streamed.ood, whole.ood)):
        for path, outputs in scored.items():
            for method in streamed.report["methods"]:
                assert np.array_equal(outputs.probs(method), reference[path].probs(method))
    assert streamed.report["stores"][str(big)]["samples"] == n - n // 10


@pytest.mark.parametrize("sizes,least", [([5, 0, 7, 3, 9, 1], 6), ([2, 2], 10), ([], 3), ([0, 0], 2), ([4] * 9, 4)])
def test_blocks_join_parts_into_blocks_of_at_least_the_least_rows(sizes, least):
    from lpclip_cache.evaluation import blocks

    parts = [np.arange(sum(sizes[:i]), sum(sizes[: i + 1])) for i in range(len(sizes))]
    joined = list(blocks(parts, sum(sizes), least))
    assert np.array_equal(np.concatenate(joined) if joined else np.arange(0), np.arange(sum(sizes)))
    if len(joined) > 1:
        assert min(len(block) for block in joined) >= least


def test_spherical_kmeans_recovers_well_separated_clusters():
    from sklearn.metrics import adjusted_rand_score

    _, labels, clean, _ = clustered_embeddings(600, 5, 16, spread=0.05, seed=4)
    clusters = spherical_kmeans(clean, 5, seed=0)
    assert adjusted_rand_score(labels, clusters) == pytest.approx(1.0)
    np.testing.assert_array_equal(clusters, spherical_kmeans(clean, 5, seed=0))


def test_latent_clusters_scores_clip_and_probe_spaces(world):
    report = latent_clusters(str(world["test"]), 6, str(world["run"]), seed=0)
    assert set(report["spaces"]) == {"clip", "probe"}
    assert report["references"] == ["pseudo_labels", "true_labels"]
    clip = report["spaces"]["clip"]
    # recompute the CLIP-space scores independently from a fresh clustering with the same seed
    emb = world["test_clean"].astype(np.float16).astype(np.float32)
    clusters = spherical_kmeans(emb, 6, seed=0)
    assert clip["vs_true_labels"]["nmi"] == pytest.approx(
        metrics.normalized_mutual_info(clusters, world["test_labels"]))
    assert clip["vs_true_labels"]["purity"] > 0.8
    assert report["spaces"]["probe"]["dim"] == 6


def test_latent_clusters_without_labels_uses_pseudo_labels_only(world):
    report = latent_clusters(str(world["ood"]), 3)
    assert report["references"] == ["pseudo_labels"]
    assert "vs_true_labels" not in report["spaces"]["clip"]


def test_report_has_every_calibration_metric_and_ood_score(world):
    from scipy.special import logsumexp

    report = evaluate(str(world["run"]), [str(world["test"])], [str(world["ood"])])
    entry = report["stores"][str(world["test"])]["teacher"]
    assert {"balanced_accuracy", "adaptive_ece", "mce", "overconfidence", "aurc", "top5_accuracy"} <= set(entry)
    assert entry["mce"] >= entry["ece"] - 1e-12
    scores = report["ood"][str(world["ood"])]["teacher"]["scores"]
    assert set(scores) == {"msp", "entropy", "max_logit", "energy"}
    # the energy score by hand: T * logsumexp(logits / T) with the teacher's logits, T = 1
    id_logits = 30.0 * world["test_clean"].astype(np.float16).astype(np.float64) @ world["teacher"].T
    ood_logits = 30.0 * world["ood_clean"].astype(np.float16).astype(np.float64) @ world["teacher"].T
    expected = metrics.auroc(logsumexp(id_logits, axis=1), logsumexp(ood_logits, axis=1))
    assert scores["energy"]["auroc"] == pytest.approx(expected, abs=1e-4)
    assert scores["max_logit"]["auroc"] == pytest.approx(
        metrics.auroc(id_logits.max(1), ood_logits.max(1)), abs=1e-4)
    assert report["ood"][str(world["ood"])]["teacher"]["auroc"] == scores["msp"]["auroc"]


def test_neighbour_and_geometry_scores_match_brute_force():
    from sklearn.metrics import silhouette_score

    from lpclip_cache.analysis import class_geometry, knn_agreement

    _, labels, points, _ = clustered_embeddings(300, 4, 12, spread=0.4, seed=8)
    labels[:1] = 9  # a class with a single member
    geometry = class_geometry(points, labels)
    assert geometry["silhouette"] == pytest.approx(silhouette_score(points, labels, metric="cosine"), abs=1e-9)
    unit_points = points / np.linalg.norm(points, axis=1, keepdims=True)
    distance = 1 - unit_points @ unit_points.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(points), dtype=bool)
    expected_ratio = distance[same & off_diagonal].mean() / distance[~same].mean()
    assert geometry["intra_inter_ratio"] == pytest.approx(expected_ratio, rel=1e-9)
    order = np.argsort(distance + np.eye(len(points)) * 9, axis=1)[:, :5]
    assert knn_agreement(points, labels, k=5) == pytest.approx(float((labels[order] == labels[:, None]).mean()))


def test_latent_neighbors_command(world, tmp_path):
    import json

    from click.testing import CliRunner

    from lpclip_cache.cli import main

    out = tmp_path / "n.json"
    result = CliRunner().invoke(main, ["analyze", "latent", "neighbors", "--store", str(world["test"]), "--run",
                                       str(world["run"]), "--k", "5", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    report = json.loads(out.read_text())
    clip = report["spaces"]["clip"]["vs_true_labels"]
    assert set(clip) == {"knn_agreement", "silhouette", "intra_inter_ratio"}
    # well-separated classes: neighbours agree, and points sit nearer their own class than others
    assert clip["knn_agreement"] > 0.8 and clip["intra_inter_ratio"] < 1.0 and clip["silhouette"] > 0
    assert "probe" in report["spaces"]


def test_duplicates_are_neighbours_but_a_point_never_its_own(tmp_path):
    """Issue 30.6: 8 images, each copied into two classes, so every class holds one image. A point's
    copy is its nearest neighbour and of another class; the point itself never counts (the old code
    dropped only the first result, which with ties may be the copy): true-label agreement is 0, and
    silhouette and intra/inter ratio are undefined, so null with the reason beside, never NaN."""
    import json

    from click.testing import CliRunner

    from lpclip_cache.cli import main

    rng = np.random.default_rng(0)
    images = unit(rng.normal(size=(8, 16)))
    store = write_store(tmp_path / "copies.zarr", np.repeat(images, 2, axis=0), unit(rng.normal(size=(16, 16))),
                        np.arange(16))
    for k in ("3", "5"):
        out = tmp_path / f"n{k}.json"
        result = CliRunner().invoke(main, ["analyze", "latent", "neighbors", "--store", str(store), "--k", k,
                                           "--out", str(out)])
        assert result.exit_code == 0, result.output
        true = json.loads(out.read_text(), parse_constant=pytest.fail)["spaces"]["clip"]["vs_true_labels"]
        assert true["knn_agreement"] == 0.0
        assert true["silhouette"] is None and true["intra_inter_ratio"] is None
        assert "every class holds one point" in true["undefined"]
        assert "n/a" in result.output and "nan" not in result.output.lower()


def test_knn_excludes_the_point_itself_wherever_it_ranks():
    """With more copies of a point than k + 1, the point may not be found at all: its k neighbours
    are then k of its copies; with fewer, it is dropped wherever it ranks and the others kept in order."""
    from lpclip_cache.knn import nearest_neighbors

    rng = np.random.default_rng(1)
    points = np.repeat(unit(rng.normal(size=(6, 8))), 5, axis=0)  # 6 images, 5 copies each
    for k in (2, 4, 6):
        ids, sims = nearest_neighbors(points, k, chunk=7)
        assert ids.shape == (30, k) and not (ids == np.arange(30)[:, None]).any()
        copies = min(k, 4)  # the nearest are the other 4 copies (similarity 1), then other images
        assert (ids[:, :copies] // 5 == np.arange(30)[:, None] // 5).all()
        np.testing.assert_allclose(sims[:, :copies], 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="1 <= k < the number of rows"):
        nearest_neighbors(points, 30)


def test_cluster_sweep_and_projection_plot(world, tmp_path):
    import json

    from click.testing import CliRunner
    from PIL import Image

    from lpclip_cache.cli import main

    report = latent_clusters(str(world["test"]), 6, seed=0, sweep=(3, 6))
    assert set(report["sweep"]["clip"]) == {"3", "6"}
    assert report["sweep"]["clip"]["6"] == report["spaces"]["clip"]  # same seed, same clustering
    assert report["sweep"]["clip"]["3"]["clusters_used"] == 3
    out = tmp_path / "projection.png"
    result = CliRunner().invoke(main, ["analyze", "latent", "projection", "--store", str(world["test"]), "--run",
                                       str(world["run"]), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    with Image.open(out) as image:
        assert image.size == (1200, 800)  # 2 spaces x 3 panels of 4 x 4 inches at 100 dpi
        assert np.asarray(image.convert("L")).std() > 10
    assert 0 < json.loads(result.stdout)["explained_variance_2d"]["clip"] <= 1
    again = CliRunner().invoke(main, ["analyze", "latent", "projection", "--store", str(world["test"]),
                                      "--out", str(out)])
    assert again.exit_code == 5 and "already exists" in again.stderr


def test_corrupted_stores_are_aggregated_for_the_teacher_the_ensemble_and_each_member(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from lpclip_cache.cli import main
    from lpclip_cache.extraction import ExtractConfig, extract
    from lpclip_cache.runs import load_run
    from lpclip_cache.store import FeatureStore
    from lpclip_cache.training import TrainConfig, train

    def store(path, spec):
        extract(ExtractConfig(data=spec, out=str(path), model="test-tiny", weak_views=1,
                              strong_views=1, num_workers=0, device="cpu", progress=False, seed=0))
        return str(path)

    clean = store(tmp_path / "clean.zarr", "shapes:test:n=64")
    shifted = {(c, s): store(tmp_path / "shifted" / f"{c}-{s}.zarr", f"shapes:test:{c}:{s}:n=64")
               for c in ("contrast", "gaussian_blur") for s in (1, 5)}
    train(TrainConfig(store=clean, out=str(tmp_path / "run"), epochs=1, ensemble=3, progress=False))
    # a folder of stores stands for the stores in it
    report = evaluate(str(tmp_path / "run"), [clean, str(tmp_path / "shifted")])
    assert list(report["stores"]) == [clean, *sorted(shifted.values())]
    assert report["methods"] == ["teacher", "probe", "member-0", "member-1", "member-2"]
    assert report["stores"][clean]["shift"] is None
    run = load_run(tmp_path / "run")
    for (corruption, severity), path in shifted.items():
        assert report["stores"][path]["shift"] == {"corruption": corruption, "severity": severity}
        data = FeatureStore(path)
        emb, labels = data.read("clean/emb"), data.labels()
        members = np.stack([softmax(logits) for logits in run.member_logits(emb).astype(np.float64)])
        for m in range(3):  # each member's row is that probe alone
            assert report["stores"][path][f"member-{m}"]["accuracy"] == pytest.approx(
                metrics.accuracy(members[m], labels))
        assert report["stores"][path]["probe"]["accuracy"] == pytest.approx(
            metrics.accuracy(members.mean(axis=0), labels))
        for method in report["methods"]:
            entry = report["corruptions"][method]
            assert entry["error"][corruption][str(severity)] == pytest.approx(
                1 - report["stores"][path][method]["accuracy"])
            assert entry["ece"][corruption][str(severity)] == pytest.approx(report["stores"][path][method]["ece"])
    probe = report["corruptions"]["probe"]
    # only severities 1 and 5 were extracted: no mean over them, the missing ones named instead
    assert probe["missing"] == {"contrast": [2, 3, 4], "gaussian_blur": [2, 3, 4]}
    assert probe["mean_error"] == {} and probe["mce"] is None

    folder = tmp_path / "report"
    result = CliRunner().invoke(main, ["evaluate", "--run", str(tmp_path / "run"), "--store", clean,
                                       "--store", str(tmp_path / "shifted"), "--report", str(folder)])
    assert result.exit_code == 0, result.stderr
    assert "member-2" in result.stdout
    with Image.open(folder / "severity.png") as image:  # error and ECE rows, a column per corruption
        assert image.size == (640, 600) and np.asarray(image.convert("L")).std() > 5
    per_store = sorted((folder / "reliability").iterdir())
    assert len(per_store) == 5  # one reliability diagram per in-distribution store
    with Image.open(per_store[0]) as image:
        assert image.size == (1440, 288) and np.asarray(image.convert("L")).std() > 5
    page = (folder / "report.md").read_text()
    assert all(f"(reliability/{p.name})" in page for p in per_store)
    # the effective-robustness plot: the corrupted stores pooled as one shift, members left out
    from lpclip_cache.evaluation import score
    from lpclip_cache.report import robustness_points

    clean_acc, shifts = robustness_points(score(str(tmp_path / "run"), [clean, str(tmp_path / "shifted")]))
    assert clean_acc == {m: report["stores"][clean][m]["accuracy"] for m in ("teacher", "probe")}
    assert list(shifts) == ["corruptions"]
    for method in ("teacher", "probe"):
        assert shifts["corruptions"][method] == pytest.approx(
            np.mean([report["stores"][p][method]["accuracy"] for p in shifted.values()]))
    assert "![effective_robustness](effective_robustness.png)" in page


def test_report_folder_has_markdown_and_plots(world, tmp_path):
    import json

    from click.testing import CliRunner
    from PIL import Image

    from lpclip_cache.cli import main
    from lpclip_cache.figures.curves import risk_coverage, roc_curve

    folder = tmp_path / "report"
    result = CliRunner().invoke(main, ["evaluate", "--run", str(world["run"]), "--store", str(world["test"]),
                                       "--ood", str(world["ood"]), "--report", str(folder)])
    assert result.exit_code == 0, result.stderr
    assert json.loads((folder / "report.json").read_text())["tool"] == "lpclip-cache"
    page = (folder / "report.md").read_text()
    for name, size in (("calibration", (1000, 800)), ("risk_coverage", (500, 400)), ("roc", (500, 400))):
        assert f"![{name}]({name}.png)" in page
        with Image.open(folder / f"{name}.png") as image:
            assert image.size == size and np.asarray(image.convert("L")).std() > 5
    # the curves behind the plots: AURC is the mean risk; the ROC area is the AUROC
    probs = softmax(30.0 * world["test_clean"].astype(np.float16).astype(np.float64) @ world["teacher"].T)
    _, risk = risk_coverage(probs, world["test_labels"])
    assert risk.mean() == pytest.approx(metrics.aurc(probs, world["test_labels"]))
    ood = softmax(30.0 * world["ood_clean"].astype(np.float16).astype(np.float64) @ world["teacher"].T).max(1)
    fpr, tpr = roc_curve(probs.max(1), ood)
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.auroc(probs.max(1), ood), abs=2e-3)
    assert not (folder / "effective_robustness.png").exists()  # one labelled store: no shift to plot
    missing = CliRunner().invoke(main, ["evaluate", "--run", str(world["run"]), "--store", str(world["test"])])
    assert missing.exit_code == 3 and "--out REPORT.json, --report DIR or --predictions FILE.h5" in missing.stderr


def test_effective_robustness_plot_takes_each_shift_store_of_the_same_classes(world, tmp_path):
    """``evaluate --report`` with a clean store first and shift stores after it: x is each method's
    accuracy on the first store, y its accuracy on each later labelled store over the same classes,
    named by its folder; an unlabelled store is no shift."""
    from click.testing import CliRunner
    from PIL import Image

    from lpclip_cache.cli import main
    from lpclip_cache.evaluation import score
    from lpclip_cache.report import robustness_points

    rng = np.random.default_rng(8)
    shifted = unit(world["test_clean"] + 0.5 * rng.normal(size=world["test_clean"].shape))
    shift = write_store(tmp_path / "blurred.zarr", shifted, world["teacher"], world["test_labels"], scale=30)
    unlabelled = write_store(tmp_path / "unlabelled.zarr", shifted, world["teacher"], np.full(300, -1), scale=30)
    evaluation = score(str(world["run"]), [str(world["test"]), str(shift), str(unlabelled)])
    clean, shifts = robustness_points(evaluation)
    report = evaluation.report
    assert list(shifts) == ["blurred"]
    for method in ("teacher", "probe"):
        assert clean[method] == report["stores"][str(world["test"])][method]["accuracy"]
        assert shifts["blurred"][method] == report["stores"][str(shift)][method]["accuracy"]
    assert shifts["blurred"]["teacher"] < clean["teacher"]  # the shift costs accuracy
    assert robustness_points(score(str(world["run"]), [str(world["test"])])) is None
    folder = tmp_path / "report"
    result = CliRunner().invoke(main, ["evaluate", "--run", str(world["run"]), "--store", str(world["test"]),
                                       "--store", str(shift), "--report", str(folder)])
    assert result.exit_code == 0, result.stderr
    with Image.open(folder / "effective_robustness.png") as image:
        assert image.size == (640, 520) and np.asarray(image.convert("L")).std() > 5
