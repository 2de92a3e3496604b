"""Issue 23, class 2: a name that becomes a path is checked against its grammar and stays inside its root.

A recipe name (``--config NAME``, ``plan NAME``) is one file name in mm_adapter/recipes, never a relative path out
of it; a hub id is ``org/name`` in the hub's own grammar (never ``org/..``); a revision is a branch, tag or commit
name (never ``../..``), and the snapshot folder the hub cache answers with must lie inside the cache (a ``refs``
file whose content climbs out is refused). Each refusal is one line naming the name, exit 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_pretrained import COMMIT_A, adapted, base, cache_repo, offline_hub, one_line_error  # noqa: F401
from test_special_files import assert_refused, command

from mm_adapter.pretrained import resolve_adapter, save_pretrained
from mm_adapter.pretrained.hub import is_hub_id, is_repo_id
from mm_adapter.recipes import FOLDER, recipe_file
from mm_adapter.scienceqa.synthetic import generate

RECIPE = "command: train alpaca\ndata: tatsu-lab/alpaca\nout: runs/x\ntrain: {epochs: 1}\n"


@pytest.fixture
def outside_recipe(tmp_path) -> str:
    """A recipe file outside the recipes folder, and the recipe *name* that reaches it relative to that folder."""
    (tmp_path / "alpaca-evil.yaml").write_text(RECIPE)
    return os.path.relpath(tmp_path, FOLDER) + "/alpaca-evil"


def test_a_recipe_name_cannot_climb_out_of_the_recipes_folder(outside_recipe, capfd):
    """``plan ../../tmp/.../alpaca-evil`` read a file outside mm_adapter/recipes (exit 0) before; now one line."""
    assert not Path(outside_recipe).is_file()  # a name, not a file from here
    code, out, err = command(["plan", outside_recipe], capfd)
    assert_refused(code, err, "not a recipe name")
    assert out == ""


def test_a_config_recipe_name_cannot_climb_out_either(outside_recipe, tmp_path, capfd):
    code, _, err = command(["train", "alpaca", "--config", outside_recipe, "--out", str(tmp_path / "run")], capfd)
    assert_refused(code, err, "not a recipe name")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["../alpaca-paper", ".hidden", "a/b", "x" * 300, "paper\0", "-x", "..", ""])
def test_recipe_names_follow_their_grammar(name):
    with pytest.raises(Exception) as caught:
        recipe_file(name, "alpaca")
    assert "not a recipe name" in str(caught.value) and "\n" not in str(caught.value)


def test_shipped_recipes_still_resolve():
    assert recipe_file("paper", "alpaca") == FOLDER / "alpaca-paper.yaml"
    assert recipe_file("alpaca-paper", "alpaca") == FOLDER / "alpaca-paper.yaml"
    assert recipe_file("nothing", "alpaca") is None


@pytest.mark.parametrize("spec", ["org/..", "../name", "org/.", "org/a..b", "org/a--b", "org/name.", "o" * 97 + "/x"])
def test_hub_ids_follow_the_hubs_grammar(spec):
    """What the hub would refuse is not taken as a hub id (so a path spelled so says "no such file")."""
    assert not is_repo_id(spec) and not is_hub_id(spec)


def test_good_hub_ids_still_are_hub_ids():
    assert all(is_hub_id(s) for s in ("org/name", "HuggingFaceTB/SmolLM2-135M", "org/a.b_c-d@v1", "o/n@refs/pr/1"))


@pytest.mark.parametrize("revision", ["../../../outside", "v1/../../x", "/abs", ".hidden", "main.lock", "a b",
                                      "x" * 200])
def test_a_revision_that_is_not_a_ref_name_is_refused_naming_it(base, tmp_path, offline_hub, revision):  # noqa: F811
    message = one_line_error(resolve_adapter, "org/skill", revision=revision)
    assert "is not a branch, tag or commit name" in message and "org/skill@" in message


def test_a_revision_in_the_spec_is_checked_through_the_command(tmp_path, capfd, offline_hub):  # noqa: F811
    data = generate(tmp_path / "data", {"train": 2, "val": 2, "test": 2})  # past the checks of --data
    code, _, err = command(["eval", "scienceqa", "--split", "test", "--out", str(tmp_path / "o"),
                            "--adapter", "org/skill@../../../../etc", "--data", str(data)], capfd)
    assert_refused(code, err, "org/skill@../../../../etc", "is not a branch, tag or commit name")
    assert not (tmp_path / "o").exists()


def test_a_refs_file_that_points_out_of_the_cache_is_refused(base, tmp_path, offline_hub):  # noqa: F811
    """A well-named revision whose refs file (written by whoever filled the cache) climbs out of it: the snapshot
    folder huggingface_hub answers with lies outside the cache, and is refused instead of loaded."""
    save_pretrained(adapted(base), tmp_path / "first")
    cache_repo(offline_hub, "org/skill", {COMMIT_A: tmp_path / "first"}, {"main": COMMIT_A})
    save_pretrained(adapted(base, seed=2), tmp_path / "elsewhere")
    (offline_hub / "models--org--skill" / "refs" / "v9").write_text("../../../elsewhere")
    assert resolve_adapter("org/skill").parent.name == COMMIT_A  # a good ref still loads
    message = one_line_error(resolve_adapter, "org/skill", revision="v9")
    assert "outside the cache" in message and "org/skill@v9" in message
