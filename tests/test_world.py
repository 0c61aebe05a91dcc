"""The offline world: generated shapes, corruptions, the project's small CLIP and the demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lpclip_cache.config import DemoConfig as DemoConfig_
from lpclip_cache.corruptions import corrupt
from lpclip_cache.data import open_source
from lpclip_cache.errors import InputError
from lpclip_cache.world.shapes import (
    DEFAULT_WORLD,
    NATURAL_SHIFTS,
    RENDITIONS,
    SHAPES,
    STYLES,
    coverage,
    parse_spec,
    render,
    sample_attributes,
    split_rng,
)
from lpclip_cache.world.teacher import TeacherConfig

# The demo's own teacher (trained once per session, about two minutes on 2 cores: shorter
# trainings stay near chance), with smaller data sets, two seeds and one severity around it.
SMALL_DEMO = dict(train_n=300, test_n=100, corrupt_n=20, views=2, epochs=10, severities=(3,), seeds=2, ensemble=2)
DEMO_CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast")  # the three the demo once showed alone


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
    assert np.bincount(attrs.shape, minlength=len(SHAPES)).min() > 5


def test_natural_shifts_show_the_same_objects_another_way():
    """``recoloured`` draws each test object where it was, in a colour that is never its class's
    usual one (the filled test images keep the usual one almost always); ``greyscale`` is the same
    scene as a black-and-white photo (ITU-R 601 luma, PIL's convert("L"))."""
    import dataclasses

    from PIL import Image

    from lpclip_cache.world.shapes import CLASS_COLOURS, COLOURS, unusual_colours

    attrs = sample_attributes(300, split_rng(0, "test"))
    usual = CLASS_COLOURS[attrs.shape]
    assert np.mean(attrs.colour == usual) > 0.9
    recoloured = unusual_colours(attrs)
    assert not np.any(recoloured == usual) and len(np.unique(recoloured)) == len(COLOURS)
    unlit = dataclasses.replace(attrs, light=None, camera=None)  # light and cameras look at the whole scene
    filled, other = render(unlit), render(unlit, style="recoloured")
    cover = coverage(attrs)
    np.testing.assert_array_equal(filled[cover == 0], other[cover == 0])
    assert np.abs(filled[cover > 0.99].astype(int) - other[cover > 0.99]).max(axis=-1).mean() > 40
    filled, grey = render(attrs), render(attrs, style="greyscale")
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    for i in range(20):
        expected = np.asarray(Image.fromarray(filled[i]).convert("L"))
        assert np.abs(grey[i, ..., 0].astype(int) - expected).max() <= 1


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


def test_the_geometry_world_is_the_landed_world_bit_for_bit():
    """``--world geometry`` is the contrast: the world as it landed before the objects world, the
    same draws, images, styles, scribbles and captions (digest taken from that version's code)."""
    import hashlib

    from lpclip_cache.world.shapes import WORLDS, captions, render_scribbles

    def digest(*arrays, text=""):
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(text.encode())
        return h.hexdigest()[:16]

    geometry = WORLDS["geometry"]
    rng = split_rng(3, "pretrain")
    attrs = sample_attributes(40, rng, geometry)
    text = "\n".join(captions(attrs, rng, geometry))
    images = [render(attrs, style=style) for style in ("filled", "outline", "texture")]  # the styles it landed with
    assert digest(*images, render_scribbles(10, split_rng(3, "ood"), world=geometry), text=text) == "1309be2b0f05fa7a"


def test_the_objects_world_keeps_objects_whole_inside_the_frame():
    """Objects stay whole, the world's margin inside the frame (so a shift by the weak view's few
    pixels mirrors at most a sliver of them), face either way, turn through the strong view's
    rotations on top of the earlier world's, and move about (the encoder must learn to ignore where)."""
    from lpclip_cache.world.shapes import WORLDS

    world = WORLDS["objects"]
    attrs = sample_attributes(600, split_rng(0, "test"), world)
    cover = coverage(attrs)
    border = int(world.margin * 16)  # the margin in pixels of a 32-pixel image, whole pixels only
    assert border >= 1
    rim = np.ones((32, 32), bool)
    rim[border:-border, border:-border] = False
    assert cover[:, rim].max() < 0.02, "an object reaches into the frame's margin"
    assert 0.4 < attrs.mirror.mean() < 0.6
    assert np.rad2deg(np.abs(attrs.rotation)).max() > 50  # the strong view's +-30 on top of the base +-25
    assert attrs.cx.std() > 0.15 and attrs.cy.std() > 0.15


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
    geometry = open_source("shapes:test:n=30:seed=2:world=geometry")
    assert geometry.identity["world"] == "geometry" and clean.identity["world"] == DEFAULT_WORLD == "web"
    assert not np.array_equal(geometry.labels, clean.labels) or not np.array_equal(geometry.pixels, clean.pixels)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("shapes:", "needs a split"),
        ("shapes:test:wobbly", "unknown part 'wobbly'"),
        ("shapes:test:gaussian_noise", "needs a severity 1-5"),
        ("shapes:test:contrast:9", "needs a severity 1-5"),
        ("shapes:test:n=0", "n must be at least 1"),
        ("shapes:test:world=flat", "unknown part 'world=flat'"),
    ],
)
def test_bad_shapes_specs(spec, message):
    with pytest.raises(InputError, match=message):
        open_source(spec)


