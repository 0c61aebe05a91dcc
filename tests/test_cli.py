"""The command line end to end, its one-line errors and exit codes, and its lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run_cli

from lpclip_cache.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    __tracebackhide__ = True
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lpclip-cache: error: "), result.stderr
    assert "Traceback" not in result.output + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def pipeline(cifar_root, tiny_checkpoint, tmp_path_factory):
    """extract (train split with views, test split clean, an OOD set) -> train -> evaluate -> analyze."""
    from conftest import make_image_folder

    work = tmp_path_factory.mktemp("cli")
    ood_root = make_image_folder(work / "ood", classes=2, per_class=10, size=32)
    common = ["--model", "test-tiny", "--pretrained", str(tiny_checkpoint), "--workers", "0", "--quiet",
              "--templates", "cifar10"]
    outputs = {}
    for name, data, split, views in (
        ("adapt", str(cifar_root), "test", ["--weak-views", "2", "--strong-views", "2"]),
        ("eval", str(cifar_root), "test", ["--weak-views", "0", "--strong-views", "0"]),
        ("ood", str(ood_root), None, ["--weak-views", "0", "--strong-views", "0"]),
    ):
        split_args = ["--split", split] if split else []
        result = invoke("extract", "--data", data, *split_args, *common, *views,
                        "--out", str(work / f"{name}.zarr"), "--json")
        assert result.exit_code == 0, result.output + result.stderr
        outputs[name] = json.loads(result.stdout)
    for method in ("lpclip", "supervised"):
        result = invoke("train", "--store", str(work / "adapt.zarr"), "--out", str(work / method),
                        "--method", method, "--epochs", "3", "--quiet", "--json")
        assert result.exit_code == 0, result.output + result.stderr
        outputs[method] = json.loads(result.stdout)
    result = invoke("evaluate", "--run", str(work / "lpclip"), "--store", str(work / "eval.zarr"),
                    "--ood", str(work / "ood.zarr"), "--out", str(work / "report.json"))
    assert result.exit_code == 0, result.output + result.stderr
    outputs["evaluate_text"] = result.stdout
    result = invoke("analyze", "latent", "clusters", "--store", str(work / "eval.zarr"), "--run",
                    str(work / "lpclip"), "--k", "10", "--out", str(work / "clusters.json"))
    assert result.exit_code == 0, result.output + result.stderr
    outputs["clusters_text"] = result.stdout
    return work, outputs


def test_pipeline_summaries(pipeline):
    work, out = pipeline
    assert out["adapt"]["images"] == 200 and out["adapt"]["views_per_image"] == 5
    assert out["eval"]["views_per_image"] == 1
    assert out["lpclip"]["method"] == "lpclip" and out["supervised"]["method"] == "supervised"
    assert (work / "lpclip" / "probe.safetensors").is_file()


def test_evaluate_report_has_every_metric_for_teacher_and_probe(pipeline):
    work, out = pipeline
    report = json.loads((work / "report.json").read_text())
    entry = report["stores"][str(work / "eval.zarr")]
    for method in ("teacher", "probe"):
        assert set(entry[method]) >= {"accuracy", "nll", "brier", "ece"}
        assert 0.0 <= entry[method]["accuracy"] <= 1.0
        ood = report["ood"][str(work / "ood.zarr")][method]
        assert set(ood) >= {"auroc", "fpr95"} and 0.0 <= ood["auroc"] <= 1.0
    assert "teacher" in out["evaluate_text"] and "auroc" in out["evaluate_text"]


def test_analyze_report(pipeline):
    work, out = pipeline
    report = json.loads((work / "clusters.json").read_text())
    assert set(report["spaces"]) == {"clip", "probe"}
    assert set(report["spaces"]["clip"]["vs_true_labels"]) == {"purity", "nmi", "ari"}
    assert "purity" in out["clusters_text"]


def test_info_prints_manifest_and_shapes(pipeline):
    work, _ = pipeline
    result = invoke("info", str(work / "adapt.zarr"))
    assert result.exit_code == 0
    assert "test-tiny" in result.stdout and "strong/emb" in result.stdout and "(200, 2, 64)" in result.stdout
    as_json = json.loads(invoke("info", str(work / "adapt.zarr"), "--json").stdout)
    assert as_json["arrays"]["weak/emb"]["shape"] == [200, 2, 64]
    assert as_json["manifest"]["classnames"][0] == "airplane"


def test_existing_outputs_are_refused_and_kept(pipeline, tiny_checkpoint, cifar_root):
    work, _ = pipeline
    report = work / "report.json"
    before = report.read_bytes()
    result = invoke("evaluate", "--run", str(work / "lpclip"), "--store", str(work / "eval.zarr"), "--out", str(report))
    assert_one_line_error(result, 5, "already exists", "--overwrite")
    assert report.read_bytes() == before
    before = (work / "eval.zarr" / "clean" / "emb" / "c" / "0" / "0").read_bytes()
    # another configuration (2 + 2 views instead of none) on an existing store: refused, fields named
    result = invoke("extract", "--data", str(cifar_root), "--split", "test", "--pretrained", str(tiny_checkpoint),
                    "--templates", "cifar10", "--out", str(work / "eval.zarr"), "--quiet")
    assert_one_line_error(result, 5, "another configuration", "views.strong", "views.weak", "--overwrite")
    assert (work / "eval.zarr" / "clean" / "emb" / "c" / "0" / "0").read_bytes() == before
    result = invoke("train", "--store", str(work / "adapt.zarr"), "--out", str(work / "lpclip"))
    assert_one_line_error(result, 5, "already exists")


def test_store_errors(pipeline, tmp_path):
    work, _ = pipeline
    result = invoke("train", "--store", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "r"))
    assert_one_line_error(result, 5, "does not exist", "missing.zarr")
    (tmp_path / "plain").mkdir()
    result = invoke("info", str(tmp_path / "plain"))
    assert_one_line_error(result, 5, "not an lpclip-cache store")
    result = invoke("evaluate", "--run", str(work / "adapt.zarr"), "--store", str(work / "eval.zarr"),
                    "--out", str(tmp_path / "r.json"))
    assert_one_line_error(result, 5, "not an lpclip-cache run")
    assert not (tmp_path / "r.json").exists()


def test_data_errors(tmp_path, tiny_checkpoint):
    base = ["--pretrained", str(tiny_checkpoint), "--out", str(tmp_path / "s.zarr"), "--quiet"]
    result = invoke("extract", "--data", str(tmp_path / "nowhere"), *base)
    assert_one_line_error(result, 3, "does not exist", "nowhere")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    result = invoke("extract", "--data", str(tmp_path / "empty"), *base)
    assert_one_line_error(result, 3, "no images found")
    result = invoke("extract", "--data", str(tmp_path / "empty"), "--split", "val", *base)
    assert_one_line_error(result, 3, "split 'val' not found")
    result = invoke("extract", "--data", f"cifar10:{tmp_path / 'nothing'}", *base)
    assert_one_line_error(result, 3, "cifar10 not found", "--download")
    assert not (tmp_path / "s.zarr").exists()


def test_model_errors(image_folder, tmp_path):
    out = ["--data", str(image_folder), "--out", str(tmp_path / "s.zarr"), "--quiet"]
    assert_one_line_error(invoke("extract", *out, "--model", "ViT-Q-99"), 4, "unknown model name 'ViT-Q-99'")
    assert_one_line_error(invoke("extract", *out, "--pretrained", str(tmp_path / "w.pt")), 4, "w.pt", "not found")
    assert not (tmp_path / "s.zarr").exists()


def test_offline_tag_is_one_line_in_a_real_process(image_folder, tmp_path):
    # A fresh interpreter as a user runs it; HF_HUB_OFFLINE=1 states the truth here (no network).
    result = run_cli("extract", "--data", str(image_folder), "--model", "ViT-B-32", "--pretrained", "openai",
                     "--out", str(tmp_path / "s.zarr"))
    assert result.returncode == 4
    assert result.stderr.strip().splitlines()[-1].startswith("lpclip-cache: error: weights for ViT-B-32")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_help_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from lpclip_cache.cli import main\n"
        "for args in (['--help'], ['extract', '--help'], ['analyze', 'latent', 'clusters', '--help']):\n"
        "    assert CliRunner().invoke(main, args).exit_code == 0, args\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'kornia', 'zarr', 'faiss', 'numpy') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_module_entry_point_and_version():
    result = run_cli("--version")
    assert result.returncode == 0 and "lpclip-cache" in result.stdout


def test_json_summary_of_extract_is_machine_readable(image_folder, tiny_checkpoint, tmp_path):
    result = invoke("extract", "--data", str(image_folder), "--pretrained", str(tiny_checkpoint), "--workers", "0",
                    "--weak-views", "1", "--strong-views", "1", "--out", str(tmp_path / "s.zarr"), "--json",
                    "--quiet")
    summary = json.loads(result.stdout)
    assert summary["images"] == 12 and summary["classes"] == 3 and summary["embed_dim"] == 64
    assert np.isfinite(summary["views_per_s"]) and Path(summary["store"]).name == "s.zarr"
