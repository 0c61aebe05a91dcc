"""The offline world: generated shapes, corruptions, the project's small CLIP and the demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lpclip_cache.corruptions import corrupt
from lpclip_cache.data import open_source
from lpclip_cache.errors import InputError
from lpclip_cache.world.demo import CORRUPTIONS
from lpclip_cache.world.shapes import (
    SHAPES,
    STYLES,
    coverage,
    parse_spec,
    render,
    sample_attributes,
    split_rng,
)
from lpclip_cache.world.teacher import TeacherConfig

# The demo's own teacher (trained once for this module, about two minutes on 2 cores: shorter
# trainings stay near chance), with smaller data sets around it.
SMALL_DEMO = dict(train_n=600, test_n=150, views=2, epochs=15, severities=(1, 3))


def test_rendering_is_a_function_of_seed_and_split():
    a = render(sample_attributes(40, split_rng(0, "test")))
    b = render(sample_attributes(40, split_rng(0, "test")))
    c = render(sample_attributes(40, split_rng(1, "test")))
    d = render(sample_attributes(40, split_rng(0, "train")))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert a.shape == (40, 32, 32, 3) and a.dtype == np.uint8


def test_styles_keep_the_shapes_but_change_their_look():
    attrs = sample_attributes(200, split_rng(0, "test"))
    cover = {style: coverage(attrs, 32, style) for style in STYLES}
    assert all(0.0 <= c.min() and c.max() <= 1.0 for c in cover.values())
    filled = cover["filled"].sum(axis=(1, 2))
    # an outline covers a band inside the filled shape; stripes cover about half of it
    assert (cover["outline"] <= cover["filled"] + 1e-6).all()
    assert np.all(cover["outline"].sum(axis=(1, 2)) < 0.75 * filled)
    assert np.all(cover["texture"].sum(axis=(1, 2)) < 0.8 * filled)
    assert np.bincount(attrs.shape, minlength=6).min() > 15


def test_shape_classes_differ_in_area_as_drawn():
    # same placement, size and rotation for every class: a circle covers more than a triangle or a cross
    attrs = sample_attributes(6, split_rng(0, "test"))
    attrs.shape[:] = np.arange(6)
    attrs.cx[:] = attrs.cy[:] = attrs.rotation[:] = 0.0
    attrs.radius[:] = 0.6
    area = dict(zip(SHAPES, coverage(attrs).sum(axis=(1, 2))))
    disc = np.pi * (0.6 * 16) ** 2
    assert area["circle"] == pytest.approx(disc, rel=0.03)
    assert area["triangle"] < area["square"] < area["circle"]
    assert area["star"] < area["circle"] and area["cross"] < area["square"]


def test_shapes_source_from_a_data_spec():
    source = open_source("shapes:test:outline:n=30:seed=2")
    assert len(source) == 30 and source.classnames == list(SHAPES)
    assert source.identity["domain"] == "outline"
    ood = open_source("shapes:ood:n=12")
    assert (ood.labels == -1).all()
    corrupted = open_source("shapes:test:contrast:4:n=30:seed=2")
    clean = open_source("shapes:test:n=30:seed=2")
    np.testing.assert_array_equal(corrupted.labels, clean.labels)
    assert corrupted.identity["domain"] == "contrast-4"
    assert parse_spec("shapes:x", "", "train").split == "train"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("shapes:", "needs a split"),
        ("shapes:test:wobbly", "unknown part 'wobbly'"),
        ("shapes:test:gaussian_noise", "needs a severity 1-5"),
        ("shapes:test:contrast:9", "needs a severity 1-5"),
        ("shapes:test:n=0", "n must be at least 1"),
    ],
)
def test_bad_shapes_specs(spec, message):
    with pytest.raises(InputError, match=message):
        open_source(spec)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_grow_with_severity_and_are_seeded(name):
    images = render(sample_attributes(50, split_rng(0, "test")))
    change = [np.abs(corrupt(images, name, s).astype(int) - images).mean() for s in range(1, 6)]
    assert all(a < b for a, b in zip(change, change[1:])), change
    np.testing.assert_array_equal(corrupt(images, name, 3, seed=1), corrupt(images, name, 3, seed=1))
    assert corrupt(images, name, 3).dtype == np.uint8


def test_teacher_training_is_deterministic(tmp_path):
    from safetensors.numpy import load_file

    from lpclip_cache.world.teacher import train_teacher

    config = TeacherConfig(pool=256, steps=3, batch_size=32, warmup=1)
    first = train_teacher(config, out=tmp_path / "a.safetensors", progress=False)
    train_teacher(config, out=tmp_path / "b.safetensors", progress=False)
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert first["key"] == config.key() != TeacherConfig(pool=256, steps=4, batch_size=32, warmup=1).key()


@pytest.fixture(scope="module")
def teacher_cache(shapes_teacher):
    """The default teacher (trained once per test session, see conftest)."""
    return shapes_teacher


def test_trained_teacher_loads_by_path_and_beats_chance_zero_shot(teacher_cache, tmp_path):
    from lpclip_cache.extraction import ExtractConfig, extract
    from lpclip_cache.store import FeatureStore

    extract(ExtractConfig(data="shapes:test:n=600:seed=5", out=str(tmp_path / "t.zarr"), model="lpclip-shapes",
                          pretrained=str(teacher_cache), weak_views=0, strong_views=0, templates="shapes",
                          num_workers=0, progress=False))
    store = FeatureStore(tmp_path / "t.zarr")
    accuracy = float((store.read("clean/label") == store.labels()).mean())
    assert store.manifest["model"]["pretrained"]["kind"] == "file"
    # six classes: chance is 1/6; the project's small CLIP learned shapes from captions alone
    assert accuracy > 0.28, accuracy


@pytest.fixture(scope="module")
def demo_pair(teacher_cache, tmp_path_factory):
    from lpclip_cache.world.demo import DemoConfig, run_demo

    base = tmp_path_factory.mktemp("demo")
    first = run_demo(DemoConfig(out=str(base / "a"), progress=False, **SMALL_DEMO))
    second = run_demo(DemoConfig(out=str(base / "b"), progress=False, **SMALL_DEMO))
    return base, first, second


def test_demo_results_have_every_row_and_column(demo_pair):
    base, results, _ = demo_pair
    assert results["methods"] == ["teacher", "lpclip", "supervised"]
    assert results["columns"] == ["test", "outline", "texture", "gaussian_noise", "gaussian_blur", "contrast", "ood"]
    for method in results["methods"]:
        row = results["table"][method]
        for column in results["columns"][:-1]:
            assert set(row[column]) == {"accuracy", "ece", "nll"}
            assert 0.0 <= row[column]["accuracy"] <= 1.0
        assert set(row["ood"]) == {"auroc", "fpr95"}
        assert {f"gaussian_noise-{s}" for s in (1, 3)} <= set(results["per_set"][method])
    on_disk = json.loads((base / "a" / "results.json").read_text())
    assert on_disk["table"] == results["table"]
    markdown = (base / "a" / "results.md").read_text()
    assert "| lpclip |" in markdown and "| supervised |" in markdown and "| teacher |" in markdown
    assert set(results["clusters"]["spaces"]) == {"clip", "probe"}


def test_demo_plots_are_real_images(demo_pair):
    from PIL import Image

    base, _, _ = demo_pair
    for name, size in (("reliability.png", (1200, 400)), ("severity.png", (1200, 360))):
        with Image.open(base / "a" / name) as image:
            assert image.size == size
            pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 10  # not a blank canvas


def test_demo_is_reproducible_with_the_same_seed(demo_pair):
    _, first, second = demo_pair
    assert first["table"] == second["table"]
    assert first["per_set"] == second["per_set"]


def test_demo_teacher_is_the_zero_shot_row(demo_pair):
    _, results, _ = demo_pair
    assert results["per_set"]["teacher"]["test"]["accuracy"] > 0.28


def test_demo_command_line_and_refusal(teacher_cache, tmp_path):
    from lpclip_cache.cli import main

    args = ["demo", "--out", str(tmp_path / "d"), "--train-n", "200", "--test-n", "60", "--views", "1",
            "--epochs", "2", "--quiet", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + result.stderr
    assert set(json.loads(result.stdout)["table"]) == {"teacher", "lpclip", "supervised"}
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 5 and "already exists" in again.stderr
