"""No silent success: options at their edges, recipes with typos, and outputs that cannot be
written. Each case gives a correct result or one clear line with a non-zero exit, and nothing
already written is damaged (docs/reliability.md, "Options at their edges")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import SCRIPT, UNPRIVILEGED, clustered_embeddings, write_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_faults_input import assert_error, invoke

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A 3-class store with 2 weak and 2 strong views whose teacher is never confident (logit scale 1),
    a one-image store, and a run trained on the first."""
    base = tmp_path_factory.mktemp("edges")
    centres, labels, clean, views = clustered_embeddings(60, 3, 16, 0.3, seed=0, views=2)
    unsure = write_store(base / "unsure.zarr", clean, centres, labels, weak=views, strong=views, scale=1.0,
                         shard_size=16)
    one = write_store(base / "one.zarr", clean[:1], centres, labels[:1], shard_size=16)
    run = base / "run"
    assert invoke("train", "--store", unsure, "--out", run, "--epochs", "1", "--quiet").exit_code == 0
    return SimpleNamespace(base=base, unsure=unsure, one=one, run=run)


def confidences(store: Path, kind: str) -> np.ndarray:
    from lpclip_cache.store import FeatureStore

    return FeatureStore(store).read(f"{kind}/conf")


# --- train: options at their edges ---------------------------------------------------------------


def test_a_threshold_that_keeps_no_sample_stops_and_writes_nothing(stores, tmp_path):
    highest = float(confidences(stores.unsure, "weak").max())
    assert highest < 0.9
    out = tmp_path / "run"
    assert_error(invoke("train", "--store", stores.unsure, "--out", out, "--threshold", "0.9", "--quiet"), 3,
                 "--threshold 0.9 keeps no sample", "lower it", "was not written")
    assert not out.exists()


