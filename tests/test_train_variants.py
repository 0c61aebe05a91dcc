"""Training at any size and its variants: streaming, bounded memory, loss variants, ensembles."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from conftest import clustered_embeddings, unit, write_store

from lpclip_cache.probe import member_batches, soft_cross_entropy
from lpclip_cache.runs import load_run
from lpclip_cache.sampling import Buffer
from lpclip_cache.training import TrainConfig, train
from lpclip_cache.zeroshot import TeacherScale


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("variants")
    rng = np.random.default_rng(0)
    centres, labels, clean, views = clustered_embeddings(1200, 5, 16, spread=0.2, seed=0, views=4)
    teacher = unit(centres + 0.3 * rng.normal(size=centres.shape))
    path = write_store(base / "s.zarr", clean, teacher, labels, views[:, :2], views[:, 2:], scale=20)
    scrambled = write_store(base / "scrambled.zarr", clean, teacher, rng.permutation(labels), views[:, :2],
                            views[:, 2:], scale=20)
    return {"base": base, "store": path, "scrambled": scrambled, "clean": clean, "labels": labels}


def weights_of(path):
    run = load_run(path)
    return run.weight, run.bias


def test_streaming_and_in_memory_train_the_same_probe(stores):
    base = stores["base"]
    common = dict(store=str(stores["store"]), epochs=3, init="random", lr=1e-2, progress=False, seed=4)
    streamed = train(TrainConfig(out=str(base / "streamed"), memory_budget=0, **common))
    loaded = train(TrainConfig(out=str(base / "loaded"), **common))
    assert streamed["streamed"] and not loaded["streamed"]
    for a, b in zip(weights_of(base / "streamed"), weights_of(base / "loaded")):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("members", "targets", "classes_major"), [(1, "hard", True), (3, "soft", True),
                                                                    (1, "hard", False)])
def test_device_path_run_on_the_cpu_trains_the_cpu_paths_probe(stores, members, targets, classes_major,
                                                                monkeypatch):
    """``train --device`` runs one code path on any device; off the CPU each batch's gradient is one
    block (one product each way) instead of cache-sized blocks. That path, run here on the CPU
    with ``block_rows`` set as a GPU sets it, draws the same pairs in the same order and trains the
    same probe to 1e-4 (float32, summation order apart), streamed or held whole, for hard and soft
    targets, an ensemble, and both logit layouts."""
    import lpclip_cache.probe as probe

    if not classes_major:
        monkeypatch.setattr(probe, "CLASSES_MAJOR_UP_TO", 0)
    base = stores["base"] / f"device-{members}-{targets}-{classes_major}"
    common = dict(store=str(stores["store"]), epochs=4, lr=1e-2, progress=False, seed=2, ensemble=members,
                  targets=targets, batch_size=200, device="cpu")
    cpu = train(TrainConfig(out=str(base / "cpu"), **common))
    device = train(TrainConfig(out=str(base / "device"), block_rows=200, **common))
    streamed = train(TrainConfig(out=str(base / "streamed"), block_rows=200, memory_budget=0, **common))
    for a, b, c in zip(weights_of(base / "cpu"), weights_of(base / "device"), weights_of(base / "streamed")):
        np.testing.assert_allclose(a, b, atol=1e-4)
        np.testing.assert_allclose(a, c, atol=1e-4)
    assert cpu["final_loss"] == pytest.approx(device["final_loss"], abs=1e-5)
    assert streamed["streamed"] and load_run(base / "device").info["device"] == "cpu"


@pytest.mark.parametrize(("device", "message"), [("cuda", "no CUDA device is visible"),
                                                 ("tpu", "unknown device 'tpu'")])
def test_train_on_a_device_that_is_not_there_is_one_line(stores, tmp_path, device, message):
    from conftest import run_cli

    done = run_cli("train", "--store", str(stores["store"]), "--out", str(tmp_path / "r"), "--device", device)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


def peak_bytes(store, out, memory_budget):
    tracemalloc.start()
    train(TrainConfig(store=str(store), out=str(out), epochs=1, progress=False, memory_budget=memory_budget))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_streaming_memory_stays_flat_as_the_store_grows_tenfold(tmp_path):
    sizes = {}
    for name, n in (("small", 5000), ("large", 50000)):
        _, labels, clean, views = clustered_embeddings(n, 4, 64, spread=0.3, seed=1, views=4)
        sizes[name] = write_store(tmp_path / f"{name}.zarr", clean, unit(np.eye(4, 64)), labels,
                                  views[:, :2], views[:, 2:], shard_size=256)
    streamed = {k: peak_bytes(p, tmp_path / f"s-{k}", 0) for k, p in sizes.items()}
    whole = {k: peak_bytes(p, tmp_path / f"w-{k}", None) for k, p in sizes.items()}
    # in memory, the peak follows the store (which shows the measurement sees the arrays) ...
    assert whole["large"] > 3 * whole["small"]
    # ... streamed, it stays at about one buffer of shards
    assert streamed["large"] < 1.5 * streamed["small"]
    assert streamed["large"] < whole["large"] / 3


# what each configuration reads into memory: (array, views kept of it or None for no view axis)
READS = {
    "hard targets, one view": ({"max_views": 1}, [("valid", None), ("weak/label", 1), ("weak/conf", 1),
                                                   ("strong/emb", 1)]),
    "soft targets": ({"targets": "soft"}, [("valid", None), ("weak/label", 2), ("weak/conf", 2), ("strong/emb", 2),
                                          ("weak/emb", 2)]),
    "supervised, one view": ({"method": "supervised", "max_views": 1},
                             [("valid", None), ("weak/label", 1), ("weak/conf", 1), ("weak/emb", 1), ("labels", None)]),
}


@pytest.mark.parametrize("case", READS)
def test_the_memory_budget_counts_exactly_what_is_read(stores, case, tmp_path):
    """A store is streamed exactly when what training would hold in memory exceeds the budget:
    the first --max-views views of each array it draws from, the teacher's labels and confidences,
    the valid mask and (supervised) the true labels, counted here from the arrays' own shapes."""
    import zarr

    from lpclip_cache.sampling import PairSource
    from lpclip_cache.store import FeatureStore
    from lpclip_cache.training import sides

    options, reads = READS[case]
    group = zarr.open_group(str(stores["store"]), mode="r")
    expected = 0
    for name, views in reads:
        array = group[name]
        per_view = array.dtype.itemsize * int(np.prod(array.shape[2:] if views else array.shape[1:]))
        expected += array.shape[0] * per_view * (views or 1)
    config = TrainConfig(store=str(stores["store"]), out="", **options)
    store = FeatureStore(config.store)

    def source(budget: int) -> PairSource:
        return PairSource(store, *sides(store, config), config.max_views, need_teacher_emb=config.targets == "soft",
                          need_truth=config.method == "supervised", memory_budget=budget)

    whole = source(expected)
    assert not whole.streaming
    assert sorted(whole.cache) == sorted(name for name, _ in reads)
    assert sum(array.nbytes for array in whole.cache.values()) == expected
    assert source(expected - 1).streaming
    budget = {"memory_budget": expected - 1, "epochs": 1, "progress": False}
    for streamed, out in ((True, "streamed"), (False, "whole")):
        train(TrainConfig(store=str(stores["store"]), out=str(tmp_path / out), **{**options, **budget}))
        assert load_run(tmp_path / out).info["pairs"]["streamed"] is streamed
        budget["memory_budget"] = expected
    np.testing.assert_array_equal(load_run(tmp_path / "streamed").weight, load_run(tmp_path / "whole").weight)


