"""ImageNet-style folders: WordNet-ID or index class folders mapped into the 1000-class label
space, and class subsets (ImageNet-A/-R hold 200 classes) scored on their own classes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lpclip_cache.data import imagenet_wordnet, open_source
from lpclip_cache.errors import InputError

# CIFAR-10 classes standing in for three ImageNet classes, by WordNet ID and class index
STAND_INS = {"airplane": ("n02690373", 404), "cat": ("n02123045", 281), "ship": ("n03095699", 510)}


def imagenet_like(root, cifar_root, by_index: bool = False):
    for cifar_class, (wnid, index) in STAND_INS.items():
        target = root / "val" / (str(index) if by_index else wnid)
        shutil.copytree(cifar_root / "test" / cifar_class, target)
    return root


def test_wordnet_table_is_the_sorted_thousand_with_two_200_class_subsets():
    wnids, subsets = imagenet_wordnet()
    assert len(wnids) == 1000 and wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert wnids[0] == "n01440764" and wnids[404] == "n02690373" and wnids[999] == "n15075141"
    for name in ("imagenet-a", "imagenet-r"):
        assert len(subsets[name]) == 200 and set(subsets[name]) <= set(wnids)
    assert subsets["imagenet-a"] != subsets["imagenet-r"]


def test_wordnet_and_index_folders_map_to_the_same_labels(cifar_root, tmp_path):
    by_wnid = open_source(f"imagenet:{imagenet_like(tmp_path / 'a', cifar_root)}", "val")
    by_index = open_source(f"imagenet:{imagenet_like(tmp_path / 'b', cifar_root, by_index=True)}", "val")
    assert len(by_wnid) == 60 and len(by_wnid.classnames) == 1000
    assert sorted(set(by_wnid.labels.tolist())) == [281, 404, 510]
    np.testing.assert_array_equal(np.sort(by_wnid.labels), np.sort(by_index.labels))
    assert by_wnid.classnames[404] == "airliner" and by_wnid.classnames[281] == "tabby cat"
    assert by_wnid.identity["class_subset"] == [281, 404, 510] and by_wnid.identity["subset_name"] is None
    first_cat = by_wnid.keys.index(next(k for k in by_wnid.keys if k.startswith("n02123045")))
    assert by_wnid.labels[first_cat] == 281


def test_a_folder_of_the_imagenet_r_classes_is_recognised(cifar_root, tmp_path):
    _, subsets = imagenet_wordnet()
    image = next((cifar_root / "test" / "cat").iterdir())
    for wnid in subsets["imagenet-r"]:
        (tmp_path / "r" / wnid).mkdir(parents=True)
        shutil.copy(image, tmp_path / "r" / wnid / "0.jpg")
    source = open_source(f"imagenet:{tmp_path / 'r'}")
    assert source.identity["subset_name"] == "imagenet-r" and len(source.identity["class_subset"]) == 200


@pytest.mark.parametrize(("folder", "message"), [("cats", "neither a WordNet ID"), ("1000", "neither a WordNet ID")])
def test_unknown_class_folders_are_named(cifar_root, tmp_path, folder, message):
    imagenet_like(tmp_path, cifar_root)
    shutil.copytree(cifar_root / "test" / "dog", tmp_path / "val" / folder)
    with pytest.raises(InputError, match=message) as error:
        open_source(f"imagenet:{tmp_path}", "val")
    assert folder in str(error.value)


def test_a_class_subset_is_scored_on_its_own_classes(cifar_root, tiny_checkpoint, tmp_path):
    from lpclip_cache.evaluation import evaluate
    from lpclip_cache.extraction import ExtractConfig, extract
    from lpclip_cache.numeric import softmax
    from lpclip_cache.runs import load_run
    from lpclip_cache.store import FeatureStore
    from lpclip_cache.training import TrainConfig, train

    root = imagenet_like(tmp_path / "data", cifar_root)
    store_path = str(tmp_path / "in.zarr")
    extract(ExtractConfig(data=f"imagenet:{root}", split="val", out=store_path, pretrained=str(tiny_checkpoint),
                          templates="simple", weak_views=1, strong_views=1, num_workers=0, device="cpu",
                          progress=False))
    store = FeatureStore(store_path)
    assert store.classnames[404] == "airliner" and store.manifest["dataset"]["class_subset"] == [281, 404, 510]
    train(TrainConfig(store=store_path, out=str(tmp_path / "run"), epochs=1, progress=False))
    report = evaluate(str(tmp_path / "run"), [store_path])
    entry = report["stores"][store_path]
    assert entry["classes"] == 3 and entry["samples"] == 60
    run = load_run(tmp_path / "run")
    emb, labels = store.read("clean/emb"), store.labels()
    full = run.teacher_probs(emb)
    on_subset = full[:, [281, 404, 510]]
    positions = np.searchsorted([281, 404, 510], labels)
    assert entry["teacher"]["accuracy"] == pytest.approx(float((on_subset.argmax(1) == positions).mean()))
    probe = softmax(run.probe_logits(emb)[:, [281, 404, 510]].astype(np.float64), np.float64)
    assert entry["probe"]["nll"] == pytest.approx(float(-np.log(probe[np.arange(60), positions]).mean()), rel=1e-6)
    # restricting never loses a correct answer: a right argmax over 1000 stays right over 3
    assert entry["teacher"]["accuracy"] >= float((full.argmax(1) == labels).mean())