@pytest.mark.parametrize("name", sorted(DEMO_CORRUPTIONS))
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
    # twelve classes: chance is 1/12; the project's small CLIP learned shapes from captions alone
    assert accuracy > 0.5, accuracy


@pytest.fixture(scope="module")
def shipped_regime(teacher_cache):
    """The regime figures of the shipped teacher (measured once for the tests that read them)."""
    from lpclip_cache.world.regime import measure

    return measure(teacher_cache, seed=0)


def test_world_clip_is_in_clips_regime(shipped_regime):
    """Point 1 of the demo's world (docs/demo.md), on the shipped teacher: strong features, a weaker
    zero-shot head with no class at chance; natural shifts it survives (two at 3 times chance, one
    keeping half its clean accuracy) where the supervised probe's advantage does not carry over
    (effective robustness); an overconfident failure on a rendition it never saw; OOD images it does
    not tell apart. The thresholds are the requirement's, not figures of this teacher."""
    figures = shipped_regime
    chance = 1 / figures["classes"]
    assert figures["classes"] >= 10
    assert figures["supervised_probe"] >= 0.85, figures
    assert 0.55 <= figures["zeroshot"] <= 0.85, figures
    assert figures["supervised_probe"] - figures["zeroshot"] >= 0.08, figures
    assert min(figures["zeroshot_per_class"].values()) > 1.5 * chance, figures["zeroshot_per_class"]
    natural = {k: v for k, v in figures["shifts"].items() if k in NATURAL_SHIFTS}
    survived = {k: v for k, v in natural.items() if v["accuracy"] >= 3 * chance}
    assert len(survived) >= 2 and any(v["accuracy"] / figures["zeroshot"] >= 0.5 for v in survived.values()), natural
    assert any(v["supervised_probe"] - v["accuracy"] <= 0.02 for v in survived.values()), natural
    assert any(v["drop"] >= 0.20 and v["ece"] >= 0.15 for k, v in figures["shifts"].items() if k in RENDITIONS)
    assert figures["ood_msp_auroc"] < 0.75, figures
    # the method's views keep the class, as FixMatch's views do on photos (issue: views that keep the class)
    views = figures["views"]
    assert views["views"]["weak"]["label_preservation"]["ratio"] >= 0.97, views
    assert views["views"]["strong"]["label_preservation"]["ratio"] >= 0.70, views
    assert views["clean"]["teacher_accuracy"] - views["views"]["weak"]["teacher_accuracy"] <= 0.02, views
    assert figures["world"] == DEFAULT_WORLD and figures["in_regime"], figures["checks"]


