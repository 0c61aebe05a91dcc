"""Every command's ``--json`` output is machine-readable: stdout parses with ``json.loads``, and
the progress each command shows (left on: no ``--quiet``) goes to stderr.

Each command runs once, in its own process as a user runs it, on small stores written directly
(``write_store``) and a tiny image folder; the processes run side by side to keep the file fast.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from conftest import clustered_embeddings, make_image_folder, run_cli, unit, write_store

from lpclip_cache.training import TrainConfig, train

IMAGES = {"classes": 3, "per_class": 4}
SAMPLES, CLASSES = 200, 4

RECIPE = """
name = "json-check"
out = "{out}"
[model]
name = "test-tiny"
pretrained = "none"
device = "cpu"
[views]
weak = 1
strong = 1
[extract]
workers = 0
batch_size = 16
[datasets.adapt]
role = "adapt"
data = "{images}"
[datasets.test]
role = "test"
data = "{images}"
[train.p]
method = "lpclip"
epochs = 1
[evaluate]
report = false
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Every command, run once with ``--json``: name -> (arguments, completed process)."""
    work = tmp_path_factory.mktemp("json")
    images = make_image_folder(work / "images", **IMAGES, size=32)
    rng = np.random.default_rng(3)
    centres, labels, clean, views = clustered_embeddings(SAMPLES, CLASSES, 16, spread=0.3, seed=3, views=4)
    head = unit(centres + 0.3 * rng.normal(size=centres.shape))
    adapt = write_store(work / "adapt.zarr", clean, head, labels, views[:, :2], views[:, 2:], scale=20.0)
    test = write_store(work / "test.zarr", clean[:100], head, labels[:100], scale=20.0)
    ood = write_store(work / "ood.zarr", unit(rng.normal(size=(60, 16))), head, np.zeros(60, int), scale=20.0)
    run = work / "run"
    train(TrainConfig(store=str(adapt), out=str(run), epochs=1, progress=False))
    recipe = work / "recipe.toml"
    recipe.write_text(RECIPE.format(out=work / "recipe-out", images=images))
    a, t, o = str(adapt), str(test), str(ood)
    commands = {  # the longest first, so that the short ones fill the other workers around them
        # the smallest demo there is (one teacher step, 8 images a set): it exercises the same output path
        "demo": ["demo", "--out", str(work / "demo"), "--train-n", "8", "--test-n", "8", "--views", "1", "--epochs",
                 "1", "--teacher-steps", "1", "--teacher-pool", "128", "--corrupt-n", "8", "--seeds", "2",
                 "--ensemble", "2", "--severities", "1"],
        "extract": ["extract", "--data", str(images), "--model", "test-tiny", "--pretrained", "none", "--workers",
                    "0", "--weak-views", "1", "--strong-views", "1", "--out", str(work / "extracted.zarr")],
        "train": ["train", "--store", a, "--out", str(work / "trained"), "--epochs", "2"],
        "evaluate": ["evaluate", "--run", str(run), "--store", t, "--ood", o, "--out", str(work / "report.json")],
        "clusters": ["analyze", "latent", "clusters", "--store", t, "--run", str(run), "--k", str(CLASSES),
                     "--out", str(work / "clusters.json")],
        "neighbors": ["analyze", "latent", "neighbors", "--store", t, "--k", "5", "--out", str(work / "nn.json")],
        "projection": ["analyze", "latent", "projection", "--store", t, "--out", str(work / "projection.png")],
        "info": ["info", t],
        "verify": ["verify", t],
        "export": ["export", t, "--out", str(work / "test.h5")],
        "models": ["models"],
        "ablate": ["ablate", "--store", a, "--eval", t, "--ood", o, "--out", str(work / "ablation"), "--epochs", "1",
                   "--thresholds", "0.5"],
        "select": ["select", "--store", a, "--out", str(work / "selected"), "--lr", "1e-2,1e-1", "--weight-decay",
                   "0", "--epochs", "2", "--holdout", "0.25"],
        "run": ["run", str(recipe)],
    }
    env = {"LPCLIP_CACHE_DIR": str(work / "cache")}  # the demo's teacher, kept out of the user's cache
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        done = {name: pool.submit(run_cli, *args, "--json", env=env, cwd=work) for name, args in commands.items()}
        return work, {name: future.result() for name, future in done.items()}


def parsed(outputs, name: str) -> dict:
    """The command's stdout as JSON, after checking it succeeded."""
    process = outputs[1][name]
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout)


