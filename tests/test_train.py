"""Stage two: the loss, the probe, the run files, and that LP-CLIP never reads true labels."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import clustered_embeddings, write_store

from lpclip_cache.errors import StoreError
from lpclip_cache.probe import weighted_cross_entropy
from lpclip_cache.runs import load_run
from lpclip_cache.training import TrainConfig, train


def test_weighted_cross_entropy_matches_its_formula_by_hand():
    import torch

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([0, 0, 1])
    weights = torch.tensor([0.5, 1.0, 0.25])
    # CE_1 = log(1 + e^-2), CE_2 = log(1 + e^1), CE_3 = log 2
    ce = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(1)), math.log(2)]
    expected = (0.5 * ce[0] + 1.0 * ce[1] + 0.25 * ce[2]) / (0.5 + 1.0 + 0.25)
    assert float(weighted_cross_entropy(logits, targets, weights)) == pytest.approx(expected, rel=1e-6)
    # unit weights reduce to the plain mean cross-entropy
    assert float(weighted_cross_entropy(logits, targets, torch.ones(3))) == pytest.approx(sum(ce) / 3, rel=1e-6)
    # a zero-confidence sample does not count at all
    zeroed = weighted_cross_entropy(logits, targets, torch.tensor([0.0, 1.0, 0.0]))
    assert float(zeroed) == pytest.approx(ce[1], rel=1e-6)


@pytest.fixture
def separable(tmp_path):
    """Train and test stores of 8 well-separated classes in 32-d, with 3 weak and 3 strong views."""
    centres, labels, clean, views = clustered_embeddings(1200, 8, 32, spread=0.08, seed=0, views=6)
    _, test_labels, test_clean, _ = clustered_embeddings(400, 8, 32, spread=0.08, seed=1, centres=centres)
    rng = np.random.default_rng(5)
    random_head = rng.normal(size=(8, 32))
    random_head /= np.linalg.norm(random_head, axis=1, keepdims=True)
    return {
        "centres": centres,
        "labels": labels,
        "clean": clean,
        "views": views,
        "random_head": random_head,
        "train_good": write_store(tmp_path / "good.zarr", clean, centres, labels, views[:, :3], views[:, 3:]),
        "train_bad_teacher": write_store(tmp_path / "bad.zarr", clean, random_head, labels, views[:, :3], views[:, 3:]),
        "test_labels": test_labels,
        "test_clean": test_clean,
    }


def accuracy_of(run_path, emb, labels):
    return float((load_run(run_path).probe_probs(emb).argmax(1) == labels).mean())


def test_supervised_probe_separates_separable_embeddings(separable, tmp_path):
    # the teacher head is random here: only true labels can teach this probe
    train(TrainConfig(store=str(separable["train_bad_teacher"]), out=str(tmp_path / "sup"), method="supervised",
                      init="random", epochs=15, lr=1e-2, progress=False))
    assert accuracy_of(tmp_path / "sup", separable["test_clean"], separable["test_labels"]) > 0.98


def test_lpclip_probe_learns_from_a_good_teacher_without_labels(separable, tmp_path):
    summary = train(TrainConfig(store=str(separable["train_good"]), out=str(tmp_path / "lp"), init="random",
                                epochs=15, lr=1e-2, progress=False))
    assert accuracy_of(tmp_path / "lp", separable["test_clean"], separable["test_labels"]) > 0.98
    assert summary["teacher_agreement"] > 0.98


def test_lpclip_never_reads_true_labels(separable, tmp_path):
    d = separable
    scrambled = np.random.default_rng(9).permutation(d["labels"])
    hidden = np.full_like(d["labels"], -1)
    paths = []
    for name, labels in (("true", d["labels"]), ("scrambled", scrambled), ("hidden", hidden)):
        # a poor (random) teacher keeps the loss and its gradients far from zero
        store = write_store(tmp_path / f"{name}.zarr", d["clean"], d["random_head"], labels,
                            d["views"][:, :3], d["views"][:, 3:])
        train(TrainConfig(store=str(store), out=str(tmp_path / f"run-{name}"), epochs=2, init="random",
                          lr=1e-2, progress=False))
        paths.append(tmp_path / f"run-{name}")
    runs = [load_run(p) for p in paths]
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0].weight, other.weight)
        np.testing.assert_array_equal(runs[0].bias, other.bias)
    # the supervised reference does read them, and refuses a store without them
    with pytest.raises(StoreError, match="true labels"):
        train(TrainConfig(store=str(tmp_path / "hidden.zarr"), out=str(tmp_path / "sup"), method="supervised",
                          progress=False))


def test_zero_shot_init_starts_from_the_teacher(separable, tmp_path):
    store = separable["train_good"]
    train(TrainConfig(store=str(store), out=str(tmp_path / "run"), epochs=1, lr=1e-12, progress=False))
    run = load_run(tmp_path / "run")
    np.testing.assert_allclose(run.weight, 100.0 * separable["centres"], rtol=1e-5, atol=1e-5)
    emb = separable["clean"]
    np.testing.assert_allclose(run.probe_probs(emb), run.teacher_probs(emb), atol=1e-4)


def test_zero_shot_init_takes_the_teachers_temperature(separable, tmp_path):
    """The probe's zero-shot initialisation is the teacher's own logits, temperature included:
    A = (s / T) W_t, so before any step the probe's probabilities are the teacher's."""
    store = write_store(tmp_path / "warm.zarr", separable["clean"], separable["centres"], separable["labels"],
                        separable["views"][:, :3], separable["views"][:, 3:], scale=30.0, temperature=2.5)
    train(TrainConfig(store=str(store), out=str(tmp_path / "run"), epochs=1, lr=1e-12, progress=False))
    run = load_run(tmp_path / "run")
    assert run.teacher_scale.factor == pytest.approx(12.0)
    np.testing.assert_allclose(run.weight, 12.0 * separable["centres"], rtol=1e-5, atol=1e-5)
    emb = separable["clean"]
    np.testing.assert_allclose(run.probe_probs(emb), run.teacher_probs(emb), atol=1e-5)


def test_same_seed_same_probe_other_seed_other_probe(separable, tmp_path):
    store = str(separable["train_bad_teacher"])
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(TrainConfig(store=store, out=str(tmp_path / name), seed=seed, epochs=2, init="random", progress=False))
    a, b, c = (load_run(tmp_path / n) for n in "abc")
    np.testing.assert_array_equal(a.weight, b.weight)
    assert not np.array_equal(a.weight, c.weight)


def test_run_directory_holds_probe_and_curve(separable, tmp_path):
    from safetensors.numpy import load_file

    train(TrainConfig(store=str(separable["train_bad_teacher"]), out=str(tmp_path / "run"), epochs=4, lr=1e-2,
                      init="random", progress=False))
    tensors = load_file(str(tmp_path / "run" / "probe.safetensors"))
    assert tensors["weight"].shape == (8, 32) and tensors["bias"].shape == (8,)
    np.testing.assert_allclose(tensors["head"], separable["random_head"], rtol=1e-6)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    losses = [point["loss"] for point in info["curve"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert info["pairs"] == {"samples": 1200, "teacher_side": "weak", "teacher_views": 3,
                             "student_side": "strong", "student_views": 3, "streamed": False,
                             "held_out_shards": []}
    assert info["store"]["cache_key"] and info["config"]["method"] == "lpclip"


def test_missing_sides_fall_back_clean_teacher_weak_student(separable, tmp_path):
    d = separable
    only_weak = write_store(tmp_path / "w.zarr", d["clean"], d["centres"], d["labels"], weak=d["views"][:, :2])
    only_clean = write_store(tmp_path / "c.zarr", d["clean"], d["centres"], d["labels"])
    train(TrainConfig(store=str(only_weak), out=str(tmp_path / "rw"), epochs=1, progress=False))
    train(TrainConfig(store=str(only_clean), out=str(tmp_path / "rc"), epochs=1, progress=False))
    pairs_w = load_run(tmp_path / "rw").info["pairs"]
    pairs_c = load_run(tmp_path / "rc").info["pairs"]
    assert (pairs_w["teacher_side"], pairs_w["student_side"]) == ("weak", "weak")
    assert (pairs_c["teacher_side"], pairs_c["student_side"]) == ("clean", "clean")


def test_existing_out_is_refused_and_foreign_folders_never_deleted(separable, tmp_path):
    store = str(separable["train_good"])
    train(TrainConfig(store=store, out=str(tmp_path / "run"), epochs=1, progress=False))
    before = (tmp_path / "run" / "probe.safetensors").read_bytes()
    with pytest.raises(StoreError, match="already exists"):
        train(TrainConfig(store=store, out=str(tmp_path / "run"), epochs=1, seed=3, progress=False))
    assert (tmp_path / "run" / "probe.safetensors").read_bytes() == before
    train(TrainConfig(store=store, out=str(tmp_path / "run"), epochs=1, seed=3, overwrite=True, progress=False))
    assert (tmp_path / "run" / "probe.safetensors").read_bytes() != before
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(StoreError, match="refusing to delete"):
        train(TrainConfig(store=store, out=str(foreign), epochs=1, overwrite=True, progress=False))
    assert (foreign / "thesis.txt").read_text() == "precious"


@pytest.mark.parametrize("flushing_before", [False, True])
def test_denormals_are_flushed_only_while_training(flushing_before, tmp_path, monkeypatch):
    """Training flushes denormal floats (they halve the CPU GEMM's speed on peaked softmaxes) and
    gives the caller its setting back: flushing stays off where it was off, and on where the
    caller had turned it on (it used to be turned off unconditionally). torch has no getter for
    the setting, so it is read from its effect on a denormal, as training itself reads it."""
    import torch

    from lpclip_cache import probe, training

    centres, labels, clean, views = clustered_embeddings(256, 4, 16, 0.2, views=2)
    store = write_store(tmp_path / "s.zarr", clean, centres, labels, weak=views, strong=views)
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a denormal
    seen_in_training = []
    real_step = probe.probe_step

    def watched_step(*args, **kwargs):
        seen_in_training.append(float(tiny * 1.0) == 0.0)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(probe, "probe_step", watched_step)
    if not torch.set_flush_denormal(flushing_before):
        pytest.skip("this CPU cannot flush denormal floats")
    try:
        assert (float(tiny * 1.0) == 0.0) is flushing_before
        training.train(TrainConfig(store=str(store), out=str(tmp_path / "run"), epochs=1, progress=False))
        after = float(tiny * 1.0) == 0.0
    finally:
        torch.set_flush_denormal(False)  # this process's default, for the tests that follow
    assert seen_in_training and all(seen_in_training)
    assert after is flushing_before


def fitted(store, **params):
    """A LinearProbe fitted on a store's weak/strong pairs, as ``train`` feeds them."""
    from lpclip_cache.probe import LinearProbe
    from lpclip_cache.sampling import PairSource
    from lpclip_cache.store import FeatureStore

    probe = LinearProbe(**params)
    return probe.fit(PairSource(FeatureStore(store), "weak", "strong", **probe.pair_needs()))


def test_the_probe_is_an_estimator_and_train_fits_it(separable, tmp_path):
    """LinearProbe in scikit-learn's manner: its parameters are train's options with their defaults
    (and tol), get_params round-trips through set_params, fit on a store's pairs is the probe
    train saves, bit for bit, and predict_proba's rows are the run's probabilities, summing to 1."""
    from dataclasses import fields

    from lpclip_cache.probe import LinearProbe

    defaults = LinearProbe().get_params()
    shared = {spec.name: spec.default for spec in fields(TrainConfig) if spec.name in defaults}
    assert shared == {name: value for name, value in defaults.items() if name != "tol"}
    params = dict(epochs=3, lr=1e-2, init="random", ensemble=2, seed=4)
    probe = LinearProbe().set_params(**params)
    assert probe.get_params() == {**defaults, **params}
    assert LinearProbe(**probe.get_params()).get_params() == probe.get_params()
    with pytest.raises(ValueError, match="no parameter learning_rate"):
        probe.set_params(learning_rate=1.0)
    with pytest.raises(ValueError, match="not fitted"):
        probe.predict_proba(separable["test_clean"])

    store = separable["train_bad_teacher"]
    probe = fitted(store, tol=None, **params)
    train(TrainConfig(store=str(store), out=str(tmp_path / "run"), progress=False, **params))
    run = load_run(tmp_path / "run")
    np.testing.assert_array_equal(probe.coef_, run.weight)
    np.testing.assert_array_equal(probe.intercept_, run.bias)
    assert probe.coef_.shape == (2, 8, 32) and probe.n_iter_ == 3 and probe.history_ == run.info["curve"]
    probs = probe.predict_proba(separable["test_clean"])
    assert probs.shape == (400, 8)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(probs, run.probe_probs(separable["test_clean"]))
    np.testing.assert_array_equal(probe.predict(separable["test_clean"]), probs.argmax(1))


def test_the_probe_warns_when_its_loss_has_not_stopped_falling(separable):
    """ProbeConvergenceWarning: one epoch leaves nothing to judge, and a last epoch that still lowers
    the loss by more than tol has not converged; a probe whose loss stopped falling (a perfect
    teacher: zero loss), or one fitted with tol None (as train fits it), says nothing."""
    import warnings

    from lpclip_cache.probe import ProbeConvergenceWarning

    bad = separable["train_bad_teacher"]
    with pytest.warns(ProbeConvergenceWarning, match="after 1 epoch"):
        fitted(bad, epochs=1)
    with pytest.warns(ProbeConvergenceWarning, match="last epoch still lowered the loss"):
        fitted(bad, epochs=3, init="random", lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted(bad, epochs=3, init="random", lr=1e-2, tol=None)
        assert fitted(separable["train_good"], epochs=3).history_[-1]["loss"] == 0.0
