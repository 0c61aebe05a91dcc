"""Recipes: every shipped recipe plans with --dry-run, the demo recipe runs for real, finished
stages are skipped, a changed option re-runs exactly what depends on it, and bad recipes are one
clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from lpclip_cache.corruptions import STANDARD
from lpclip_cache.errors import InputError, StoreError
from lpclip_cache.recipe import load_recipe, plan, run_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "pipelines").glob("*.toml"))
VARIABLES = ("CIFAR10_ROOT", "CIFAR100_ROOT", "SVHN_ROOT", "MNIST_ROOT", "IMAGENET_ROOT", "IMAGENET_V2_ROOT",
             "IMAGENET_SKETCH_ROOT", "IMAGENET_A_ROOT", "IMAGENET_R_ROOT", "DATA_ROOT", "CLIP_BENCHMARK_ROOT")


def test_the_shipped_recipes_cover_the_experiments():
    assert {p.stem for p in RECIPES} >= {"demo", "cifar10", "cifar100", "imagenet", "folder"}
    for path in RECIPES:
        recipe = load_recipe(path)
        assert recipe.gpu_wall_time, f"{path.name} states no expected wall time"
        if path.stem != "demo":  # the model of the CLIP literature, with the LAION alternative named
            assert (recipe.model["name"], recipe.model["pretrained"]) == ("ViT-B-32-quickgelu", "openai")
            assert "laion2b_s34b_b79k" in path.read_text()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_plans_with_dry_run(path, tmp_path):
    env = {name: str(tmp_path / name.lower()) for name in VARIABLES}
    done = run_cli("run", str(path), "--dry-run", "--json", "--set", f"out={tmp_path / 'out'}", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    recipe = load_recipe(path, [f"out={tmp_path / 'out'}"])
    kinds = [stage["id"].split("-")[0] for stage in summary["stages"]]
    assert kinds.count("extract") == len(recipe.datasets) and kinds.count("train") == len(recipe.train)
    assert kinds.count("evaluate") == len(recipe.train)
    assert kinds == sorted(kinds, key=["extract", "train", "evaluate", "analyze"].index)  # in dependency order
    assert all(stage["state"] == "run" for stage in summary["stages"])
    assert "needs an environment variable" not in summary["plan"]
    assert not (tmp_path / "out").exists(), "a dry run wrote something"


def test_a_dry_run_lists_the_variables_a_recipe_still_needs(tmp_path):
    done = run_cli("run", str(ROOT / "pipelines" / "imagenet.toml"), "--dry-run", env={"IMAGENET_ROOT": ""})
    assert done.returncode == 0
    assert "datasets.a.data uses ${IMAGENET_A_ROOT}" in done.stdout
    real = run_cli("run", str(ROOT / "pipelines" / "imagenet.toml"), "--set", f"out={tmp_path}/x")
    assert real.returncode == 3 and "which is not set" in real.stderr and "Traceback" not in real.stderr


SMALL = ["datasets.train.data=shapes:train:n=240", "datasets.test.data=shapes:test:n=160",
         "datasets.outline.data=shapes:test:outline:n=160", "datasets.recoloured.data=shapes:test:recoloured:n=160",
         "datasets.greyscale.data=shapes:test:greyscale:n=160",
         "datasets.corruptions.data=shapes:test:n=40", "datasets.corruptions.corrupt=all:2",
         "datasets.strokes.data=shapes:ood:n=160", "views.weak=2", "views.strong=2", "train.lpclip.epochs=2",
         "train.ensemble.epochs=2", "train.ensemble.ensemble=2", "train.supervised.epochs=2"]


def test_the_demo_recipe_runs_skips_and_reruns_only_what_changed(tmp_path, shapes_teacher):
    out = tmp_path / "demo"
    sets = [*SMALL, f"out={out}"]
    first = run_recipe(ROOT / "pipelines" / "demo.toml", overrides=sets, progress=False)
    assert first["skipped"] == [] and len(first["ran"]) == 20  # 7 stores, 3 probes, 3 reports, 7 analyses
    report = json.loads((out / "reports" / "lpclip" / "report.json").read_text())
    assert report["methods"] == ["teacher", "probe", "transclip", "transclip-probe"]  # [evaluate] transclip
    other = json.loads((out / "reports" / "ensemble" / "report.json").read_text())
    assert "transclip" not in other["methods"]  # asked for in LP-CLIP's report alone
    assert len(report["stores"]) == 4 + 15  # test, outline, recoloured, greyscale, then 15 corruptions at severity 2
    assert set(report["corruptions"]["probe"]["error"]) == set(STANDARD)
    assert (out / "analysis" / "clusters-test-lpclip.json").is_file()
    views = json.loads((out / "analysis" / "views-train.json").read_text())  # do the train store's views keep the class
    assert set(views["views"]) == {"weak", "strong"} and views["store"] == str(out / "stores" / "train.zarr")
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / ".recipe").iterdir()}

    again = run_recipe(ROOT / "pipelines" / "demo.toml", overrides=sets, progress=False)
    assert again["ran"] == [] and len(again["skipped"]) == 20
    assert {p.name: p.stat().st_mtime_ns for p in (out / ".recipe").iterdir()} == stamps

    changed = run_recipe(ROOT / "pipelines" / "demo.toml", overrides=[*sets, "train.lpclip.epochs=3"],
                         progress=False)
    assert changed["ran"] == ["train-lpclip", "evaluate-lpclip", "analyze-clusters-test-lpclip",
                              "analyze-neighbors-test-lpclip"]

    store = out / "stores" / "train.zarr" / "zarr.json"
    before = store.read_bytes()
    with pytest.raises(StoreError, match="differs in: .*views.weak"):
        run_recipe(ROOT / "pipelines" / "demo.toml", overrides=[*sets, "views.weak=3"], progress=False)
    assert store.read_bytes() == before  # the expensive store is never replaced by a recipe


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


BASE = """
name = "t"
out = "OUT"
[model]
name = "test-tiny"
[datasets.train]
role = "adapt"
data = "shapes:train:n=32"
[datasets.test]
role = "test"
data = "shapes:test:n=32"
[train.p]
method = "lpclip"
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "is not valid TOML"),
        (BASE + "colour = 3\n", "unknown key(s) colour"),
        (BASE.replace('role = "test"', 'role = "eval"'), "role should be one of adapt, test, shift, ood"),
        (BASE.replace('role = "test"', 'role = "adapt"'), "exactly one dataset with role 'adapt', found 2"),
        (BASE.replace('[train.p]\nmethod = "lpclip"\n', "[train]\n"), "names no probe"),
        (BASE + "[train.q]\nepoch = 3\n", "[train.q]: unknown key(s) epoch"),
        (BASE.replace('name = "test-tiny"', 'pretrained = "none"'), "needs name"),
        (BASE.replace("[train.p]", "[train.'a b']"), "become file names"),
        (BASE.replace('data = "shapes:test:n=32"', 'split = "x"'), "needs data"),
    ],
)
def test_bad_recipes_are_one_clear_error(tmp_path, text, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        load_recipe(write(tmp_path, text))


def test_every_recipe_key_has_a_type_the_checker_handles():
    """Each key's type comes from its Config field (``typing.get_type_hints``): a type the recipe
    checker does not know fails here, instead of passing unchecked."""
    from dataclasses import fields

    from lpclip_cache.config import ExtractConfig, TrainConfig
    from lpclip_cache.recipe import TABLE_TYPES, check_of

    for types in TABLE_TYPES.values():
        for expected in types.values():
            check_of(expected)  # a TypeError names a type without a check
    with pytest.raises(TypeError, match="no check"):
        check_of(dict[str, int])
    # and every field a recipe may set is in one of those tables
    sections = {"model", "views", "extract", "dataset", "train"}
    for config in (ExtractConfig, TrainConfig):
        for spec in fields(config):
            if spec.metadata.get("recipe"):
                assert spec.metadata["recipe"].split(".")[0] in sections, spec.name


def test_cli_errors_for_recipes_are_one_line(tmp_path):
    missing = run_cli("run", str(tmp_path / "nope.toml"))
    assert missing.returncode == 3 and "not found" in missing.stderr and "Traceback" not in missing.stderr
    bad_set = run_cli("run", str(write(tmp_path, BASE)), "--set", "model")
    assert bad_set.returncode == 3 and "should read KEY=VALUE" in bad_set.stderr


def test_overrides_are_read_as_toml_values(tmp_path):
    recipe = load_recipe(write(tmp_path, BASE), ["train.p.epochs=4", "views.weak=1", "model.pretrained=tiny.pt",
                                                "analyze.sweep=[2, 3]"])
    assert recipe.train["p"]["epochs"] == 4 and recipe.datasets["train"]["weak"] == 1
    assert recipe.model["pretrained"] == "tiny.pt" and recipe.analyze["sweep"] == [2, 3]
    stages = plan(recipe)
    train = next(s for s in stages if s.id == "train-p")
    assert train.options["store"] == "OUT/stores/train.zarr" and train.needs == ["extract-train"]
    assert next(s for s in stages if s.id == "extract-test").options["weak_views"] == 0  # evaluation: clean only


def test_a_json_only_evaluate_stage_is_skipped_once_written(tmp_path):
    """``[evaluate] report = false`` writes OUT/reports/PROBE.json; a second run finds it complete."""
    out = tmp_path / "out"
    path = write(tmp_path, BASE + "[evaluate]\nreport = false\n")
    sets = [f"out={out}", "views.weak=1", "views.strong=1", "extract.workers=0", "extract.batch_size=32",
            "train.p.epochs=1"]
    first = run_recipe(path, overrides=sets, progress=False)
    assert "evaluate-p" in first["ran"]
    written = out / "reports" / "p.json"
    assert json.loads(written.read_text())["tool"] == "lpclip-cache"
    assert not (out / "reports" / "p").exists()  # no report folder was asked for
    before = (written.read_bytes(), written.stat().st_mtime_ns)

    planned = {stage["id"]: stage for stage in run_recipe(path, dry_run=True, overrides=sets)["stages"]}
    assert planned["evaluate-p"]["out"] == str(written) and planned["evaluate-p"]["state"] == "skip (complete)"
    again = run_recipe(path, overrides=sets, progress=False)
    assert again["ran"] == [] and "evaluate-p" in again["skipped"]
    assert (written.read_bytes(), written.stat().st_mtime_ns) == before
