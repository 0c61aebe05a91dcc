"""Stage one on real components: test-tiny over real CIFAR-10 JPEGs and generated images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lpclip_cache.extraction import ExtractConfig, extract
from lpclip_cache.store import FeatureStore, row_order

ARRAYS = ("clean/emb", "clean/label", "clean/conf", "weak/emb", "weak/label", "weak/conf",
          "strong/emb", "strong/label", "strong/conf", "head", "labels", "keys", "valid", "done")


def build(out: Path, data: Path, checkpoint: Path, **overrides) -> FeatureStore:
    options = dict(
        data=str(data), split="test", out=str(out), model="test-tiny", pretrained=str(checkpoint),
        weak_views=2, strong_views=3, shard_size=64, batch_size=50, num_workers=0, device="cpu",
        templates="cifar10", progress=False,
    )
    options.update(overrides)
    extract(ExtractConfig(**options))
    return FeatureStore(out)


@pytest.fixture(scope="module")
def store_pair(cifar_root, tiny_checkpoint, tmp_path_factory):
    """The same extraction twice (seed 0, two decode workers once) and once with seed 1."""
    base = tmp_path_factory.mktemp("stores")
    first = build(base / "a.zarr", cifar_root, tiny_checkpoint, num_workers=2)
    second = build(base / "b.zarr", cifar_root, tiny_checkpoint)
    other = build(base / "c.zarr", cifar_root, tiny_checkpoint, seed=1)
    return first, second, other


def test_store_holds_every_array_with_the_right_shapes(store_pair):
    store = store_pair[0]
    shapes = {name: shape for name, (shape, _) in store.arrays().items()}
    assert set(ARRAYS) <= set(shapes)
    assert shapes["clean/emb"] == (200, 64)
    assert shapes["weak/emb"] == (200, 2, 64)
    assert shapes["strong/emb"] == (200, 3, 64)
    assert shapes["head"] == (10, 64)
    assert store.read("clean/emb").dtype == np.float16
    assert store.read("done").tolist() == [1, 1, 1, 1]
    assert store.read("valid").all()


def test_embeddings_are_unit_norm_fp16(store_pair):
    store = store_pair[0]
    for kind in ("clean", "weak", "strong"):
        norms = np.linalg.norm(store.read(f"{kind}/emb").astype(np.float32), axis=-1)
        np.testing.assert_allclose(norms, 1.0, atol=2e-3)


def test_pseudo_labels_equal_an_independent_zero_shot_computation(store_pair):
    store = store_pair[0]
    head = store.head().astype(np.float64)
    scale = store.logit_scale
    for kind in ("clean", "weak", "strong"):
        emb = store.read(f"{kind}/emb").astype(np.float64)
        logits = scale * emb @ head.T
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        np.testing.assert_array_equal(store.read(f"{kind}/label"), probs.argmax(-1))
        np.testing.assert_allclose(store.read(f"{kind}/conf"), probs.max(-1), rtol=1e-5)


def test_clean_view_matches_open_clip_preprocessing_and_model(store_pair, cifar_root, tiny_checkpoint):
    import open_clip
    import torch
    from PIL import Image

    import lpclip_cache.models  # noqa: F401  (registers test-tiny)

    store = store_pair[0]
    model, _, preprocess = open_clip.create_model_and_transforms("test-tiny", pretrained=str(tiny_checkpoint))
    model.eval()
    keys = store.read("keys")[::37]
    rows = np.arange(200)[::37]
    images = torch.stack([preprocess(Image.open(cifar_root / "test" / k)) for k in keys])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.encode_image(images), dim=-1).numpy()
    np.testing.assert_allclose(store.read("clean/emb")[rows].astype(np.float32), expected, atol=2e-3)


def test_zero_shot_head_is_the_prompt_ensemble(store_pair, tiny_checkpoint):
    import open_clip
    import torch

    from lpclip_cache.models import load_model
    from lpclip_cache.prompts import load_templates

    store = store_pair[0]
    loaded = load_model("test-tiny", str(tiny_checkpoint), device="cpu")
    tokenizer = open_clip.get_tokenizer("test-tiny")
    templates = load_templates("cifar10")
    rows = []
    with torch.no_grad():
        for name in store.classnames:
            text = loaded.model.encode_text(tokenizer([t.format(name) for t in templates]))
            mean = torch.nn.functional.normalize(text, dim=-1).mean(0)
            rows.append(torch.nn.functional.normalize(mean, dim=0).numpy())
    np.testing.assert_allclose(store.head(), np.stack(rows), atol=1e-5)
    assert store.classnames[:3] == ["airplane", "automobile", "bird"]


def test_same_seed_gives_bit_identical_stores(store_pair):
    first, second, _ = store_pair
    for name in ARRAYS:
        np.testing.assert_array_equal(first.read(name), second.read(name), err_msg=name)
    assert first.cache_key == second.cache_key


def test_another_seed_changes_augmented_views_only(store_pair):
    first, _, other = store_pair
    np.testing.assert_array_equal(first.read("clean/emb"), other.read("clean/emb"))
    for kind in ("weak", "strong"):
        assert not np.array_equal(first.read(f"{kind}/emb"), other.read(f"{kind}/emb"))
    assert first.cache_key != other.cache_key


def test_views_differ_from_each_other_and_from_clean(store_pair):
    store = store_pair[0]
    clean = store.read("clean/emb").astype(np.float32)
    strong = store.read("strong/emb").astype(np.float32)
    weak = store.read("weak/emb").astype(np.float32)
    assert not np.allclose(strong[:, 0], strong[:, 1])
    assert not np.allclose(weak[:, 0], clean)
    # strong views wander further from the clean view than weak ones, on average
    assert np.mean(np.sum(strong * clean[:, None], -1)) < np.mean(np.sum(weak * clean[:, None], -1))


def test_manifest_records_what_changes_the_numbers(store_pair, tiny_checkpoint):
    from lpclip_cache.models import file_sha256

    manifest = store_pair[0].manifest
    assert manifest["model"]["name"] == "test-tiny"
    assert manifest["model"]["pretrained"] == {
        "kind": "file", "value": str(tiny_checkpoint.resolve()), "sha256": file_sha256(tiny_checkpoint)
    }
    assert manifest["model"]["quick_gelu"] is False
    assert len(manifest["templates"]) == 18 and len(manifest["classnames"]) == 10
    assert manifest["teacher"]["temperature"] == 1.0
    assert manifest["teacher"]["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)
    views = manifest["views"]
    assert (views["weak"], views["strong"], views["seed"], views["shard_size"]) == (2, 3, 0, 64)
    assert views["strong_policy"]["num_ops"] == 2
    assert manifest["dataset"]["n"] == 200 and len(manifest["dataset"]["fingerprint"]) == 64
    assert {"torch", "open_clip", "kornia", "zarr"} <= set(manifest["versions"])


def test_labels_and_keys_follow_the_folder(store_pair):
    store = store_pair[0]
    keys = store.read("keys")
    labels = store.labels()
    in_folder_order = [f"{c}/{i:04d}.jpg" for c in store.classnames for i in range(20)]
    # rows hold the folder's samples in the store's fixed permutation, and keys say which is where
    assert keys.tolist() == [in_folder_order[i] for i in row_order(200)]
    assert sorted(keys.tolist()) == in_folder_order
    assert np.bincount(labels).tolist() == [20] * 10
    assert all(store.classnames[label] == key.split("/")[0] for key, label in zip(keys, labels))


def test_views_can_be_zero_and_temperature_is_applied(image_folder, tiny_checkpoint, tmp_path):
    store = build(tmp_path / "s.zarr", image_folder, tiny_checkpoint, split=None, weak_views=0, strong_views=0,
                  temperature=0.5, templates="simple")
    assert not store.has("weak/emb") and not store.has("strong/emb")
    emb = store.read("clean/emb").astype(np.float64)
    logits = store.logit_scale * emb @ store.head().T / 0.5
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(store.read("clean/conf"), probs.max(-1), rtol=1e-5)
    assert store.classnames == ["class_0", "class_1", "class_2"]


def test_undecodable_image_is_an_error_or_recorded_with_skip_bad(image_folder, tiny_checkpoint, tmp_path):
    from lpclip_cache.errors import InputError

    (image_folder / "class_1" / "broken.jpg").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="broken.jpg"):
        build(tmp_path / "s.zarr", image_folder, tiny_checkpoint, split=None)
    store = build(tmp_path / "t.zarr", image_folder, tiny_checkpoint, split=None, skip_bad=True)
    keys = store.read("keys")
    valid = store.read("valid")
    assert keys[~valid].tolist() == ["class_1/broken.jpg"]
    assert store.meta["invalid"][0]["key"] == "class_1/broken.jpg"


@pytest.fixture(scope="module")
def cifar_c_root(cifar_root, tmp_path_factory):
    """The CIFAR-10-C file layout made from 200 real CIFAR-10 test JPEGs and the project's corruptions."""
    from PIL import Image

    from lpclip_cache.corruptions import corrupt
    from lpclip_cache.data import open_source

    clean = open_source(str(cifar_root), "test")
    pixels = np.stack([np.asarray(Image.open(cifar_root / "test" / k).convert("RGB")) for k in clean.keys])
    root = tmp_path_factory.mktemp("cifar10c")
    np.save(root / "gaussian_noise.npy", np.concatenate([corrupt(pixels, "gaussian_noise", s) for s in range(1, 6)]))
    np.save(root / "labels.npy", np.tile(clean.labels, 5).astype(np.uint8))
    return root, pixels, clean.labels