def regime_case(**changes):
    """Regime figures that pass every check, with ``changes`` to one shift's or the head's figures."""
    shift = {"outline": dict(accuracy=0.1, ece=0.4, drop=0.6, natural=False),
             "recoloured": dict(accuracy=0.6, ece=0.05, drop=0.1, natural=True),
             "greyscale": dict(accuracy=0.3, ece=0.1, drop=0.4, natural=True)}
    for name, figures in changes.pop("shifts", {}).items():
        shift[name] = {**shift[name], **figures}
    for figures in shift.values():
        figures.setdefault("kept", figures["accuracy"] / 0.7)
        figures.setdefault("supervised_probe", figures["accuracy"] - 0.05)
        figures["probe_over_teacher"] = figures["supervised_probe"] - figures["accuracy"]
    views = {"clean": {"teacher_accuracy": 0.7},
             "views": {"weak": {"label_preservation": {"ratio": 0.99}, "teacher_accuracy": 0.69},
                       "strong": {"label_preservation": {"ratio": 0.8}, "teacher_accuracy": 0.6}}}
    base = dict(probe=0.9, zeroshot=0.7, per_class={f"c{i}": 0.5 for i in range(12)}, shifts=shift, auroc=0.6,
                views=views)
    return {**base, **changes}


@pytest.mark.parametrize(("changes", "failing"), [
    ({}, set()),
    # one natural shift above 3 x chance is not two
    ({"shifts": {"greyscale": {"accuracy": 0.2, "kept": 0.28}}}, {"natural_shifts_survived"}),
    # two survived, but none keeps half its clean accuracy
    ({"shifts": {"recoloured": {"kept": 0.45}, "greyscale": {"kept": 0.4}}}, {"natural_shifts_survived"}),
    # the supervised probe keeps its advantage on every natural shift
    ({"shifts": {"recoloured": {"supervised_probe": 0.65}, "greyscale": {"supervised_probe": 0.33}}},
     {"effective_robustness"}),
    # the only shift where the probe loses its advantage is one the teacher did not survive
    ({"shifts": {"greyscale": {"accuracy": 0.2, "kept": 0.28, "supervised_probe": 0.1},
                 "recoloured": {"supervised_probe": 0.7}}}, {"natural_shifts_survived", "effective_robustness"}),
    # no overconfident failure: the rendition's ECE is low
    ({"shifts": {"outline": {"ece": 0.1}}}, {"overconfident_failure"}),
    ({"probe": 0.76}, {"probe", "zeroshot"}),
    ({"auroc": 0.8}, {"ood"}),
])
def test_regime_checks_name_each_requirement(changes, failing):
    """``judge`` fails exactly the requirements a set of figures misses (issue: shifts where CLIP
    stays robust), so a world is judged by every one of them."""
    from lpclip_cache.world.regime import judge

    result = judge(**regime_case(**changes))
    assert {name for name, ok in result["checks"].items() if not ok} == failing
    assert result["in_regime"] == (not failing)


def test_shipped_teacher_records_the_configuration_that_made_it(teacher_cache):
    """The default teacher ships in fp16 (the cold demo does not train it): the file is the one
    ``shipped_path`` names for the default configuration, its metadata is that configuration, and
    its tensors are half precision."""
    import json

    from safetensors import safe_open

    from lpclip_cache.world.teacher import shipped_path

    assert teacher_cache == shipped_path(TeacherConfig()) and teacher_cache.stat().st_size < 5_000_000
    assert TeacherConfig().key() in teacher_cache.name
    with safe_open(str(teacher_cache), "pt") as handle:
        recorded = json.loads(handle.metadata()["config"])
        dtypes = {handle.get_slice(name).get_dtype() for name in handle.keys()}
    assert recorded == json.loads(json.dumps(TeacherConfig().__dict__))
    assert {d for d in dtypes if d.startswith(("F", "BF"))} == {"F16"}, dtypes  # integer buffers stay as they are