def test_soft_cross_entropy_matches_its_formula_by_hand():
    import torch

    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    targets = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    weights = torch.tensor([1.0, 0.5])
    # log softmax rows: [log(e/(e+1)), log(1/(e+1))], [log(1/(1+e^2)), log(e^2/(1+e^2))]
    row1 = -(0.75 * math.log(math.e / (math.e + 1)) + 0.25 * math.log(1 / (math.e + 1)))
    row2 = -(0.5 * math.log(1 / (1 + math.e**2)) + 0.5 * math.log(math.e**2 / (1 + math.e**2)))
    expected = (1.0 * row1 + 0.5 * row2) / 1.5
    assert float(soft_cross_entropy(logits, targets, weights)) == pytest.approx(expected, rel=1e-6)


def hand_buffer():
    emb = unit(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))[:, None].astype(np.float16)
    arrays = {
        "weak/label": np.array([[0], [1], [1]]),
        "weak/conf": np.array([[0.9], [0.4], [0.6]], np.float32),
        "weak/emb": emb,
        "strong/emb": emb,
        "labels": np.array([0, 0, 1]),
    }
    return Buffer(arrays, np.arange(3), "weak", "strong", 1, 1)


@pytest.mark.parametrize(
    ("options", "expected_weights"),
    [
        ({}, [0.9, 0.4, 0.6]),
        ({"weighting": "none"}, [1.0, 1.0, 1.0]),
        ({"threshold": 0.5}, [0.9, 0.0, 0.6]),
        ({"threshold": 0.5, "weighting": "none"}, [1.0, 0.0, 1.0]),
        ({"method": "supervised", "threshold": 0.5}, [1.0, 1.0, 1.0]),
    ],
)
def test_sample_weights_of_each_variant(options, expected_weights):
    config = TrainConfig(store="", out="", **options)
    head = np.eye(2, dtype=np.float32)
    _, targets, weights = member_batches(hand_buffer(), config, np.random.default_rng(0), head, TeacherScale(10.0))
    np.testing.assert_allclose(weights.numpy()[0], expected_weights, rtol=1e-6)
    expected_targets = [0, 0, 1] if options.get("method") == "supervised" else [0, 1, 1]
    assert targets.numpy()[0].tolist() == expected_targets