def test_the_kept_fraction_is_recorded_and_a_low_one_warned(stores, tmp_path):
    first = confidences(stores.unsure, "weak")[:, 0]
    threshold = float(np.sort(first)[-2])  # with one view per sample, exactly 2 of the 60 reach it
    result = invoke("train", "--store", stores.unsure, "--out", tmp_path / "run", "--threshold", repr(threshold),
                    "--max-views", "1", "--epochs", "2", "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    for entry in info["curve"]:
        assert entry["kept_samples"] == 2 and entry["kept"] == pytest.approx(2 / 60, abs=1e-6)
    assert summary["kept"] == info["curve"][-1]["kept"]
    assert len(info["warnings"]) == 2 and "fewer than 5%" in info["warnings"][0]
    assert "warning: epoch 1" in result.stderr


@pytest.mark.parametrize("args, code, fragments", [
    (["--lr", "inf"], 3, ["--lr must be a positive finite number", "inf"]),
    (["--lr", "nan"], 3, ["--lr must be a positive finite number"]),
    (["--weight-decay", "nan"], 3, ["--weight-decay must be a finite number"]),
    (["--seed", "-5"], 3, ["--seed must be a whole number from 0 to", "-5"]),
    (["--seed", "99999999999999999999"], 3, ["--seed must be a whole number from 0 to"]),
    (["--device", "mps"], 4, ["device 'mps' is not supported", "use auto, cpu, cuda"]),
    (["--device", "meta"], 4, ["device 'meta' is not supported"]),
    (["--method", "supervised", "--threshold", "0.5"], 3, ["--threshold 0.5 applies to", "drop the option"]),
    (["--max-views", "50"], 3, ["--max-views 50", "caches at most 2 view(s)"]),
])
def test_train_options_at_their_edges_are_one_line(args, code, fragments, stores, tmp_path):
    assert_error(invoke("train", "--store", stores.unsure, "--out", tmp_path / "run", "--quiet", *args), code,
                 *fragments)
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_stops_before_it_is_saved(stores, tmp_path):
    """An lr so large that the weights overflow in the first epoch: training stops with one line,
    and an earlier run at --out is untouched."""
    out = tmp_path / "run"
    shutil.copytree(stores.run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert_error(invoke("train", "--store", stores.unsure, "--out", out, "--lr", "1e38", "--overwrite", "--quiet"),
                 3, "training diverged in epoch 1", "lower --lr", "was not written")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lr=st.floats(1e-4, 1.0), weight_decay=st.floats(0.0, 1.0), epochs=st.integers(1, 3),
       batch=st.integers(1, 128), threshold=st.floats(0.0, 0.99), method=st.sampled_from(["lpclip", "supervised"]),
       weighting=st.sampled_from(["confidence", "none"]), targets=st.sampled_from(["hard", "soft"]),
       student=st.sampled_from(["strong", "weak"]), max_views=st.sampled_from([None, 1, 2]),
       init=st.sampled_from(["zeroshot", "random"]),
       ensemble=st.integers(1, 3), seed=st.integers(0, 2**63 - 1))
def test_every_saved_run_has_finite_weights_and_counts_what_it_trained_on(
        stores, tmp_path_factory, lr, weight_decay, epochs, batch, threshold, method, weighting, targets, student,
        max_views, init, ensemble, seed):
    """train over its options' valid ranges: a run is saved with finite weights and the sample
    counts it trained on, or refused with one line (a threshold no view reaches)."""
    from lpclip_cache.runs import load_run

    if method == "supervised":
        threshold = 0.0
    out = tmp_path_factory.mktemp("prop") / "run"
    args = ["train", "--store", stores.unsure, "--out", out, "--lr", lr, "--weight-decay", weight_decay,
            "--epochs", epochs, "--batch-size", batch, "--threshold", threshold, "--method", method,
            "--weighting", weighting, "--targets", targets, "--student", student, "--ensemble", ensemble,
            "--init", init, "--seed", seed, "--quiet", *(["--max-views", max_views] if max_views else [])]
    result = invoke(*args)
    views = confidences(stores.unsure, "weak")[:, : max_views or 2]
    if result.exit_code != 0:
        assert_error(result, 3, "keeps no sample")
        assert not out.exists() and threshold > views.min()
        return
    run = load_run(out)  # refuses non-finite weights
    assert np.isfinite(run.weight).all() and np.isfinite(run.bias).all()
    assert run.info["pairs"]["samples"] == 60
    for entry in run.info["curve"]:
        # a sample counts when the teacher view drawn for it reaches the threshold: between the
        # samples whose every view does and those whose best view does
        assert int((views.min(axis=1) >= threshold).sum()) - 1 <= entry["kept_samples"]
        assert entry["kept_samples"] <= int((views.max(axis=1) >= threshold).sum())
        if threshold == 0:
            assert entry["kept_samples"] == 60 and entry["kept"] == 1.0


def test_an_ablation_variant_that_keeps_nothing_is_marked_not_trained(stores, tmp_path):
    """In an ablation a threshold no view reaches is a row saying so, never the untrained start
    scored as if it had been trained; the other variants are trained and scored as usual."""
    result = invoke("ablate", "--store", stores.unsure, "--eval", stores.unsure, "--out", tmp_path / "ab",
                    "--thresholds", "0.3,0.99", "--epochs", "1", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "ab" / "ablation.json").read_text())["rows"]
    assert "keeps no sample" in rows["threshold-0.99"]["not_trained"]
    assert rows["threshold-0.99"]["stores"][str(stores.unsure)] == {}
    assert "accuracy" in rows["threshold-0.3"]["stores"][str(stores.unsure)] and "not_trained" not in rows["lpclip"]
    assert "threshold-0.99: not trained" in result.stderr
    table = (tmp_path / "ab" / "ablation.md").read_text()
    assert next(line for line in table.splitlines() if "threshold-0.99" in line).count(" - ") >= 1


# --- recipes -------------------------------------------------------------------------------------