def test_worlds_have_one_list_of_names():
    from lpclip_cache.config import DemoConfig
    from lpclip_cache.world.shapes import DEFAULT_WORLD, WORLDS

    choices = DemoConfig.__dataclass_fields__["world"].metadata["choices"]
    assert tuple(WORLDS) == choices and DemoConfig.world == TeacherConfig.world == DEFAULT_WORLD


def test_world_vocabulary_file_is_the_one_the_world_defines():
    """The compact vocabulary shipped in the package is what ``vocabulary_file`` makes from the
    captions and templates, every world word is one token, and the model's table fits it."""
    import json

    from lpclip_cache.models import CONFIG_DIR, VOCAB_DIR, load_model
    from lpclip_cache.world.shapes import vocabulary, vocabulary_file

    assert (VOCAB_DIR / "shapes-bpe.txt.gz").read_bytes() == vocabulary_file()
    tokenizer = load_model("lpclip-shapes", "none", device="cpu").tokenizer
    assert all(len(tokenizer.encode(word)) == 1 for word in vocabulary())
    config = json.loads((CONFIG_DIR / "lpclip-shapes.json").read_text())
    assert config["text_cfg"]["vocab_size"] == tokenizer.vocab_size == tokenizer.eot_token_id + 1 < 1000


@pytest.fixture(scope="module")
def demo_pair(teacher_cache, tmp_path_factory):
    from lpclip_cache.world.demo import DemoConfig, run_demo

    base = tmp_path_factory.mktemp("demo")
    first = run_demo(DemoConfig(out=str(base / "a"), progress=False, **SMALL_DEMO))
    second = run_demo(DemoConfig(out=str(base / "b"), progress=False, **SMALL_DEMO))
    return base, first, second


DEMO_SHIFTS = ("outline", "recoloured", "greyscale")  # the demo recipe's style shifts
STYLE_COLUMNS = [f"{style}_{m}" for style in DEMO_SHIFTS for m in ("accuracy", "ece", "nll")]
CLUSTER_COLUMNS = ["purity", "nmi", "ari"]
ROBUSTNESS_COLUMNS = [f"{style}_effective_robustness" for style in DEMO_SHIFTS]
COLUMNS = ["test_accuracy", "test_ece", "test_nll", *STYLE_COLUMNS, "corruption_error", "corruption_ece", "ood_auroc",
           "ood_fpr95", *CLUSTER_COLUMNS, *ROBUSTNESS_COLUMNS]