def test_soft_targets_are_the_teachers_distribution():
    config = TrainConfig(store="", out="", targets="soft")
    head = np.eye(2, dtype=np.float32)
    _, targets, _ = member_batches(hand_buffer(), config, np.random.default_rng(0), head, TeacherScale(10.0, 2.0))
    emb = hand_buffer().arrays["weak/emb"][:, 0].astype(np.float64)
    logits = 10.0 * emb @ head.T / 2.0
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(targets.numpy()[0], expected, rtol=1e-3)


def test_variants_are_recorded_and_use_the_views_they_ask_for(stores):
    base = stores["base"]
    train(TrainConfig(store=str(stores["store"]), out=str(base / "weak"), student="weak", max_views=1, epochs=1,
                      progress=False))
    info = load_run(base / "weak").info
    assert info["pairs"]["student_side"] == "weak" and info["pairs"]["student_views"] == 1
    assert info["pairs"]["teacher_views"] == 1
    assert info["loss"].startswith("sum_i w_i CE(g(z_weak_i), argmax p_teacher(z_weak_i))")


def test_ensemble_trains_distinct_members_in_one_pass(stores):
    base = stores["base"]
    summary = train(TrainConfig(store=str(stores["store"]), out=str(base / "ens"), ensemble=3, init="random",
                                lr=1e-2, epochs=2, progress=False))
    run = load_run(base / "ens")
    assert summary["ensemble"] == 3 and run.members == 3 and run.weight.shape == (3, 5, 16)
    assert not np.allclose(run.weight[0], run.weight[1])
    emb = stores["clean"][:50]
    logits = run.member_logits(emb).astype(np.float64)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    member_probs = exp / exp.sum(-1, keepdims=True)
    np.testing.assert_allclose(run.probe_probs(emb), member_probs.mean(0), rtol=1e-5)
    information = run.mutual_information(emb)
    assert (information >= -1e-9).all() and information.max() > 0


def test_ensemble_mutual_information_is_an_ood_score(stores, tmp_path):
    from lpclip_cache.evaluation import evaluate

    ood = write_store(tmp_path / "ood.zarr", unit(np.random.default_rng(3).normal(size=(200, 16))),
                      unit(np.eye(5, 16)), np.full(200, -1), scale=20)
    train(TrainConfig(store=str(stores["store"]), out=str(tmp_path / "ens"), ensemble=4, init="random", lr=1e-2,
                      epochs=2, progress=False))
    report = evaluate(str(tmp_path / "ens"), [str(stores["store"])], [str(ood)])
    probe = report["ood"][str(ood)]["probe"]
    assert report["ensemble"] == 4
    assert 0.0 <= probe["auroc_mutual_information"] <= 1.0 and 0.0 <= probe["fpr95_mutual_information"] <= 1.0