def test_extract(outputs):
    work, _ = outputs
    summary = parsed(outputs, "extract")
    assert summary["images"] == IMAGES["classes"] * IMAGES["per_class"] == len(list((work / "images").rglob("*.*")))
    assert zarr.open_group(summary["store"], mode="r")["clean/emb"].shape[0] == summary["images"]
    assert "extract extracted.zarr" in outputs[1]["extract"].stderr  # its progress line, on stderr


def test_train(outputs):
    work, _ = outputs
    summary = parsed(outputs, "train")
    assert Path(summary["run"]) == work / "trained" and summary["samples"] == SAMPLES and summary["epochs"] == 2
    assert "train trained" in outputs[1]["train"].stderr


def test_evaluate(outputs):
    work, _ = outputs
    report = parsed(outputs, "evaluate")
    written = json.loads((work / "report.json").read_text())
    assert set(report["stores"]) == set(written["stores"]) == {str(work / "test.zarr")}
    assert set(report["ood"]) == {str(work / "ood.zarr")}


@pytest.mark.parametrize("name", ["clusters", "neighbors"])
def test_analyze_reports(outputs, name):
    work, _ = outputs
    report = parsed(outputs, name)
    assert report["store"] == str(work / "test.zarr") and report["samples"] == 100
    assert "clip" in report["spaces"]


def test_analyze_projection(outputs):
    work, _ = outputs
    summary = parsed(outputs, "projection")
    assert summary["out"] == str(work / "projection.png")
    assert (work / "projection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_info_verify_export(outputs):
    work, _ = outputs
    info = parsed(outputs, "info")
    assert info["arrays"]["clean/emb"]["shape"] == list(zarr.open_group(str(work / "test.zarr"))["clean/emb"].shape)
    assert parsed(outputs, "verify")["ok"] is True
    export = parsed(outputs, "export")
    assert export["bytes"] == (work / "test.h5").stat().st_size
    with h5py.File(work / "test.h5") as handle:
        assert handle["clean/emb"].shape == (100, 16)


def test_models(outputs):
    names = parsed(outputs, "models")["models"]
    assert {"test-tiny", "ViT-B-32"} <= set(names)
    assert outputs[1]["models"].stdout.count("test-tiny") == 1  # the list once, as JSON only


def test_ablate(outputs):
    results = parsed(outputs, "ablate")
    assert {"teacher", "lpclip", "threshold-0.5", "supervised"} <= set(results["rows"])
    progress = outputs[1]["ablate"].stderr
    assert all(f"[ablate] {name}" in progress for name in results["rows"] if name != "teacher")


def test_select(outputs):
    result = parsed(outputs, "select")
    assert [(row["lr"], row["weight_decay"]) for row in result["grid"]] == [(1e-2, 0.0), (1e-1, 0.0)]
    assert result["chosen"]["lr"] in (1e-2, 1e-1)
    assert outputs[1]["select"].stderr.count("[select] lr=") == 2


def test_run(outputs):
    work, _ = outputs
    summary = parsed(outputs, "run")
    assert summary["ran"] == ["extract-adapt", "extract-test", "train-p", "evaluate-p"] and summary["skipped"] == []
    assert (work / "recipe-out" / "reports" / "p.json").is_file()
    assert "[4/4] evaluate-p" in outputs[1]["run"].stderr


def test_demo(outputs):
    work, _ = outputs
    results = parsed(outputs, "demo")
    assert results == json.loads((work / "demo" / "results.json").read_text())
    assert "[demo]" in outputs[1]["demo"].stderr