def test_cifar_c_layout_reads_one_severity(cifar_c_root, tiny_checkpoint, tmp_path):
    from lpclip_cache.corruptions import corrupt
    from lpclip_cache.data import open_source

    root, pixels, labels = cifar_c_root
    source = open_source(f"cifar10c:{root}:gaussian_noise:3")
    assert len(source) == 200 and source.classnames[:2] == ["airplane", "automobile"]
    np.testing.assert_array_equal(source.pixels, corrupt(pixels, "gaussian_noise", 3))
    np.testing.assert_array_equal(source.labels, labels)
    assert source.identity["severity"] == 3 and source.identity["corruption"] == "gaussian_noise"
    store = build(tmp_path / "c.zarr", f"cifar10c:{root}:gaussian_noise:3", tiny_checkpoint, split=None,
                  weak_views=0, strong_views=0, templates=None)
    assert store.manifest["templates"][0] == "a photo of a {}." and len(store.manifest["templates"]) == 18


@pytest.mark.parametrize(
    ("suffix", "message"),
    [(":gaussian_noise:7", "severity 1-5"), (":fog:2", "fog.npy' not found"), (":gaussian_noise", "should read")],
)
def test_cifar_c_bad_specs(cifar_c_root, suffix, message):
    from lpclip_cache.data import open_source
    from lpclip_cache.errors import InputError

    root, _, _ = cifar_c_root
    with pytest.raises(InputError, match=message):
        open_source(f"cifar10c:{root}{suffix}")


