"""Tests for lpclip_cache.prompts: built-in template/class-name sets and file loading."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from lpclip_cache import prompts
from lpclip_cache.errors import InputError
from lpclip_cache.prompts import (
    BUILTIN_CLASSNAMES,
    BUILTIN_TEMPLATES,
    list_classname_sets,
    list_template_sets,
    load_classnames,
    load_templates,
    prompt_name,
)

TEMPLATE_COUNTS = {"cifar10": 18, "cifar100": 18, "imagenet": 80, "shapes": 4, "simple": 1}
CLASSNAME_COUNTS = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


def _resource(folder: str, name: str) -> dict[str, object]:
    """Read one shipped resource file as JSON."""
    text = (
        resources.files("lpclip_cache.resources")
        .joinpath(folder, f"{name}.json")
        .read_text(encoding="utf-8")
    )
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def _write(path: Path, text: str) -> Path:
    """Write UTF-8 text to path and return it."""
    path.write_text(text, encoding="utf-8")
    return path


def _error(loader: object, arg: object) -> str:
    """Call loader(arg), expect InputError, and return its one-line message."""
    with pytest.raises(InputError) as info:
        loader(arg)  # type: ignore[operator]
    message = str(info.value)
    assert message == info.value.message
    assert "\n" not in message
    return message


# --- built-in sets ---------------------------------------------------------


def test_builtin_set_names() -> None:
    assert list_template_sets() == ["cifar10", "cifar100", "imagenet", "shapes", "simple"]
    assert list_classname_sets() == ["cifar10", "cifar100", "imagenet"]
    assert tuple(list_template_sets()) == BUILTIN_TEMPLATES
    assert tuple(list_classname_sets()) == BUILTIN_CLASSNAMES


@pytest.mark.parametrize(("name", "count"), sorted(TEMPLATE_COUNTS.items()))
def test_builtin_template_counts_and_uniqueness(name: str, count: int) -> None:
    templates = load_templates(name)
    assert len(templates) == count
    assert len(set(templates)) == count


@pytest.mark.parametrize("name", sorted(TEMPLATE_COUNTS))
def test_builtin_templates_format_with_a_class_name(name: str) -> None:
    for template in load_templates(name):
        assert template.count("{}") == 1
        text = template.format("maple tree")
        assert "maple tree" in text
        assert "{" not in text and "}" not in text


@pytest.mark.parametrize(("name", "count"), sorted(CLASSNAME_COUNTS.items()))
def test_builtin_classname_counts_and_uniqueness(name: str, count: int) -> None:
    names = load_classnames(name)
    assert len(names) == count
    assert len(set(names)) == count
    assert all(n == n.strip() and n for n in names)


@pytest.mark.parametrize(
    ("folder", "name", "key"),
    [("templates", n, "templates") for n in sorted(TEMPLATE_COUNTS)]
    + [("classnames", n, "classnames") for n in sorted(CLASSNAME_COUNTS)],
)
def test_resource_files_are_attributed(folder: str, name: str, key: str) -> None:
    data = _resource(folder, name)
    assert set(data) == {"name", "source", key}
    assert data["name"] == name
    source = data["source"]
    assert isinstance(source, str)
    if name == "shapes":  # the project's own set, for its procedural world
        assert "this project" in source
    else:
        assert "Radford et al. 2021" in source and "MIT License" in source


def test_cifar_templates_are_the_clip_paper_lists() -> None:
    cifar10 = load_templates("cifar10")
    assert load_templates("cifar100") == cifar10
    assert cifar10[0] == "a photo of a {}."
    assert cifar10[1] == "a blurry photo of a {}."
    assert cifar10[-2:] == ["a photo of the small {}.", "a photo of the big {}."]
    assert load_templates("simple") == ["a photo of a {}."]


def test_imagenet_templates_ends() -> None:
    templates = load_templates("imagenet")
    assert templates[0] == "a bad photo of a {}."
    assert templates[-1] == "a tattoo of the {}."
    assert "a {} in a video game." in templates
    assert "itap of a {}." in templates


def test_cifar10_classnames_label_order() -> None:
    assert load_classnames("cifar10") == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]


def test_cifar100_classnames_label_order() -> None:
    names = load_classnames("cifar100")
    assert names[:4] == ["apple", "aquarium fish", "baby", "bear"]
    assert names[-1] == "worm"
    assert names[47] == "maple tree"
    # torchvision's fine labels are alphabetical with underscores; CLIP's use spaces
    folder_names = [n.replace(" ", "_") for n in names]
    assert folder_names == sorted(folder_names)
    assert all("_" not in n for n in names)


def test_imagenet_classnames_index_order() -> None:
    names = load_classnames("imagenet")
    assert names[0] == "tench"
    assert names[1] == "goldfish"
    assert names[21] == "kite (bird of prey)"
    assert names[657] == "missile"
    assert names[744] == "projectile"
    assert names[836] == "sunglass"
    assert names[837] == "sunglasses"
    assert names[999] == "toilet paper"


def test_builtin_names_are_case_insensitive() -> None:
    assert load_templates("CIFAR10") == load_templates("cifar10")
    assert load_classnames(" Cifar100 ") == load_classnames("cifar100")


def test_builtin_lists_are_fresh_copies() -> None:
    first = load_templates("simple")
    first.append("mutated {}")
    assert load_templates("simple") == ["a photo of a {}."]


# --- custom files ----------------------------------------------------------


def test_templates_from_json_list(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.json", json.dumps(["a photo of a {}.", " art of {} "]))
    assert load_templates(str(path)) == ["a photo of a {}.", "art of {}"]


def test_templates_from_json_object(tmp_path: Path) -> None:
    doc = {"name": "mine", "templates": ["itap of a {}.", "a {{literal}} {}."]}
    path = _write(tmp_path / "t.json", json.dumps(doc))
    templates = load_templates(path)
    assert templates == ["itap of a {}.", "a {{literal}} {}."]
    assert templates[1].format("cat") == "a {literal} cat."


def test_templates_from_text_file(tmp_path: Path) -> None:
    text = "# my prompts\n\na photo of a {}.\r\n   # indented comment\n  a sketch of a {}.  \n"
    path = _write(tmp_path / "t.txt", text)
    assert load_templates(str(path)) == ["a photo of a {}.", "a sketch of a {}."]


def test_templates_text_file_with_bom_and_no_suffix(tmp_path: Path) -> None:
    path = tmp_path / "prompts"
    path.write_bytes("\ufeffa photo of a {}.\n".encode())
    assert load_templates(str(path)) == ["a photo of a {}."]


def test_local_path_is_not_mistaken_for_builtin(tmp_path: Path) -> None:
    path = _write(tmp_path / "cifar10", "a custom {}.\n")
    assert load_templates(str(path)) == ["a custom {}."]


def test_classnames_from_json_list_and_object(tmp_path: Path) -> None:
    listed = _write(tmp_path / "a.json", json.dumps([" cat", "dog ", "maple tree"]))
    assert load_classnames(str(listed)) == ["cat", "dog", "maple tree"]
    obj = _write(tmp_path / "b.json", json.dumps({"classnames": ["x", "y"]}))
    assert load_classnames(obj) == ["x", "y"]


def test_classnames_from_text_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.txt", "# classes\nairplane\n\n  sweet pepper  \nété\n")
    assert load_classnames(str(path)) == ["airplane", "sweet pepper", "été"]


# --- bad input: templates --------------------------------------------------


def test_unknown_builtin_name_lists_choices() -> None:
    message = _error(load_templates, "cifar1000")
    assert "'cifar1000'" in message
    assert "cifar10, cifar100, imagenet, shapes, simple" in message
    assert ".json/.txt" in message


def test_empty_name() -> None:
    assert "use one of" in _error(load_templates, "   ")
    assert "use one of" in _error(load_classnames, "")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    message = _error(load_templates, str(path))
    assert str(path) in message and "not found" in message
    assert str(path) in _error(load_classnames, str(path))


def test_missing_relative_file_names_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    message = _error(load_templates, "prompts.txt")
    assert "prompts.txt" in message and str(tmp_path) in message


def test_directory(tmp_path: Path) -> None:
    message = _error(load_templates, str(tmp_path))
    assert str(tmp_path) in message and "directory" in message
    assert "directory" in _error(load_classnames, str(tmp_path))


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "t.txt", "a photo of a {}.\n")

    def deny(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)
    message = _error(load_templates, str(path))
    assert str(path) in message and "Permission denied" in message


def test_malformed_json(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.json", '["a photo of a {}.",\n  "oops"\n')
    message = _error(load_templates, str(path))
    assert str(path) in message and "not valid JSON" in message and "line" in message
    assert "not valid JSON" in _error(load_classnames, str(path))


def test_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes("a photo of a {} caf\u00e9.\n".encode("latin-1"))
    message = _error(load_templates, str(path))
    assert str(path) in message and "UTF-8" in message
    assert "UTF-8" in _error(load_classnames, str(path))


@pytest.mark.parametrize("text", ["", "   \n\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path / "t.txt", text)
    message = _error(load_templates, str(path))
    assert str(path) in message and "empty" in message
    assert "empty" in _error(load_classnames, str(path))


def test_comments_only_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.txt", "# nothing here\n\n#{}\n")
    message = _error(load_templates, str(path))
    assert str(path) in message and "no templates" in message


def test_template_without_placeholder_reports_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.txt", "a photo of a {}.\n\na photo\n")
    message = _error(load_templates, str(path))
    assert str(path) in message and "line 3" in message
    assert "'a photo'" in message and "exactly once" in message


def test_template_with_two_placeholders(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.json", json.dumps(["a {}.", "a {} and a {}."]))
    message = _error(load_templates, str(path))
    assert str(path) in message and "entry 2" in message and "2 '{}'" in message


@pytest.mark.parametrize(
    "template",
    ["a photo of a {0}.", "a {name}.", "a {} photo }", "a {} {0}", "{} {:>3}"],
)
def test_template_that_does_not_format(tmp_path: Path, template: str) -> None:
    path = _write(tmp_path / "t.txt", template + "\n")
    message = _error(load_templates, str(path))
    assert str(path) in message and "line 1" in message


def test_json_template_errors(tmp_path: Path) -> None:
    cases = {
        "number.json": "42",
        "nokey.json": json.dumps({"classnames": ["a {}"]}),
        "empty.json": "[]",
        "nonstr.json": json.dumps(["a {}.", 7]),
        "blank.json": json.dumps(["a {}.", "   "]),
        "dup.json": json.dumps(["a {}.", "b {}.", " a {}."]),
    }
    for filename, text in cases.items():
        path = _write(tmp_path / filename, text)
        assert str(path) in _error(load_templates, str(path)), filename
    assert "entry 3" in _error(load_templates, str(tmp_path / "dup.json"))
    assert "entry 1" in _error(load_templates, str(tmp_path / "dup.json"))
    assert "'templates'" in _error(load_templates, str(tmp_path / "nokey.json"))


def test_duplicate_template_in_text_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.txt", "a {}.\nb {}.\na {}.\n")
    message = _error(load_templates, str(path))
    assert str(path) in message and "line 3" in message and "line 1" in message


# --- bad input: class names ------------------------------------------------


def test_classname_errors(tmp_path: Path) -> None:
    cases = {
        "empty.json": "[]",
        "emptyobj.json": json.dumps({"classnames": []}),
        "blank.json": json.dumps(["cat", "  "]),
        "dup.json": json.dumps(["cat", "dog", "cat "]),
        "nonstr.json": json.dumps(["cat", None]),
        "nokey.json": json.dumps({"templates": ["a {}"]}),
        "dup.txt": "cat\ndog\n\ncat\n",
    }
    for filename, text in cases.items():
        path = _write(tmp_path / filename, text)
        assert str(path) in _error(load_classnames, str(path)), filename
    assert "duplicate" in _error(load_classnames, str(tmp_path / "dup.json"))
    assert "line 4" in _error(load_classnames, str(tmp_path / "dup.txt"))
    assert "empty class name" in _error(load_classnames, str(tmp_path / "blank.json"))
    assert "null" in _error(load_classnames, str(tmp_path / "nonstr.json"))


def test_unknown_classname_set() -> None:
    message = _error(load_classnames, "simple")
    assert "'simple'" in message and "cifar10, cifar100, imagenet" in message


def test_error_message_escapes_line_breaks(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.json", json.dumps(["a photo\nof nothing"]))
    message = _error(load_templates, str(path))
    assert "\\n" in message


# --- prompt_name -----------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("aquarium_fish", "aquarium fish"),
        ("maple_tree", "maple tree"),
        ("airplane", "airplane"),
        ("  sweet__pepper_ ", "sweet pepper"),
        ("frilled-necked lizard", "frilled-necked lizard"),
    ],
)
def test_prompt_name(folder: str, expected: str) -> None:
    assert prompt_name(folder) == expected


def test_prompt_name_empty() -> None:
    assert "'___'" in _error(prompt_name, "___")


def test_prompt_name_matches_clip_cifar100_names() -> None:
    folders = [n.replace(" ", "_") for n in load_classnames("cifar100")]
    assert [prompt_name(f) for f in folders] == load_classnames("cifar100")


def test_module_imports_only_stdlib() -> None:
    source = Path(prompts.__file__).read_text(encoding="utf-8")
    imports = [
        line.split()[1]
        for line in source.splitlines()
        if line.startswith(("import ", "from "))
    ]
    allowed = {"__future__", "json", "os", "re", "string", "importlib", "pathlib", "typing"}
    assert {name.split(".")[0] for name in imports} <= allowed | {"lpclip_cache"}


def test_clip_benchmark_placeholder_is_read_as_the_plain_one(tmp_path: Path) -> None:
    """CLIP_benchmark writes templates with ``{c}``: a template file may use it, escaped
    ``{{c}}`` stays literal text, and ``{c}`` beside ``{}`` is two placeholders."""
    path = tmp_path / "t.txt"
    path.write_text("a photo of a {c}.\n{{c}} marks {c}\n")
    assert prompts.load_templates(path) == ["a photo of a {}.", "{{c}} marks {}"]
    path.write_text("a {c} and a {}.\n")
    with pytest.raises(InputError, match="2 '\\{\\}' placeholders"):
        prompts.load_templates(path)


def test_a_clip_benchmark_template_file_gives_the_same_prompt_ensemble(tmp_path: Path) -> None:
    """CLIP_benchmark's own ``zeroshot_classification_templates.txt`` (``{c}``), given with
    --templates, makes exactly the head the same templates written with ``{}`` make."""
    import torch

    from lpclip_cache.models import load_model, zero_shot_head

    written = ["a photo of a {c}.", "a blurry photo of the {c}.", "itap of a {c}."]
    (tmp_path / "cb.txt").write_text("\n".join(written) + "\n")
    (tmp_path / "plain.txt").write_text("\n".join(t.replace("{c}", "{}") for t in written) + "\n")
    torch.manual_seed(0)
    loaded = load_model("test-tiny", "none", device="cpu")
    names = ["cat", "dog", "ship"]
    heads = [zero_shot_head(loaded, names, prompts.load_templates(tmp_path / f)) for f in ("cb.txt", "plain.txt")]
    assert torch.equal(heads[0], heads[1])