def test_demo_results_have_every_row_and_column(demo_pair):
    base, results, _ = demo_pair
    assert results["methods"] == ["teacher", "lpclip", "ensemble", "supervised", "transclip", "transclip-lpclip"]
    assert results["columns"] == COLUMNS and results["seeds"] == [0, 1]
    for method in results["methods"]:
        # TransCLIP keeps CLIP's embeddings: no space of its own for k-means (n/a); every other cell is a number
        applies = [c for c in COLUMNS if c not in CLUSTER_COLUMNS] if method.startswith("transclip") else COLUMNS
        assert list(results["table"][method]) == applies
        for column in applies:
            stat = results["table"][method][column]
            assert set(stat) == {"mean", "sd", "ci95", "values"} and len(stat["values"]) == 2
            if column.endswith("_effective_robustness"):  # undefined (NaN) only where the line is
                rows = [seed["table"] for seed in results["per_seed"]]
                undefined = [r["teacher"]["test_accuracy"] == r["supervised"]["test_accuracy"] for r in rows]
                assert list(~np.isfinite(stat["values"])) == undefined
            else:
                assert all(np.isfinite(stat["values"]))
        assert 0.0 <= results["table"][method]["test_accuracy"]["mean"] <= 1.0
    assert {"lpclip", "no-weighting", "soft-targets", "threshold-0.5", "no-consistency", "random-init", "views-1",
            "strong-1-ops", "strong-3-ops", "supervised", "teacher"} == set(results["ablation"])
    on_disk = json.loads((base / "a" / "results.json").read_text())
    assert on_disk["table"] == results["table"] and on_disk["regime"]["classes"] == len(SHAPES)
    markdown = (base / "a" / "results.md").read_text()
    assert "| test_accuracy |" in markdown and "| strong-1-ops |" in markdown and "lpclip - teacher" in markdown
    assert "| transclip-lpclip |" in markdown and "lpclip - transclip" in markdown and "| n/a |" in markdown
    # the views table: each seed's train store through analyze views, mean and spread over seeds
    assert results["world"] == "web" and set(results["views"]) == {"clean", "weak", "strong"}
    assert "| keeps |" in markdown and "| weak |" in markdown and "| strong |" in markdown
    for seed, figures in zip(results["per_seed"], (json.loads((base / "a" / "seeds" / str(s) / "analysis" /
                                                             "views-train.json").read_text()) for s in (0, 1))):
        assert seed["views"]["strong"]["keeps"] == figures["views"]["strong"]["label_preservation"]["ratio"]
        assert results["views"]["weak"]["teacher_accuracy"]["values"][seed["seed"]] == \
            figures["views"]["weak"]["teacher_accuracy"]


def test_demo_table_statistics_are_computed_from_the_per_seed_results(demo_pair):
    """Every cell's mean, standard deviation and 95% t-interval, and the paired LP-CLIP minus
    teacher difference, recomputed here from the seeds' own figures."""
    from scipy import stats

    _, results, _ = demo_pair
    seeds = results["per_seed"]
    t = stats.t.ppf(0.975, len(seeds) - 1)
    for method in results["methods"]:
        for column in results["table"][method]:
            values = np.array([seed["table"][method][column] for seed in seeds])
            stat = results["table"][method][column]
            assert stat["values"] == values.tolist()
            assert stat["mean"] == pytest.approx(values.mean()) and stat["sd"] == pytest.approx(values.std(ddof=1))
            half = t * values.std(ddof=1) / np.sqrt(len(values))
            assert stat["ci95"] == pytest.approx([values.mean() - half, values.mean() + half])
    pairs = [("lpclip", "teacher"), ("lpclip", "supervised"), ("transclip", "teacher"), ("lpclip", "transclip"),
             ("transclip-lpclip", "lpclip"), ("transclip-lpclip", "transclip")]
    assert list(results["paired"]) == [f"{a} - {b}" for a, b in pairs]
    for a, b in pairs:
        # the cluster columns are n/a for TransCLIP
        applies = [c for c in COLUMNS if c not in CLUSTER_COLUMNS] if "transclip" in (a + b) else COLUMNS
        assert list(results["paired"][f"{a} - {b}"]) == applies
        for column in applies:
            diff = np.array([s["table"][a][column] - s["table"][b][column] for s in seeds])
            assert results["paired"][f"{a} - {b}"][column]["mean"] == pytest.approx(diff.mean())
            assert results["paired"][f"{a} - {b}"][column]["sd"] == pytest.approx(diff.std(ddof=1))
    for variant, cells in results["ablation"].items():
        assert cells["test_accuracy"]["values"] == [s["ablation"][variant]["test_accuracy"] for s in seeds]
    # the seeds differ (data, views, probes), so the spread is real, not zero
    assert results["table"]["lpclip"]["test_accuracy"]["sd"] > 0
    # effective robustness: each seed's shifted accuracy above the line through its teacher and supervised probe
    for seed in seeds:
        row = seed["table"]
        for style in ("recoloured", "outline"):
            (x0, y0), (x1, y1) = ((row[m]["test_accuracy"], row[m][f"{style}_accuracy"]) for m in ("teacher",
                                                                                                 "supervised"))
            for method in results["methods"]:
                expected = row[method][f"{style}_accuracy"] - (y0 + (y1 - y0) / (x1 - x0) * (
                    row[method]["test_accuracy"] - x0))
                assert row[method][f"{style}_effective_robustness"] == pytest.approx(expected, abs=1e-12)
            assert row["teacher"][f"{style}_effective_robustness"] == pytest.approx(0, abs=1e-12)
            assert row["supervised"][f"{style}_effective_robustness"] == pytest.approx(0, abs=1e-12)