def test_corrupt_option_corrupts_each_shard_on_the_device_before_encoding(cifar_root, tiny_checkpoint, tmp_path):
    import open_clip
    import torch
    from PIL import Image

    from lpclip_cache.corruptions import corrupt_batch, corruption_seed
    from lpclip_cache.errors import InputError
    from lpclip_cache.preprocess import resize_to_model

    store = build(tmp_path / "c.zarr", cifar_root, tiny_checkpoint, weak_views=0, strong_views=0,
                  corrupt="motion_blur:4", shard_size=64)
    assert store.manifest["corruption"] == "motion_blur:4"
    # rebuild shard 1 (rows 64-127) by hand: decode, resize, corrupt with the shard's seed, encode
    model = open_clip.create_model("test-tiny", pretrained=str(tiny_checkpoint)).eval()
    keys = store.read("keys")[64:128]
    pixels = np.stack([np.asarray(resize_to_model(Image.open(cifar_root / "test" / k).convert("RGB"), (32, 32),
                                                  "shortest", "bicubic")) for k in keys])
    generator = torch.Generator().manual_seed(corruption_seed(0, 1, "motion_blur", 4))
    corrupted = corrupt_batch(torch.from_numpy(pixels).permute(0, 3, 1, 2), "motion_blur", 4, generator)
    mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model.encode_image((corrupted.float() / 255 - mean) / std), dim=-1)
    np.testing.assert_allclose(store.read("clean/emb")[64:128].astype(np.float32), emb.numpy(), atol=2e-3)
    clean = build(tmp_path / "clean.zarr", cifar_root, tiny_checkpoint, weak_views=0, strong_views=0, shard_size=64)
    assert np.abs(clean.read("clean/emb")[64:128].astype(np.float32) - emb.numpy()).max() > 0.01  # 5x the tolerance
    with pytest.raises(InputError, match="NAME:SEVERITY"):
        build(tmp_path / "d.zarr", cifar_root, tiny_checkpoint, corrupt="fog:9")


def test_corruptions_of_small_uniform_images_happen_at_their_own_resolution():
    from lpclip_cache.data import ArraySource
    from lpclip_cache.extraction import corrupted, corruption_size

    cifar_like = ArraySource(np.zeros((4, 32, 32, 3), np.uint8), ["k"] * 4, np.zeros(4, np.int32), None, {})
    assert corruption_size(cifar_like, (224, 224)) == (32, 32)
    assert corruption_size(cifar_like, (32, 32)) == (32, 32)
    assert corruption_size(cifar_like, (224, 160)) == (224, 160)  # not square like the images: model size
    assert corruption_size(object(), (224, 224)) == (224, 224)  # files of any size: model size
    import torch

    batch = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8))
    out = corrupted(batch, ("pixelate", 5), 0, 0, (96, 96), torch.device("cpu"))
    assert out.shape == (2, 3, 96, 96) and out.dtype == torch.float32 and 0 <= float(out.min()) <= float(out.max()) <= 1