@pytest.mark.parametrize("options", [{"targets": "soft"}, {"ensemble": 2}, {"threshold": 0.3, "weighting": "none"}])
def test_every_lpclip_variant_is_blind_to_true_labels(stores, options):
    base = stores["base"]
    name = "-".join(f"{k}{v}" for k, v in options.items())
    runs = []
    for which in ("store", "scrambled"):
        out = base / f"blind-{name}-{which}"
        train(TrainConfig(store=str(stores[which]), out=str(out), epochs=2, init="random", lr=1e-2, progress=False,
                          **options))
        runs.append(weights_of(out))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("classes_major", [True, False])
@pytest.mark.parametrize("soft", [False, True])
def test_closed_form_step_equals_autograd_of_the_loss(soft, classes_major, monkeypatch):
    import torch

    from lpclip_cache import probe
    from lpclip_cache.probe import probe_step, weighted_cross_entropy

    # both layouts of the logits (classes x rows for few classes, rows x classes for many)
    monkeypatch.setattr(probe, "CLASSES_MAJOR_UP_TO", 1000 if classes_major else 0)

    generator = torch.Generator().manual_seed(0)
    members, batch, classes, dim = 2, 7, 4, 5
    weight = torch.randn(members, classes, dim, generator=generator)
    bias = torch.randn(members, classes, generator=generator)
    inputs = torch.randn(members, batch, dim, generator=generator)
    weights = torch.rand(members, batch, generator=generator)
    if soft:
        targets = torch.softmax(torch.randn(members, batch, classes, generator=generator), dim=-1)
    else:
        targets = torch.randint(0, classes, (members, batch), generator=generator)
    index = torch.arange(members * batch).reshape(members, batch)
    # blocks of 3 rows: the step's accumulation over blocks is part of what is checked
    loss = probe_step(weight, bias, inputs.reshape(-1, dim).half(), index, targets, weights, soft, block=3)
    inputs = inputs.half().float()  # the reference sees the same fp16-rounded embeddings
    reference_weight = weight.detach().clone().requires_grad_(True)
    reference_bias = bias.detach().clone().requires_grad_(True)
    losses = []
    for m in range(members):
        logits = inputs[m] @ reference_weight[m].T + reference_bias[m]
        fn = soft_cross_entropy if soft else weighted_cross_entropy
        losses.append(fn(logits, targets[m], weights[m]))
    total = torch.stack(losses).mean()
    total.backward()
    assert loss == pytest.approx(float(total.detach()), rel=1e-5)
    torch.testing.assert_close(weight.grad, reference_weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bias.grad, reference_bias.grad, rtol=1e-5, atol=1e-6)


def test_ablate_trains_every_variant_into_one_table(stores, tmp_path):
    import json

    from click.testing import CliRunner

    from lpclip_cache.cli import main

    result = CliRunner().invoke(main, ["ablate", "--store", str(stores["store"]), "--eval", str(stores["store"]),
                                       "--out", str(tmp_path / "abl"), "--epochs", "1", "--thresholds", "0.5",
                                       "--quiet"])
    assert result.exit_code == 0, result.output + result.stderr
    table = json.loads((tmp_path / "abl" / "ablation.json").read_text())["rows"]
    assert list(table) == ["teacher", "lpclip", "no-weighting", "soft-targets", "threshold-0.5", "no-consistency",
                           "random-init", "views-1", "supervised"]
    assert load_run(tmp_path / "abl" / "runs" / "views-1").info["pairs"]["student_views"] == 1
    assert load_run(tmp_path / "abl" / "runs" / "threshold-0.5").info["config"]["threshold"] == 0.5
    for row in table.values():
        assert 0.0 <= row["stores"][str(stores["store"])]["accuracy"] <= 1.0
    assert "| supervised |" in (tmp_path / "abl" / "ablation.md").read_text()