def test_demo_transclip_rows_are_lpclip_reports_transclip_methods(demo_pair):
    """The demo's two TransCLIP methods are the rows of each seed's LP-CLIP report: TransCLIP on the
    zero-shot head and atop the LP-CLIP probe, each scored on the whole test set it transduced."""
    base, results, _ = demo_pair
    for index, seed in enumerate(results["seeds"]):
        report = json.loads((base / "a" / "seeds" / str(seed) / "reports" / "lpclip.json").read_text())
        assert report["methods"][-2:] == ["transclip", "transclip-probe"]
        test = next(entry for path, entry in report["stores"].items() if path.endswith("/test.zarr"))
        assert results["table"]["transclip"]["test_accuracy"]["values"][index] == test["transclip"]["accuracy"]
        assert results["table"]["transclip-lpclip"]["test_ece"]["values"][index] == test["transclip-probe"]["ece"]
        for other in ("ensemble", "supervised"):  # asked for in LP-CLIP's evaluation alone
            assert "transclip" not in json.loads((base / "a" / "seeds" / str(seed) / "reports" /
                                                  f"{other}.json").read_text())["methods"]
    # zero-shot TransCLIP starts from the teacher's predictions, and it moves them
    assert results["table"]["transclip"]["test_accuracy"]["values"] != results["table"]["teacher"]["test_accuracy"][
        "values"]


def test_demo_plots_are_real_images(demo_pair):
    from PIL import Image

    base, _, _ = demo_pair
    for name, size in (("reliability.png", (1200, 400)), ("severity.png", (600, 400)),
                       ("effective_robustness.png", (640, 520))):
        with Image.open(base / "a" / name) as image:
            assert image.size == size
            pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 10  # not a blank canvas


def test_the_geometry_demo_runs_the_landed_world_with_its_own_teacher(tmp_path):
    """``demo --world geometry`` plans every data set in the geometry world and takes that world's
    teacher (1000 steps, as it landed), not the shipped objects teacher; an unknown world is one line."""
    from lpclip_cache.world.demo import check_config, overrides
    from lpclip_cache.world.teacher import shipped_path, world_teacher

    config = DemoConfig_(world="geometry")
    items = overrides(config, tmp_path / "ckpt.safetensors", 0, tmp_path / "out")
    data = [item for item in items if item.startswith("datasets.") and ".data=" in item]
    assert data and all(item.endswith(":world=geometry") for item in data)
    teacher = world_teacher("geometry")
    assert teacher == TeacherConfig(world="geometry", seed=1, steps=1000) and not shipped_path(teacher).exists()
    assert world_teacher("web") == TeacherConfig() and shipped_path(TeacherConfig()).exists()
    assert world_teacher("web", steps=None, seed=5).seed == 5
    # the objects world keeps the teacher it landed with (shipped too: its file name hashes its configuration)
    objects = world_teacher("objects")
    assert (objects.steps, objects.seed) == (2000, 2) and shipped_path(objects).exists()
    with pytest.raises(InputError, match="--world must be one of web, objects, geometry"):
        check_config(DemoConfig_(world="flat"))
    with pytest.raises(InputError, match="--test-n and --corrupt-n must be more than 3: TransCLIP"):
        check_config(DemoConfig_(corrupt_n=3))


def test_demo_is_reproducible_with_the_same_seed(demo_pair):
    _, first, second = demo_pair
    assert first["table"] == second["table"]
    assert first["paired"] == second["paired"] and first["ablation"] == second["ablation"]


