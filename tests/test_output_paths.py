"""Where outputs go: two outputs of one command never share a place (in any spelling), refusals
name the option or recipe key the user gave, every report, plot, predictions file and export is
written to an object-storage URL (moto's S3 server, through s3fs) or refused in one line, and the
recipe checks that would otherwise fail at a late stage are made at --dry-run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import clustered_embeddings, run_cli, unit, write_store
from test_object_store import BUCKET, s3  # noqa: F401 (s3 is a fixture: moto's server on 127.0.0.1)

import lpclip_cache as lc
from lpclip_cache.cli import main
from lpclip_cache.errors import InputError
from lpclip_cache.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A labelled store with weak and strong views, a run trained on it, and a test store."""
    folder = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(0)
    centres, labels, clean, views = clustered_embeddings(48, 3, 8, spread=0.2, seed=0, views=2)
    head = unit(centres + 0.1 * rng.normal(size=centres.shape))
    _, test_labels, test_clean, _ = clustered_embeddings(24, 3, 8, spread=0.2, seed=1, centres=centres)
    train_store = write_store(folder / "train.zarr", clean, head, labels, views[:, :1], views[:, 1:], shard_size=16)
    test_store = write_store(folder / "test.zarr", test_clean, head, test_labels, shard_size=16)
    train(TrainConfig(store=str(train_store), out=str(folder / "run"), epochs=1, progress=False))
    return {"train": str(train_store), "test": str(test_store), "run": str(folder / "run")}


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_one_line(result, code: int, *parts: str) -> str:
    """Exit ``code`` and one ``lpclip-cache: error:`` line holding every part, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpclip-cache: error: "), result.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


def evaluate_args(small, *outputs: str) -> list[str]:
    return ["evaluate", "--run", small["run"], "--store", small["test"], *outputs]


@pytest.mark.parametrize("spelling", ["same", "dotted", "file-url"])
def test_evaluate_refuses_out_and_predictions_in_one_place(small, tmp_path, spelling):
    """Before: the report JSON was replaced by the HDF5 file, exit 0, "wrote P, P"."""
    target = tmp_path / "p" / "x.h5"
    other = {"same": str(target), "dotted": f"{tmp_path}/p/../p/x.h5", "file-url": f"file://{target}"}[spelling]
    result = invoke(*evaluate_args(small, "--out", str(target), "--predictions", other))
    assert_one_line(result, 3, "--out", "--predictions", "same place")
    assert not target.exists() and not target.parent.exists()


def test_evaluate_refuses_a_report_folder_on_the_predictions_or_holding_another_output(small, tmp_path):
    """Before: ``--report P --predictions P`` wrote the report folder, then failed."""
    target = tmp_path / "r.h5"
    assert_one_line(invoke(*evaluate_args(small, "--report", str(target), "--predictions", str(target))), 3,
                    "--report", "--predictions", "same place")
    inside = invoke(*evaluate_args(small, "--report", str(tmp_path / "rep"), "--out", str(tmp_path / "rep" / "r.json")))
    assert_one_line(inside, 3, "--out", "lies inside --report")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_refusal_names_the_option_given(small, tmp_path):
    """Before: a foreign file at --predictions was refused with "choose another --out"."""
    foreign = tmp_path / "theirs.h5"
    foreign.write_bytes(b"not ours")
    line = assert_one_line(invoke(*evaluate_args(small, "--predictions", str(foreign), "--overwrite")), 5,
                           "choose another --predictions")
    assert "--out" not in line
    assert_one_line(invoke(*evaluate_args(small, "--out", str(tmp_path / "x.json"), "--predictions",
                                          str(foreign))), 5, "choose another --predictions")
    assert foreign.read_bytes() == b"not ours"


def test_a_store_given_twice_in_two_spellings_is_refused(small):
    result = invoke("evaluate", "--run", small["run"], "--store", small["test"], "--ood", f"file://{small['test']}",
                    "--out", "unused.json")
    assert_one_line(result, 3, "given twice")


def test_the_api_checks_transclip_like_a_recipe(small, tmp_path):
    """Before: any truthy value (``"no"``, ``1``) ran TransCLIP."""
    for bad, shown in (("no", "'no'"), (1, "1"), ([1], "[1]")):
        with pytest.raises(InputError) as refused:
            lc.evaluate(small["run"], [small["test"]], transclip=bad, out=str(tmp_path / "x.json"))
        assert "transclip should be true, false or a list of probe names" in str(refused.value)
        assert shown in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "x.json").exists()
    named = lc.evaluate(small["run"], [small["test"]], transclip=["run"])  # the run's folder is its probe name
    assert "transclip" in named["methods"]
    other = lc.evaluate(small["run"], [small["test"]], transclip=["another"])
    assert "transclip" not in other["methods"]


def test_every_file_output_is_written_to_an_s3_url(small, s3, tmp_path, monkeypatch):  # noqa: F811
    """Before: ``--out s3://bucket/r.json`` printed "wrote s3://..." and made a local folder ``s3:``."""
    import h5py

    monkeypatch.chdir(tmp_path)
    url = s3.url
    done = invoke(*evaluate_args(small, "--out", url("eval/r.json"), "--predictions", url("eval/p.h5")))
    assert done.exit_code == 0, done.output
    assert f"wrote {url('eval/r.json')}, {url('eval/p.h5')}" in done.stdout
    report = json.loads(s3.fs.cat(f"{BUCKET}/eval/r.json"))
    assert report["tool"] == "lpclip-cache" and report["run"] == small["run"]
    with s3.fs.open(f"{BUCKET}/eval/p.h5", "rb") as stream, h5py.File(stream, "r") as handle:
        assert handle["stores/0/probs/probe"].shape == (24, 3)
    for args in (["analyze", "views", "--store", small["train"], "--out", url("a/views.json")],
                 ["analyze", "latent", "clusters", "--store", small["test"], "--k", "3", "--out", url("a/c.json")],
                 ["analyze", "latent", "neighbors", "--store", small["test"], "--k", "3", "--out", url("a/n.json")],
                 ["analyze", "latent", "projection", "--store", small["test"], "--out", url("a/p.png")],
                 ["export", small["test"], "--out", url("a/e.h5")]):
        result = invoke(*args, "--json")
        assert result.exit_code == 0, (args, result.output)
    for name in ("views.json", "c.json", "n.json"):
        assert json.loads(s3.fs.cat(f"{BUCKET}/a/{name}"))["tool"] == "lpclip-cache"
    assert s3.fs.cat(f"{BUCKET}/a/p.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(invoke("export", small["test"], "--out", url("a/e2.h5"), "--json").stdout)["bytes"] == \
        s3.fs.size(f"{BUCKET}/a/e2.h5")
    assert list(tmp_path.iterdir()) == [], "a local folder was made for the URL"
    # an existing object is refused without --overwrite, replaced with it, and a foreign one kept
    again = invoke(*evaluate_args(small, "--predictions", url("eval/p.h5")))
    assert_one_line(again, 5, "already exists", "--overwrite", "--predictions")
    assert invoke(*evaluate_args(small, "--predictions", url("eval/p.h5"), "--overwrite")).exit_code == 0
    s3.fs.pipe(f"{BUCKET}/eval/theirs.json", b"[1, 2]")
    foreign = invoke("analyze", "latent", "projection", "--store", small["test"], "--out", url("eval/theirs.json"),
                     "--overwrite")
    assert_one_line(foreign, 5, "is not a plot written by lpclip-cache")
    assert s3.fs.cat(f"{BUCKET}/eval/theirs.json") == b"[1, 2]"


def test_folder_outputs_on_object_storage_are_refused_in_one_line(small, s3, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    url = s3.url
    for args, option in ((evaluate_args(small, "--report", url("rep")), "--report"),
                         (["train", "--store", small["train"], "--out", url("run")], "--out"),
                         (["ablate", "--store", small["train"], "--eval", small["test"], "--out", url("abl")], "--out"),
                         (["demo", "--out", url("demo")], "--out")):
        assert_one_line(invoke(*args), 3, option, "on object storage", "local path")
    assert list(tmp_path.iterdir()) == []
    assert not any(s3.fs.exists(f"{BUCKET}/{name}") for name in ("rep", "run", "abl", "demo"))


RECIPE = """
name = "r"
out = "{out}"
[model]
name = "test-tiny"
[views]
weak = {weak}
strong = {strong}
[datasets.train]
role = "adapt"
data = "shapes:train:n=8"
[datasets.test]
role = "test"
data = "shapes:test:n={test_n}"
[train.lpclip]
method = "lpclip"
[evaluate]
transclip = {transclip}
[analyze]
views = {views}
"""


def recipe(tmp_path: Path, **values) -> str:
    settings = {"out": str(tmp_path / "out"), "weak": 1, "strong": 1, "test_n": 8, "transclip": "false",
                "views": "false", **values}
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.format(**settings))
    return str(path)


def test_a_recipe_analysing_views_it_does_not_cache_is_refused_at_dry_run(tmp_path):
    """Before: the dry run passed, and the views stage failed after extraction and training."""
    assert run_cli("run", recipe(tmp_path, views="true"), "--dry-run").returncode == 0
    done = run_cli("run", recipe(tmp_path, views="true", weak=0, strong=0), "--dry-run")
    assert done.returncode == 3 and done.stderr.count("\n") == 1, done.stderr
    assert "[analyze]" in done.stderr and "views = true" in done.stderr and "'train'" in done.stderr


def test_a_recipe_transducing_a_set_too_small_for_transclip_is_refused_at_dry_run(tmp_path):
    """Before: the dry run passed, and evaluate failed at stage 6 ("needs more than 3")."""
    assert run_cli("run", recipe(tmp_path, transclip="true", test_n=4), "--dry-run").returncode == 0
    done = run_cli("run", recipe(tmp_path, transclip='["lpclip"]', test_n=3), "--dry-run")
    assert done.returncode == 3 and done.stderr.count("\n") == 1, done.stderr
    assert "[datasets.test] data" in done.stderr and "transclip" in done.stderr and "more than 3" in done.stderr


def test_a_recipe_whose_stages_would_write_one_place_is_refused(tmp_path):
    """Before: ``clusters-a-b-c.json`` was written by two stages, the second over the first."""
    path = Path(recipe(tmp_path))
    text = path.read_text().replace("[datasets.test]", "[datasets.a-b]") + """
[datasets.a]
role = "test"
data = "shapes:test:n=8"
[train.b-c]
method = "lpclip"
[train.c]
method = "lpclip"
"""
    path.write_text(text.replace("views = false", "views = false\nclusters = true"))
    done = run_cli("run", str(path), "--dry-run")
    assert done.returncode == 3 and done.stderr.count("\n") == 1, done.stderr
    assert "clusters-a-b-c.json" in done.stderr and "[train.c]" in done.stderr and "[train.b-c]" in done.stderr


def test_a_recipe_out_on_object_storage_is_refused(tmp_path):
    """Before: the recipe's stamps and runs went under a local folder named ``s3:``."""
    done = run_cli("run", recipe(tmp_path, out="s3://bucket/r"), "--dry-run", cwd=tmp_path)
    assert done.returncode == 3 and "out" in done.stderr and "object storage" in done.stderr
    assert not (tmp_path / "s3:").exists()


def test_a_recipe_stage_refusal_names_the_recipe_key(small, tmp_path):
    """Before: a foreign folder where a recipe writes a report was refused with "choose another --out"."""
    from lpclip_cache.errors import StoreError
    from lpclip_cache.recipe import execute_stage, load_recipe, plan

    loaded = load_recipe(recipe(tmp_path))
    stage = next(s for s in plan(loaded) if s.kind == "evaluate")
    stage.options.update(run=small["run"], stores=[small["test"]], ood=[])
    Path(stage.out).mkdir(parents=True)
    (Path(stage.out) / "notes.txt").write_text("theirs")
    with pytest.raises(StoreError) as refused:
        execute_stage(loaded, stage, progress=False)
    assert f"choose another out (recipe '{loaded.path}')" in str(refused.value)
    assert "--out" not in str(refused.value) and (Path(stage.out) / "notes.txt").read_text() == "theirs"