RECIPE = """
name = "edges"
out = "{out}"
[model]
name = "test-tiny"
pretrained = "none"
[views]
weak = 1
strong = 1
[extract]
workers = 0
[datasets.train]
role = "adapt"
data = "shapes:train:n=48"
[datasets.test]
role = "test"
data = "shapes:test:n=32"
[train.lpclip]
method = "lpclip"
epochs = 2
[evaluate]
report = false
[analyze]
clusters = true
projection = true
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "edges.toml"
    path.write_text(RECIPE.format(out=tmp_path / "out"))
    return path


@pytest.mark.parametrize("override, fragments", [
    ('evaluate.report="false"', ["[evaluate]", "report should be true or false", "'false'"]),
    ('analyze.clusters="false"', ["[analyze]", "clusters should be true or false"]),
    ('train.lpclip.epochs="ten"', ["[train.lpclip]", "epochs should be a whole number", "'ten'"]),
    ("train.lpclip.epochs=2.7", ["[train.lpclip]", "epochs should be a whole number", "2.7"]),
    ('views.weak="two"', ["[views]", "weak should be a whole number"]),
    ("out=", ["out", "is ''", "not empty, not the root"]),
    ("out=/", ["out", "is '/'", "not the root"]),
    ("train.lpclp.epochs=3", ["has no [train.lpclp]", "it has lpclip", "does not create one",
                              "train.lpclp={method = \"lpclip\"}"]),
])
def test_recipe_typos_are_one_line_even_in_a_dry_run(override, fragments, recipe, tmp_path):
    for dry in (["--dry-run"], []):
        assert_error(invoke("run", recipe, "--set", override, *dry), 3, *fragments)
    assert not (tmp_path / "out").exists()


def test_a_new_probe_given_whole_is_added(recipe, tmp_path):
    result = invoke("run", recipe, "--set", 'train.extra={method = "lpclip", epochs = 1}', "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "train-extra" in result.output


def test_a_recipe_redoes_its_own_broken_outputs(recipe, tmp_path):
    first = invoke("run", recipe, "--json")
    assert first.exit_code == 0, first.stderr
    out = tmp_path / "out"
    probe = out / "runs" / "lpclip" / "probe.safetensors"
    trained = probe.read_bytes()
    probe.unlink()
    report = out / "reports" / "lpclip.json"
    report.write_text(report.read_text()[:40])
    plot = out / "analysis" / "projection-test-lpclip.png"
    plot.write_bytes(plot.read_bytes()[:100])
    planned = invoke("run", recipe, "--dry-run")
    assert planned.output.count("redo (its output is damaged)") == 3, planned.output
    again = json.loads(invoke("run", recipe, "--json").stdout)
    # the damaged outputs are redone; the others are whole and their inputs' configuration is
    # unchanged (training is deterministic: the run comes back byte for byte), so they are kept
    assert again["ran"] == ["train-lpclip", "evaluate-lpclip", "analyze-projection-test-lpclip"]
    assert sorted(again["skipped"]) == ["analyze-clusters-test-lpclip", "extract-test", "extract-train"]
    assert probe.read_bytes() == trained
    json.loads(report.read_text())
    with Image.open(plot) as image:
        image.verify()
    third = json.loads(invoke("run", recipe, "--json").stdout)
    assert third["ran"] == []


def test_an_empty_variable_is_named_not_taken_for_the_current_folder(tmp_path, monkeypatch):
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.format(out=tmp_path / "out").replace('"shapes:test:n=32"', '"wds:${CLIP_BENCHMARK_ROOT}"'))
    monkeypatch.setenv("CLIP_BENCHMARK_ROOT", "")
    assert_error(invoke("run", str(path)), 3, "${CLIP_BENCHMARK_ROOT}, which is empty")
    assert_error(invoke("extract", "--data", "wds:", "--out", tmp_path / "x.zarr"), 3, "has no root")


# --- analyze, evaluate -----------------------------------------------------------------------------


def test_a_projection_of_one_image_is_one_line(stores, tmp_path):
    assert_error(invoke("analyze", "latent", "projection", "--store", stores.one, "--out", tmp_path / "p.png"), 3,
                 "needs at least 3 valid images", "has 1")


def test_a_projection_never_replaces_a_png_it_did_not_write(stores, tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(photo)
    before = photo.read_bytes()
    assert_error(invoke("analyze", "latent", "projection", "--store", stores.unsure, "--out", photo, "--overwrite"),
                 5, "is not a plot written by lpclip-cache")
    assert photo.read_bytes() == before
    ours = tmp_path / "ours.png"
    for _ in range(2):  # its own plot it may replace
        result = invoke("analyze", "latent", "projection", "--store", stores.unsure, "--out", ours, "--overwrite")
        assert result.exit_code == 0, result.stderr


def test_an_empty_run_json_is_called_damaged(stores, tmp_path):
    run = shutil.copytree(stores.run, tmp_path / "run")
    (run / "run.json").write_text("{}")
    assert_error(invoke("evaluate", "--run", run, "--store", stores.unsure, "--out", tmp_path / "r.json"), 5,
                 "is damaged", "no format version", "train it again")


def test_the_same_store_as_test_and_ood_is_refused(stores, tmp_path):
    assert_error(invoke("evaluate", "--run", stores.run, "--store", stores.unsure, "--ood", stores.unsure,
                        "--out", tmp_path / "r.json"), 3, "given twice", "must be different stores")
    assert not (tmp_path / "r.json").exists()


# --- destinations that cannot be written -----------------------------------------------------------




def enforcing_prefix(folder: Path) -> list[str] | None:
    """How to run a command for which a chmod 555 folder is really read-only: as is for a user;
    for root, through setpriv without the capabilities that bypass permissions. None when
    neither enforces it (checked by trying to write there)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            return None
        prefix = [setpriv, *UNPRIVILEGED]
    probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(folder / 'probe')!r}, 'w')"],
                           capture_output=True, timeout=60)
    return prefix if probe.returncode != 0 else None