def test_corrupt_all_severities_writes_one_store_each_and_resumes(image_folder, tiny_checkpoint, tmp_path):
    from lpclip_cache.extraction import ExtractConfig, extract_corruptions
    from lpclip_cache.store import FeatureStore

    config = ExtractConfig(data=str(image_folder), out=str(tmp_path / "pixelate"), pretrained=str(tiny_checkpoint),
                           weak_views=0, strong_views=1, num_workers=0, device="cpu", progress=False,
                           corrupt="pixelate:all")
    summary = extract_corruptions(config)
    names = sorted(p.name for p in (tmp_path / "pixelate").iterdir())
    assert names == [f"pixelate-{s}.zarr" for s in range(1, 6)]
    embeddings = []
    for severity in range(1, 6):
        store = FeatureStore(tmp_path / "pixelate" / f"pixelate-{severity}.zarr")
        assert store.meta["complete"] and store.manifest["corruption"] == f"pixelate:{severity}"
        embeddings.append(store.read("clean/emb").astype(np.float32))
    assert all(np.abs(a - b).max() > 0 for a, b in zip(embeddings, embeddings[1:]))
    assert summary["written"] == 5 * 12
    again = extract_corruptions(config)  # every store is complete: nothing is recomputed
    assert again["written"] == 0


class OnlyTheProtocol:
    """A source with what ``data.Source`` asks for and nothing more: no templates, nothing to
    admit, no pixel array."""

    def __init__(self, n: int = 6) -> None:
        self.pixels_of = np.random.default_rng(0).integers(0, 256, (n, 40, 40, 3), dtype=np.uint8)
        self.keys = [f"m/{i}" for i in range(n)]
        self.labels = (np.arange(n) % 3).astype(np.int32)
        self.classnames = ["circle", "square", "triangle"]
        self.identity = {"kind": "shapes", "spec": "minimal"}

    def __len__(self) -> int:
        return len(self.keys)

    def image(self, index: int):
        from PIL import Image

        return Image.fromarray(self.pixels_of[index])

    def fingerprint(self) -> str:
        return "minimal"


class WithCapabilities(OnlyTheProtocol):
    """The same images with templates of its own and problems to admit once the classes are known."""

    templates = ["a drawing of a {}.", "the {}."]

    def admit(self, classes: int, skip_bad: bool) -> list[str]:
        self.admitted = (classes, skip_bad)
        return []


def test_a_sources_optional_capabilities_are_protocols_extraction_checks(tiny_checkpoint, tmp_path, monkeypatch):
    """Extraction reaches templates, admit and pixels only through their protocols: a source with
    none of them extracts, one with templates and admit has both used, and the real sources say
    which they offer."""
    import lpclip_cache.extraction as extraction
    from lpclip_cache.data import AdmitsRows, ArraySource, FolderSource, HasPixels, HasTemplates
    from lpclip_cache.prompts import load_templates

    minimal, capable = OnlyTheProtocol(), WithCapabilities()
    assert not isinstance(minimal, (HasTemplates, AdmitsRows, HasPixels))
    assert isinstance(capable, HasTemplates) and isinstance(capable, AdmitsRows) and not isinstance(capable, HasPixels)
    array = ArraySource(minimal.pixels_of, minimal.keys, minimal.labels, None, {})
    folder = FolderSource(tmp_path, minimal.keys, minimal.labels, minimal.classnames, {})
    assert isinstance(array, HasPixels) and not isinstance(array, (HasTemplates, AdmitsRows))
    assert not isinstance(folder, (HasTemplates, AdmitsRows, HasPixels))

    for name, source in (("minimal", minimal), ("capable", capable)):
        monkeypatch.setattr(extraction, "open_source", lambda *args, source=source: source)
        store = build(tmp_path / f"{name}.zarr", tmp_path / "data", tiny_checkpoint, split=None, weak_views=0,
                      strong_views=1, shard_size=4, templates=None)
        assert store.read("valid").all() and store.classnames == minimal.classnames
        assert sorted(store.read("keys").tolist()) == sorted(minimal.keys)
    assert FeatureStore(tmp_path / "minimal.zarr").manifest["templates"] == load_templates("shapes")
    assert store.manifest["templates"] == WithCapabilities.templates and capable.admitted == (3, False)
    config = ExtractConfig(data="minimal", out=str(tmp_path / "x.zarr"), templates="simple")
    assert extraction.open_with_names(config)[2] == load_templates("simple")  # --templates wins