def test_label_free_selection_holds_out_shards_and_never_reads_labels(stores, tmp_path):
    import json

    from lpclip_cache.selection import SelectConfig, select

    results = []
    for which in ("store", "scrambled"):
        out = tmp_path / f"sel-{which}"
        results.append(select(SelectConfig(store=str(stores[which]), out=str(out), lrs=(1e-3, 3e-2),
                                           weight_decays=(0.0,), epochs=3, holdout=0.2, progress=False)))
    first, second = results
    assert first["chosen"] == second["chosen"] and first["grid"] == second["grid"]
    for a, b in zip(weights_of(tmp_path / "sel-store"), weights_of(tmp_path / "sel-scrambled")):
        np.testing.assert_array_equal(a, b)
    assert len(first["grid"]) == 2 and all(len(row["curve"]) == 3 for row in first["grid"])
    best = max(first["grid"], key=lambda row: row["holdout_agreement"])
    assert first["chosen"]["holdout_agreement"] == best["holdout_agreement"]
    info = load_run(tmp_path / "sel-store").info
    assert info["config"]["lr"] == first["chosen"]["lr"] and info["config"]["epochs"] == first["chosen"]["best_epoch"]
    assert info["pairs"]["held_out_shards"] == []  # the chosen setting is retrained on every shard
    assert json.loads((tmp_path / "sel-store" / "selection.json").read_text())["chosen"] == first["chosen"]


def test_held_out_shards_are_not_trained_on(stores, tmp_path):
    from lpclip_cache.sampling import holdout_shards

    summary = train(TrainConfig(store=str(stores["store"]), out=str(tmp_path / "h"), holdout=0.25, epochs=1,
                                progress=False))
    held = load_run(tmp_path / "h").info["pairs"]["held_out_shards"]
    assert held == sorted(holdout_shards(19, 0.25, 0)) and len(held) == 5
    assert summary["samples"] == 1200 - 64 * len(held) + (64 * 19 - 1200 if 18 in held else 0)


PAIRING_VIEWS = {"weak+strong": (2, 2), "weak only": (2, 0), "strong only": (0, 2), "clean only": (0, 0)}
PAIRING_SCALE, PAIRING_TEMPERATURE = 20.0, 2.0
PAIRING_CONFIGS = {"lpclip": {}, "supervised": {"method": "supervised"}, "student weak": {"student": "weak"},
                   "soft, unweighted": {"targets": "soft", "weighting": "none"}}


@pytest.fixture(scope="module")
def pairing_stores(tmp_path_factory):
    """One store per (weak views, strong views) count; every view of a kind of a sample is the same
    embedding, and the clean, weak and strong embeddings differ, so a full-batch epoch is one
    deterministic step whose result shows which arrays fed each side. The zero-shot-initialised
    student starts from the teacher's logits at T = 2, so its outputs differ from the soft targets
    only through the views it reads."""
    base = tmp_path_factory.mktemp("pairing")
    rng = np.random.default_rng(5)
    centres, labels, clean, _ = clustered_embeddings(200, 4, 16, spread=0.5, seed=5)
    head = unit(centres + 0.4 * rng.normal(size=centres.shape))
    weak, strong = (unit(clean + 0.4 * rng.normal(size=clean.shape)) for _ in range(2))
    paths = {}
    for name, (kw, ks) in PAIRING_VIEWS.items():
        paths[name] = write_store(base / f"{kw}-{ks}.zarr", clean, head, labels,
                                  np.repeat(weak[:, None], kw, 1) if kw else None,
                                  np.repeat(strong[:, None], ks, 1) if ks else None,
                                  scale=PAIRING_SCALE, temperature=PAIRING_TEMPERATURE)
    return base, paths


def expected_sides(store_path, options):
    """The sides docs/method.md states, read from which view arrays the store actually holds."""
    import zarr

    group = zarr.open_group(str(store_path), mode="r")
    has = {kind: f"{kind}/emb" in group and group[f"{kind}/emb"].shape[1] > 0 for kind in ("weak", "strong")}
    teacher = "weak" if has["weak"] else "clean"
    if options.get("method") == "supervised" or options.get("student") == "weak" or not has["strong"]:
        return group, teacher, teacher
    return group, teacher, "strong"