def test_demo_teacher_is_the_zero_shot_row(demo_pair):
    _, results, _ = demo_pair
    # the teacher row is zero-shot CLIP on the recipe's test sets, well above chance (1/12)
    assert min(results["table"]["teacher"]["test_accuracy"]["values"]) > 0.5


def test_demo_command_line_and_refusal(teacher_cache, tmp_path):
    from lpclip_cache.cli import main

    args = ["demo", "--out", str(tmp_path / "d"), "--train-n", "200", "--test-n", "60", "--corrupt-n", "8",
            "--severities", "2", "--views", "1", "--epochs", "2", "--seeds", "2", "--ensemble", "2", "--quiet",
            "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + result.stderr
    assert set(json.loads(result.stdout)["table"]) == {"teacher", "lpclip", "ensemble", "supervised", "transclip",
                                                       "transclip-lpclip"}
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 5 and "already exists" in again.stderr


def test_an_independent_probe_reads_the_demos_own_stores(demo_pair):
    """``pipelines/independent_probe.py`` (zarr and scikit-learn, no project code) scores the teacher
    on each seed's stores exactly as the demo's reports do, and fits its own probe on the train store."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "pipelines" / "independent_probe.py"
    spec = importlib.util.spec_from_file_location("independent_probe", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base, results, _ = demo_pair
    figures = module.seed_figures(base / "a" / "seeds" / "0" / "stores")
    assert set(figures) == {"test", "outline", "recoloured", "greyscale"}  # the recipe's shifts
    table = results["per_seed"][0]["table"]
    for name, cell in figures.items():
        column = "test_accuracy" if name == "test" else f"{name}_accuracy"
        assert cell["teacher"] == pytest.approx(table["teacher"][column], abs=1e-9), name
        assert 0.0 <= cell["probe"] <= 1.0
    assert figures["test"]["probe"] > 0.5  # a probe fitted on true labels, scored on held-out images


def test_the_retraining_script_trains_each_worlds_own_teacher():
    """``pipelines/train_shapes_clip.py --world W`` retrains W's own teacher (so ``--compare-shipped``
    finds the shipped weights of ``web`` and ``objects``), and its options change only what they name."""
    import importlib.util
    from pathlib import Path

    from lpclip_cache.world.teacher import shipped_path, world_teacher

    script = Path(__file__).resolve().parents[1] / "pipelines" / "train_shapes_clip.py"
    spec = importlib.util.spec_from_file_location("train_shapes_clip", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for world in ("web", "objects", "geometry"):
        _, config = module.arguments(["--world", world])
        assert config == world_teacher(world)
        assert shipped_path(config).exists() == (world != "geometry")
    _, default = module.arguments([])
    assert default == TeacherConfig()
    _, changed = module.arguments(["--world", "objects", "--seed", "5", "--threads", "1"])
    assert (changed.seed, changed.threads, changed.steps) == (5, 1, world_teacher("objects").steps)


def test_no_output_writes_nan_or_infinity_into_json(demo_pair):
    """JSON has no NaN or Infinity: every output writes an undefined figure (an effective robustness
    whose two reference models tie, an ablation variant that kept no sample) as null, so a strict
    parser reads the demo's and each seed's files."""
    from lpclip_cache.outputs import json_text

    def strict(text):
        def refuse(constant):
            raise ValueError(f"non-standard JSON constant {constant}")
        return json.loads(text, parse_constant=refuse)

    assert strict(json_text({"a": float("nan"), "b": [float("inf"), 1.5, (-float("inf"),)], "c": "x"})) == {
        "a": None, "b": [None, 1.5, [None]], "c": "x"}
    base, _, _ = demo_pair
    files = [base / "a" / "results.json", *(base / "a" / "seeds").rglob("*.json")]
    assert len(files) > 10
    for path in files:
        strict(path.read_text())
