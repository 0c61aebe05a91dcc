"""Model resolution and loading, and the device-side views."""

from __future__ import annotations

import json

import pytest
import torch

from lpclip_cache.augment import OPS, PolicyViews, ViewMaker, load_policy, view_seed
from lpclip_cache.errors import InputError, ModelError
from lpclip_cache.models import load_model, model_config, resolve_pretrained


def test_test_tiny_is_registered_and_small():
    config = model_config("test-tiny")
    assert config["embed_dim"] <= 128
    assert config["vision_cfg"]["image_size"] == 32
    loaded = load_model("test-tiny", "none", device="cpu")
    assert loaded.embed_dim == config["embed_dim"]
    assert loaded.preprocess["size"] == [32, 32]
    with torch.no_grad():
        out = loaded.model.encode_image(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, config["embed_dim"])


def test_checkpoint_file_loads_the_same_weights(tiny_checkpoint):
    state = torch.load(tiny_checkpoint, weights_only=True)
    loaded = load_model("test-tiny", str(tiny_checkpoint), device="cpu")
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[name]), name
    source = resolve_pretrained("test-tiny", str(tiny_checkpoint))
    assert source.kind == "file" and len(source.sha256) == 64


def test_checkpoint_for_another_architecture_is_refused(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["visual.conv1.weight"] = torch.zeros(7, 3, 8, 8)
    bad = tmp_path / "other.pt"
    torch.save(state, bad)
    with pytest.raises(ModelError, match="does not fit architecture test-tiny"):
        load_model("test-tiny", str(bad), device="cpu")


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path, capfd):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(ModelError, match="weights only"):
        load_model("test-tiny", str(evil), device="cpu")
    assert "this must never run" not in capfd.readouterr().out


@pytest.mark.parametrize(
    ("name", "pretrained", "message"),
    [
        ("no-such-model", "none", "unknown model name 'no-such-model'"),
        ("ViT-B-3", "none", "did you mean"),
        ("test-tiny", "/nowhere/weights.pt", "checkpoint file '/nowhere/weights.pt' is not found"),
        ("ViT-B-32", "not-a-tag", "neither a checkpoint file nor a pretrained tag of ViT-B-32"),
        ("test-tiny", "openai", "tags: none"),
    ],
)
def test_bad_model_requests_raise_one_clear_error(name, pretrained, message):
    with pytest.raises(ModelError, match=message):
        load_model(name, pretrained, device="cpu")


def test_known_tag_is_resolved_but_unavailable_offline():
    # no network reaches the hub here (HF_HUB_OFFLINE=1 makes the client say so at once)
    assert resolve_pretrained("ViT-B-32", "openai").kind == "tag"
    with pytest.raises(ModelError, match="not in the local cache"):
        load_model("ViT-B-32", "openai", device="cpu")


def identical_batch(n: int = 48, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, size, size, generator=generator).repeat(n, 1, 1, 1)


def test_strong_views_differ_per_sample_within_one_batch():
    views = PolicyViews(load_policy("strong"), (32, 32))
    torch.manual_seed(0)
    out = views(identical_batch())
    flat = out.flatten(1)
    distances = torch.cdist(flat, flat) + torch.eye(len(flat)) * 1e9
    assert distances.min() > 1e-3  # no two samples got the same view of the same image


def test_strong_policy_applies_each_samples_own_operation():
    import torchvision.transforms.v2.functional as TF

    policy = load_policy("strong")
    names = [op["op"] for op in policy["ops"]]
    views = PolicyViews(policy, (32, 32))
    pixels = (torch.rand(6, 3, 32, 32) * 255).round().to(torch.uint8)
    images = pixels.float() / 255
    choice = torch.tensor([names.index(n) for n in ("identity", "equalize", "auto_contrast")] * 2)
    out = views.apply_ops(images, choice, torch.rand(6))
    torch.testing.assert_close(out[[0, 3]], images[[0, 3]])
    for i, reference in ((1, TF.equalize), (4, TF.equalize), (2, TF.autocontrast), (5, TF.autocontrast)):
        assert float((out[i] * 255 - reference(pixels[i]).float()).abs().max()) <= 2.0


def test_views_are_reproducible_per_shard_and_view():
    pre = {"size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3}
    maker = ViewMaker(pre, load_policy("weak"), load_policy("strong"), seed=7, device=torch.device("cpu"))
    x = identical_batch(8)
    a = maker.view(x, "strong", shard=3, index=1)
    torch.rand(100)  # global generator state must not matter
    assert torch.equal(a, maker.view(x, "strong", shard=3, index=1))
    assert not torch.equal(a, maker.view(x, "strong", shard=4, index=1))
    assert not torch.equal(a, maker.view(x, "strong", shard=3, index=2))
    assert view_seed(7, 3, "weak", 1) != view_seed(7, 3, "strong", 1)
    clean = maker.clean(x)
    torch.testing.assert_close(clean, (x - 0.5) / 0.25)


def test_every_op_in_the_table_runs_and_keeps_range():
    policy = load_policy("strong")
    views = PolicyViews(policy, (32, 32))
    images = torch.rand(4, 3, 32, 32)
    for index, op in enumerate(policy["ops"]):
        out = OPS[op["op"]].apply(images, views.magnitudes(index, torch.rand(4)))
        assert out.shape == images.shape and float(out.min()) >= -1e-4 and float(out.max()) <= 1 + 1e-4, op


def test_bad_policy_files_are_refused(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"name": "x", "num_ops": 1, "ops": [{"op": "explode"}]}))
    with pytest.raises(InputError, match="unknown op 'explode'"):
        load_policy(str(bad))
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_policy(str(bad))
    with pytest.raises(InputError, match="not found"):
        load_policy("no-such-policy")