def test_read_only_destinations_are_one_line_and_nothing_is_damaged(stores, tiny_checkpoint, image_folder, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    old_report = locked / "old.json"
    old_report.write_text(json.dumps({"tool": "lpclip-cache", "kept": True}))
    locked.chmod(0o555)
    try:
        prefix = enforcing_prefix(locked)
        if prefix is None:
            pytest.skip("permissions are not enforced here (root without setpriv): nothing to check")
        extract = ["extract", "--data", image_folder, "--pretrained", tiny_checkpoint, "--workers", "0",
                   "--weak-views", "0", "--strong-views", "0", "--templates", "simple", "--quiet"]
        cases = [
            (extract + ["--out", locked / "s.zarr"], "store"),
            (["train", "--store", stores.unsure, "--out", locked / "run", "--quiet"], "run"),
            (["evaluate", "--run", stores.run, "--store", stores.unsure, "--out", locked / "r.json"], "report"),
            (["evaluate", "--run", stores.run, "--store", stores.unsure, "--out", old_report, "--overwrite"],
             "report"),
            (["evaluate", "--run", stores.run, "--store", stores.unsure, "--report", locked / "rep"],
             "report folder"),
            (["analyze", "latent", "clusters", "--store", stores.unsure, "--k", "3", "--out", locked / "c.json"],
             "report"),
            (["analyze", "latent", "projection", "--store", stores.unsure, "--out", locked / "p.png"], "plot"),
            (["analyze", "views", "--store", stores.unsure, "--out", locked / "v.json"], "report"),
            (["export", stores.unsure, "--out", locked / "e.h5"], "HDF5 export"),
        ]
        done = subprocess.run([*prefix, sys.executable, "-c", SCRIPT,
                               json.dumps([[str(a) for a in args] for args, _ in cases])],
                              capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        for (args, what), result in zip(cases, json.loads(done.stdout)):
            lines = result["stderr"].strip().splitlines()
            assert result["code"] == 5, (args, result)
            assert len(lines) == 1 and lines[0].startswith(f"lpclip-cache: error: cannot write {what} "), (args, lines)
            assert "check that you may write there" in lines[0] and "Traceback" not in result["output"]
        assert sorted(p.name for p in locked.iterdir()) == ["old.json"]
        assert json.loads(old_report.read_text()) == {"tool": "lpclip-cache", "kept": True}
    finally:
        locked.chmod(0o755)
