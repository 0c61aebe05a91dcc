"""TransCLIP's solver (lpclip_cache/transclip.py) against the paper's update equations written out
here a second time, densely and without chunks (N x K x D tensors, the full similarity matrix);
FAISS's neighbours against an exact sort; chunked against unchunked."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import clustered_embeddings

from lpclip_cache import transclip as T
from lpclip_cache.numeric import softmax
from lpclip_cache.zeroshot import TeacherScale

CLIP = TeacherScale(100.0)  # pretrained CLIP's scale, the paper's setting


def dense_transclip(x: np.ndarray, head: np.ndarray, initial: np.ndarray | None = None, k: int = 3,
                    scale: float = 100.0) -> np.ndarray:
    """The zero-shot TransCLIP iterations as the paper states them, computed the plain way (the
    prior softmax(scale x . t) at the teacher's ``scale``)."""
    n, d = x.shape
    logits = scale * x @ head.T
    prior = initial if initial is not None else np.exp(logits - logits.max(1, keepdims=True))
    prior = prior / prior.sum(1, keepdims=True)
    z = prior.copy()
    # means: the 8 most confident images of each class, weighted by their z
    mu = np.stack([(z[np.argsort(-z[:, c], kind="stable")[:8], c][:, None]
                    * x[np.argsort(-z[:, c], kind="stable")[:8]]).mean(0) for c in range(head.shape[0])])
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    sigma = np.full(d, 1.0 / d)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    w = np.zeros((n, n))
    for i in range(n):
        nearest = np.argsort(-similarity[i], kind="stable")[:k]
        w[i, nearest] = x[nearest] @ x[i]
    for round_ in range(11):
        loglik = -0.5 * (((x[:, None, :] - mu[None]) ** 2) / sigma).sum(-1)
        for _ in range(5):
            energy = loglik + 50.0 / (2 * k) * ((w + w.T) @ z)
            energy -= energy.max(1, keepdims=True)
            z = prior * np.exp(energy / 50.0)
            z /= z.sum(1, keepdims=True)
        if round_ == 10:
            return z
        mu = (z.T @ x) / z.sum(0)[:, None]
        mu /= np.linalg.norm(mu, axis=1, keepdims=True)
        sigma = (z[:, :, None] * (x[:, None, :] - mu[None]) ** 2).sum((0, 1)) / z.sum()
    return z


@pytest.fixture(scope="module")
def world():
    """Clustered unit embeddings with a noisy zero-shot head (the cluster centres moved), so that the
    iterations change the assignments."""
    centres, labels, x, _ = clustered_embeddings(300, 6, 24, 0.9, seed=4)
    rng = np.random.default_rng(5)
    head = centres + 0.6 * rng.normal(size=centres.shape)
    head /= np.linalg.norm(head, axis=1, keepdims=True)
    return x, head, labels


def test_the_solver_follows_the_update_equations(world):
    x, head, _ = world
    np.testing.assert_allclose(T.transclip(x, head, CLIP).z, dense_transclip(x, head), atol=1e-8, rtol=0)


def test_the_zero_shot_prior_is_the_teachers_own_scale_and_temperature(world):
    """TransCLIP starts from the teacher's probabilities: at a small model's scale (about 14.9 for
    the demo's teacher) and a temperature, not at pretrained CLIP's 100."""
    x, head, _ = world
    teacher = TeacherScale(14.9, temperature=0.5)
    start = T.zero_shot(x, head, teacher)
    np.testing.assert_allclose(start, teacher.probabilities(x, head, np.float64), atol=1e-6)
    solved = T.transclip(x, head, teacher).z
    np.testing.assert_allclose(solved, dense_transclip(x, head, scale=14.9 / 0.5), atol=1e-8, rtol=0)
    assert not np.allclose(solved, T.transclip(x, head, CLIP).z, atol=1e-4)
    with pytest.raises(ValueError, match="starts from"):
        T.transclip(x, head)


def test_atop_another_methods_predictions(world):
    x, head, _ = world
    rng = np.random.default_rng(0)
    initial = softmax(rng.normal(size=(len(x), head.shape[0])) * 3, np.float64)
    result = T.transclip(x, head, initial=initial)
    np.testing.assert_allclose(result.z, dense_transclip(x, head, initial=initial), atol=1e-8, rtol=0)
    np.testing.assert_allclose(result.z.sum(1), 1.0, atol=1e-12)
    assert not np.allclose(result.z, T.transclip(x, head, CLIP).z)


def test_faiss_neighbours_are_the_exact_ones():
    from lpclip_cache.knn import nearest_neighbors

    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids, sims = nearest_neighbors(x, k=3, chunk=100)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    exact = np.argsort(-similarity, axis=1)[:, :3]
    np.testing.assert_array_equal(ids, exact)
    np.testing.assert_allclose(sims, np.take_along_axis(similarity, exact, 1), atol=1e-5)


def test_the_graph_holds_copies_of_an_image_but_never_the_image_itself(world):
    """With 5 copies of each image the graph's 3 neighbours of an image are 3 of its 4 copies, and
    never itself (the public solver drops the first column found, which may be a copy)."""
    x, head, _ = world
    copies = np.repeat(x[:40], 5, axis=0)
    neighbours = T.transclip(copies, head, CLIP).neighbors
    assert not (neighbours == np.arange(len(copies))[:, None]).any()
    assert (neighbours // 5 == np.arange(len(copies))[:, None] // 5).all()


@pytest.mark.parametrize("case", ["a dimension 0 in every row", "every row e0"])
def test_sigma_is_floored_where_a_dimension_is_constant(world, case):
    """Issue 30.6: a dimension constant over the rows has variance 0; 1/σ was infinite and every
    assignment NaN. σ is floored at SIGMA_FLOOR / D, and the solve is finite and normalised."""
    x, head, _ = world
    if case == "every row e0":
        x = np.zeros((20, x.shape[1]))
        x[:, 0] = 1.0
    else:
        x = x.copy()
        x[:, 3] = 0.0
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    result = T.transclip(x, head, CLIP)
    assert np.isfinite(result.z).all() and np.isfinite(result.sigma).all()
    np.testing.assert_allclose(result.z.sum(axis=1), 1.0, atol=1e-12)
    floor = T.SIGMA_FLOOR / x.shape[1]
    assert result.sigma.min() == floor and result.sigma[3] == floor
    if case != "every row e0":  # the other dimensions' variances are far above the floor: it changes nothing there
        assert np.delete(result.sigma, 3).min() > 1e3 * floor
        np.testing.assert_array_equal(result.z.argmax(1), T.transclip(np.delete(x, 3, axis=1),
                                                                      np.delete(head, 3, axis=1), CLIP).z.argmax(1))


def test_chunks_change_nothing(world):
    x, head, _ = world
    small, whole = T.transclip(x, head, CLIP, chunk=7), T.transclip(x, head, CLIP, chunk=10**6)
    np.testing.assert_allclose(small.z, whole.z, atol=1e-10, rtol=0)
    np.testing.assert_allclose(small.sigma, whole.sigma, rtol=1e-10)


def test_too_few_images_for_the_graph_is_refused():
    with pytest.raises(ValueError, match="more than 3 images"):
        T.transclip(np.eye(3), np.eye(3), CLIP)


def test_underflow_neither_empties_a_row_nor_a_class():
    """Where every term of a row underflows in the product form y^λ exp(E / C) (a variance so small
    that the log-likelihoods run to -1e6, a prior with exact zeros), the log-domain z-step still
    gives a distribution over the classes the prior allows; a class left with no mass at all keeps
    its previous mean instead of 0/0 (the small demo's 8-image corrupted sets reached both)."""
    from scipy import sparse

    loglik = np.array([[-1e6, -1e6 - 50.0, -2e6], [-3e6, -1e6, -1e6]])
    prior = np.array([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
    with np.errstate(all="ignore"):
        naive = prior * np.exp(loglik / T.TEMPERATURE)
        assert np.isnan(naive / naive.sum(axis=1, keepdims=True)).all()  # the product form is 0/0 here
    z = T.z_step(loglik, T.log_prior(prior), prior.copy(), sparse.csr_matrix((2, 2)), k=3, chunk=1)
    np.testing.assert_allclose(z.sum(axis=1), 1.0)
    assert z[0, 2] == 0.0 and z[1, 0] == 0.0  # a class the prior rules out stays out
    np.testing.assert_allclose(z[0, :2], np.exp([0, -1]) / np.exp([0, -1]).sum())  # exp(Δ / C) with Δ = -50
    x = np.eye(3)
    previous = np.full((3, 3), 1 / np.sqrt(3))
    mu = T.mu_step(x, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]), previous)
    np.testing.assert_allclose(mu[2], previous[2])  # no mass: the previous mean
    np.testing.assert_allclose(mu[0], np.array([2, 0, 1]) / np.sqrt(5))  # (x0 + x2 / 2) / 1.5, normalised


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A store, its OOD store and a probe trained on it, then `evaluate --transclip` into a report
    folder (JSON, Markdown, figures) and a predictions file (HDF5)."""
    from click.testing import CliRunner
    from conftest import write_store

    from lpclip_cache.cli import main

    base = tmp_path_factory.mktemp("transclip")
    centres, labels, clean, views = clustered_embeddings(120, 4, 16, 0.35, seed=7, views=2)
    store = write_store(base / "test.zarr", clean, centres, labels, weak=views, strong=views, scale=20.0,
                        shard_size=32)
    _, _, other, _ = clustered_embeddings(60, 4, 16, 0.35, seed=8)
    ood = write_store(base / "ood.zarr", other, centres, np.zeros(60, np.int64), scale=20.0, shard_size=32)
    run = base / "run"
    assert CliRunner().invoke(main, ["train", "--store", str(store), "--out", str(run), "--epochs", "2",
                                     "--quiet"]).exit_code == 0
    result = CliRunner().invoke(main, ["evaluate", "--run", str(run), "--store", str(store), "--ood", str(ood),
                                       "--transclip", "--report", str(base / "report"), "--predictions",
                                       str(base / "predictions.h5"), "--json"])
    assert result.exit_code == 0, result.stderr
    return SimpleNamespace(store=store, ood=ood, run=run, base=base, report=json.loads(result.stdout),
                           table=result.stdout)


def test_evaluate_scores_transclip_like_any_method(scored):
    """`evaluate --transclip` adds both methods to every store's rows, OOD included, and their
    scores are those of the solver run on the store's own embeddings and head."""
    from lpclip_cache import metrics
    from lpclip_cache.runs import load_run
    from lpclip_cache.store import FeatureStore

    report = scored.report
    assert report["methods"][-2:] == ["transclip", "transclip-probe"]
    store = FeatureStore(scored.store)
    emb, labels = store.read("clean/emb").astype(np.float64), store.labels()
    run = load_run(scored.run)
    zero_shot = T.transclip(emb, run.head, run.teacher_scale).z
    assert run.teacher_scale.factor != 100.0  # the store's own teacher: CLIP's 100 would be another prior
    assert not np.allclose(zero_shot, T.transclip(emb, run.head, CLIP).z, atol=1e-4)
    atop = T.transclip(emb, run.head, initial=softmax(run.member_logits(emb, None)[0], np.float64)).z
    entry = report["stores"][str(scored.store)]
    assert entry["transclip"]["accuracy"] == pytest.approx(metrics.accuracy(zero_shot, labels), abs=1e-12)
    assert entry["transclip-probe"]["accuracy"] == pytest.approx(metrics.accuracy(atop, labels), abs=1e-12)
    assert entry["transclip"]["ece"] == pytest.approx(metrics.ece(zero_shot, labels, n_bins=15), abs=1e-9)
    ood = report["ood"][str(scored.ood)]
    assert 0.0 <= ood["transclip"]["auroc"] <= 1.0 and 0.0 <= ood["transclip-probe"]["auroc"] <= 1.0
    assert "transductive" in report["metrics"]["transclip"]
    folder = json.loads((scored.base / "report" / "report.json").read_text())
    assert folder["methods"] == report["methods"]
    assert "transclip-probe" in (scored.base / "report" / "report.md").read_text()


def test_transclip_rows_have_no_energy_score(scored):
    """Issue 30.6: TransCLIP's logits are log-assignments, whose log-sum-exp is 0 for every image, so
    its energy AUROC was 0.5 by construction. Its rows leave energy out (n/a, as its clusters are);
    the other rows keep it, and the report's conventions say why."""
    ood = scored.report["ood"][str(scored.ood)]
    for method in ("transclip", "transclip-probe"):
        assert set(ood[method]["scores"]) == {"msp", "entropy", "max_logit"}
    assert set(ood["probe"]["scores"]) == set(ood["teacher"]["scores"]) == {"msp", "entropy", "max_logit", "energy"}
    assert "no energy score (n/a" in scored.report["metrics"]["transclip"]


def test_predictions_file_holds_each_methods_probabilities_per_image(scored):
    """`evaluate --predictions` writes, per store, the valid rows' keys and labels and every
    method's probabilities: TransCLIP's are the solver's assignments on that store alone (the OOD
    store too), and the report's accuracy is recomputed from the file."""
    import h5py

    from lpclip_cache import metrics
    from lpclip_cache.runs import load_run
    from lpclip_cache.store import FeatureStore

    run = load_run(str(scored.run))
    with h5py.File(scored.base / "predictions.h5", "r") as handle:
        assert json.loads(handle.attrs["lpclip_cache_predictions"])["methods"] == scored.report["methods"]
        for group_name, path in (("stores/0", scored.store), ("ood/0", scored.ood)):
            group = handle[group_name]
            store = FeatureStore(path)
            valid = store.read("valid")
            assert group.attrs["path"] == str(path)
            assert [k.decode() for k in group["keys"][()]] == [str(k) for k in store.read("keys")[valid]]
            assert group["classes"][()].tolist() == list(range(len(run.head)))
            emb = store.read("clean/emb")[valid]
            assert set(group["probs"]) == set(scored.report["methods"])
            for method in scored.report["methods"]:
                np.testing.assert_allclose(group["probs"][method][()].sum(axis=1), 1.0, atol=1e-5)
            np.testing.assert_allclose(group["probs/transclip"][()], T.transclip(emb, run.head, run.teacher_scale).z,
                                       atol=1e-6)
        labels = handle["stores/0/labels"][()]
        np.testing.assert_array_equal(labels, FeatureStore(scored.store).labels()[FeatureStore(scored.store).read(
            "valid")])
        entry = scored.report["stores"][str(scored.store)]
        for method in ("teacher", "probe", "transclip", "transclip-probe"):
            probs = handle["stores/0/probs"][method][()].astype(np.float64)
            assert metrics.accuracy(probs, labels) == pytest.approx(entry[method]["accuracy"], abs=1e-12)
        assert (handle["ood/0/labels"][()] == -1).all()  # OOD rows are scored without labels


def test_predictions_file_refusals_leave_what_exists(scored, tmp_path):
    """A predictions path that is not .h5 is one line; a file there that evaluate did not write is
    refused and left as it was; one it wrote is replaced with --overwrite."""
    from click.testing import CliRunner

    from lpclip_cache.cli import main

    base = ["evaluate", "--run", str(scored.run), "--store", str(scored.store)]
    wrong = CliRunner().invoke(main, [*base, "--predictions", str(tmp_path / "p.json")])
    assert wrong.exit_code == 3 and "should end in .h5 or .hdf5" in wrong.stderr
    assert not (tmp_path / "p.json").exists()
    foreign = tmp_path / "p.h5"
    foreign.write_bytes(b"not ours")
    refused = CliRunner().invoke(main, [*base, "--predictions", str(foreign), "--overwrite"])
    assert refused.exit_code == 5 and "not a predictions file written by lpclip-cache" in refused.stderr
    assert foreign.read_bytes() == b"not ours" and len(refused.stderr.splitlines()) == 1
    ours = tmp_path / "q.h5"
    assert CliRunner().invoke(main, [*base, "--predictions", str(ours)]).exit_code == 0
    again = CliRunner().invoke(main, [*base, "--predictions", str(ours)])
    assert again.exit_code == 5 and "already exists" in again.stderr
    assert CliRunner().invoke(main, [*base, "--predictions", str(ours), "--overwrite"]).exit_code == 0


def test_a_store_too_small_for_the_graph_is_one_line(scored, tmp_path):
    from click.testing import CliRunner
    from conftest import write_store

    from lpclip_cache.cli import main

    centres, labels, clean, _ = clustered_embeddings(3, 4, 16, 0.35, seed=9)
    tiny = write_store(tmp_path / "tiny.zarr", clean, centres, labels, scale=20.0, shard_size=32)
    result = CliRunner().invoke(main, ["evaluate", "--run", str(scored.run), "--store", str(tiny), "--transclip",
                                       "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 5 and "needs more than 3" in result.stderr and len(result.stderr.splitlines()) == 1


def test_evaluate_transclip_on_a_store_with_a_constant_dimension(scored, tmp_path):
    """Through evaluate: a store whose embeddings are 0 in one dimension (σ_d = 0 there) used to
    fail with "probs contains NaN"; now its TransCLIP rows are scored."""
    from click.testing import CliRunner
    from conftest import write_store

    from lpclip_cache.cli import main

    centres = clustered_embeddings(120, 4, 16, 0.35, seed=7)[0]  # the scored store's classes
    _, labels, clean, _ = clustered_embeddings(60, 4, 16, 0.35, seed=10, centres=centres)
    clean[:, 5] = 0.0
    clean /= np.linalg.norm(clean, axis=1, keepdims=True)
    flat = write_store(tmp_path / "flat.zarr", clean, centres, labels, scale=20.0, shard_size=32)
    result = CliRunner().invoke(main, ["evaluate", "--run", str(scored.run), "--store", str(flat), "--transclip",
                                       "--out", str(tmp_path / "r.json"), "--json"])
    assert result.exit_code == 0, result.stderr
    entry = json.loads(result.stdout)["stores"][str(flat)]
    assert entry["transclip"]["accuracy"] > 0.5 and entry["transclip-probe"]["accuracy"] > 0.5


def test_a_large_solve_shows_its_rounds_and_a_small_one_stays_quiet(scored, tmp_path, monkeypatch):
    """From ``PROGRESS_FROM`` images x classes on, evaluate shows each solve's rounds on stderr (rate,
    ETA, the round count); below it, nothing."""
    from click.testing import CliRunner

    from lpclip_cache.cli import main

    def evaluate() -> str:
        result = CliRunner().invoke(main, ["evaluate", "--run", str(scored.run), "--store", str(scored.store),
                                           "--transclip", "--out", str(tmp_path / "r.json"), "--overwrite"])
        assert result.exit_code == 0, result.stderr
        return result.stderr

    assert evaluate() == ""
    monkeypatch.setattr(T, "PROGRESS_FROM", 120 * 4)  # the test store's images x classes
    lines = evaluate().splitlines()
    rounds = T.OUTER_ITERATIONS + 1
    assert [line.split(":")[0] for line in lines] == ["transclip test.zarr", "transclip-probe test.zarr"]
    assert all(f"{rounds}/{rounds} rounds (100.0%)" in line and "done in" in line for line in lines)


def test_a_recipe_asks_for_transclip_in_its_evaluate_table():
    from pathlib import Path

    from lpclip_cache.errors import InputError
    from lpclip_cache.recipe import load_recipe, plan

    demo = Path(__file__).resolve().parents[1] / "pipelines" / "demo.toml"

    def asked(*overrides: str) -> dict[str, bool]:
        return {s.name: s.options.get("transclip", False) for s in plan(load_recipe(demo, [*overrides, "out=o"]))
                if s.kind == "evaluate"}

    # the demo asks for it in LP-CLIP's evaluation alone: zero-shot TransCLIP is the same in every report
    assert asked() == {"lpclip": True, "ensemble": False, "supervised": False}
    assert asked("evaluate.transclip=true") == {"lpclip": True, "ensemble": True, "supervised": True}
    assert asked('evaluate.transclip=["ensemble", "supervised"]') == {"lpclip": False, "ensemble": True,
                                                                      "supervised": True}
    plain = plan(load_recipe(demo, ["evaluate.transclip=false", "out=o"]))
    assert all("transclip" not in s.options for s in plain if s.kind == "evaluate")  # earlier stamps still match
    with pytest.raises(InputError, match="transclip should be true, false or a list of probe names"):
        load_recipe(demo, ['evaluate.transclip="yes"', "out=o"])
    with pytest.raises(InputError, match="transclip names no probe 'lp': name tables of"):
        load_recipe(demo, ['evaluate.transclip=["lp"]', "out=o"])