def train_by_hand(group, teacher, student, options, epochs, lr):
    """Full-batch AdamW with autograd on the named views, read straight from the store's arrays."""
    import torch

    def first_view(name):
        array = np.asarray(group[name][:])
        return array if name.startswith("clean/") else array[:, 0]

    x = torch.from_numpy(first_view(f"{student}/emb").astype(np.float32))
    head = np.asarray(group["head"][:])
    if options.get("init") == "random":  # the trainer's: torch's Linear under the run's seed (0)
        torch.manual_seed(0)
        layer = torch.nn.Linear(head.shape[1], head.shape[0])
        weight = layer.weight.detach().clone().requires_grad_(True)
        bias = layer.bias.detach().clone().requires_grad_(True)
    else:  # zero-shot: the teacher's logits, A = (s / T) W_t
        weight = torch.tensor(head * PAIRING_SCALE / PAIRING_TEMPERATURE, requires_grad=True)
        bias = torch.zeros(head.shape[0], requires_grad=True)
    if options.get("method") == "supervised":
        target = torch.from_numpy(np.asarray(group["labels"][:]).astype(np.int64))
        w = torch.ones(len(target))
    elif options.get("targets") == "soft":
        emb = first_view(f"{teacher}/emb").astype(np.float64)
        logits = PAIRING_SCALE / PAIRING_TEMPERATURE * emb @ head.T.astype(np.float64)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        target = torch.from_numpy((probs / probs.sum(1, keepdims=True)).astype(np.float32))
        w = torch.ones(len(target))
    else:
        target = torch.from_numpy(first_view(f"{teacher}/label").astype(np.int64))
        w = torch.from_numpy(first_view(f"{teacher}/conf").astype(np.float32))
    optimizer = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=0.0)
    for _ in range(epochs):
        optimizer.zero_grad()
        per_sample = torch.nn.functional.cross_entropy(x @ weight.T + bias, target, reduction="none")
        ((w * per_sample).sum() / w.sum()).backward()
        optimizer.step()
    return weight.detach().numpy(), bias.detach().numpy()


@pytest.mark.parametrize("config_name", PAIRING_CONFIGS)
@pytest.mark.parametrize("store_name", PAIRING_VIEWS)
def test_run_json_names_the_views_actually_paired(pairing_stores, store_name, config_name):
    import re

    from safetensors.numpy import load_file

    base, paths = pairing_stores
    options = PAIRING_CONFIGS[config_name]
    if options.get("targets") == "soft" and PAIRING_VIEWS[store_name][1] == 0:
        # soft targets read on the student's own view: from the zero-shot init the student already
        # gives the teacher's probabilities (zero gradient), so start it from torch's init instead
        options = {**options, "init": "random"}
    out = base / f"run-{store_name}-{config_name}".replace(" ", "_").replace(",", "")
    train(TrainConfig(store=str(paths[store_name]), out=str(out), epochs=3, lr=1e-2, batch_size=256,
                      progress=False, **options))
    info = load_run(out).info
    group, teacher, student = expected_sides(paths[store_name], options)
    kw, ks = PAIRING_VIEWS[store_name]
    views = {"clean": 1, "weak": kw, "strong": ks}
    assert (info["pairs"]["teacher_side"], info["pairs"]["student_side"]) == (teacher, student)
    assert (info["pairs"]["teacher_views"], info["pairs"]["student_views"]) == (views[teacher], views[student])
    named = set(re.findall(r"z_(clean|weak|strong)_i", info["loss"]))
    assert f"g(z_{student}_i)" in info["loss"], info["loss"]
    assert named == ({student} if options.get("method") == "supervised" else {teacher, student}), info["loss"]
    if options.get("method") != "supervised":
        assert f"p_teacher(z_{teacher}_i)" in info["loss"], info["loss"]

    # the probe is the one trained by hand on exactly those views (and not on the others)
    tensors = load_file(str(out / "probe.safetensors"))
    weight, bias = train_by_hand(group, teacher, student, options, epochs=3, lr=1e-2)
    np.testing.assert_allclose(tensors["weight"], weight, atol=2e-5)
    np.testing.assert_allclose(tensors["bias"], bias, atol=2e-5)
    held = [side for side, count in views.items() if count]
    teachers = [teacher] if options.get("method") == "supervised" else [s for s in held if s != "strong"]
    for other in [(t, s) for t in teachers for s in held if (t, s) != (teacher, student)]:
        wrong, _ = train_by_hand(group, *other, options, epochs=3, lr=1e-2)
        assert np.abs(tensors["weight"] - wrong).max() > 1e-3, other
