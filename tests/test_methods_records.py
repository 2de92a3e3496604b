"""bench/methods/records.py: a comparison's records (each finished run's logs and config, each finished test's
predictions, OUT's reports) copied without weights into a folder that can be committed, so the docs' numbers outlive
the machine; a run recorded with other content is refused, never overwritten. And `bench.methods --records`: a later
OUT goes on from them (the search is not trained again, a recorded test is not redone, further seeds train at the
recorded choice), and a chosen run whose test is missing is trained again, repeating its recorded val log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_formats_training import tiny_sqa_folder

from bench.methods import cli, grid, lr_search, records


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, list[str]]:
    """A tiny comparison's OUT (ours trained at two lrs, the better tested, tabled) and its flags but --out."""
    root = tmp_path_factory.mktemp("records")
    base, data = tiny_sqa_folder(root, {"train": 8, "val": 4, "test": 4})
    flags = ["--data", str(data), "--base", str(base), "--only", "llama-adapter", "--adapter-len", "2",
             "--adapter-layers", "1", "--quiet", "--grid", "5e-3,5e-2"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MM_ADAPTER_CACHE", str(root / "cache"))
        assert cli.main([*flags, "--out", str(root / "out")]) == 0
    return root / "out", flags


@pytest.fixture
def comparison(world) -> Path:
    return world[0]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_records_keep_logs_predictions_and_reports_but_no_weights(comparison, tmp_path, capsys):
    dest = tmp_path / "records"
    assert records.main([str(comparison), str(dest)]) == 0
    kept = tree(dest)
    run, test = "llama-adapter-lr0.005", "llama-adapter-test"
    for name in records.RUN_FILES[:3]:
        assert kept[f"{run}/{name}"] == (comparison / run / name).read_bytes()
    assert kept[f"{test}/predictions.json"] == (comparison / test / "predictions.json").read_bytes()
    assert {"grids.json", "search.md", "table.md", "seeds.md"} <= set(kept)
    assert not [name for name in kept if name.endswith(".safetensors") or "/best" in name or "checkpoints" in name]
    # the search reads the same val from the records as from the run
    assert lr_search.best_val(dest / run)[0] == lr_search.best_val(comparison / run)[0]
    assert capsys.readouterr().out.strip() == f"{dest}: {len(kept)} files copied, 0 already recorded"
    assert records.main([str(comparison), str(dest)]) == 0  # again: only the reports are copied
    assert capsys.readouterr().out.strip().endswith(f"{len(kept) - len(records.kept_files(comparison)[1])} "
                                                    "already recorded")
    assert tree(dest) == kept


def test_a_run_recorded_with_other_content_is_refused_and_nothing_is_copied(comparison, tmp_path, capsys):
    dest = tmp_path / "records"
    log = dest / "llama-adapter-lr0.005" / "validation.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps({"val_acc": 0.99}) + "\n")
    assert records.main([str(comparison), str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(log) in err and "already recorded with other content" in err
    assert tree(dest) == {"llama-adapter-lr0.005/validation.jsonl": log.read_bytes()}


def test_unfinished_runs_and_tests_are_left_out(comparison, tmp_path):
    out = tmp_path / "out"
    (out / "lora-lr0.001").mkdir(parents=True)  # still training: no final adapter
    (out / "lora-lr0.001" / "validation.jsonl").write_text(json.dumps({"val_acc": 0.5}) + "\n")
    (out / "lora-test").mkdir()  # still answering: no predictions.json
    (out / "lora-test" / "eval.json").write_text("{}")
    assert records.kept_files(out) == ([], [])


@pytest.mark.parametrize("case, message", [
    ("missing", "out {out}: not a folder"),
    ("inside", "dest {out}/records: inside out {out}"),
])
def test_bad_folders_are_refused_in_one_line(tmp_path, capsys, case, message):
    out = tmp_path / "out"
    if case == "inside":
        out.mkdir()
    with pytest.raises(SystemExit) as exit_:
        records.main([str(out), str(out / "records")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(out=out) in err
    assert not (out / "records").exists()


def test_an_oversized_file_is_not_a_record(comparison, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(records, "MAX_BYTES", 10)
    assert records.main([str(comparison), str(tmp_path / "records")]) == 2
    assert "over the 10 a record may hold" in capsys.readouterr().err
    assert not (tmp_path / "records").exists()


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_later_out_goes_on_from_the_records(world, tmp_path, capsys, monkeypatch):
    """The machine is gone: a new OUT with --records trains no search run and redoes no test, writes the same search,
    and trains a further seed at the recorded choice."""
    out, flags = world
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(out.parent / "cache"))
    kept = tmp_path / "records"
    assert records.main([str(out), str(kept)]) == 0
    later = tmp_path / "later"
    capsys.readouterr()
    assert cli.main([*flags, "--out", str(later), "--records", str(kept)]) == 0
    assert json_lines(capsys.readouterr().out) == []  # nothing trained, nothing evaluated
    assert (later / "search.md").read_text() == (out / "search.md").read_text()
    assert not [p for p in later.iterdir() if p.is_dir()]
    assert cli.main([*flags, "--out", str(later), "--records", str(kept), "--seeds", "0", "1", "--seed", "1"]) == 0
    lines = json_lines(capsys.readouterr().out)
    ours = grid.with_grids(out, [grid.METHODS[1]], None)[0]
    chosen = lr_search.search(lr_search.Places(out), ours).chosen
    assert [(row.get("lr", row.get("chosen_lr")), row["seed"]) for row in lines] == [(chosen, 1), (chosen, 1)]
    assert sorted(p.name for p in later.iterdir() if p.is_dir()) == [f"llama-adapter-lr{chosen:g}-seed1",
                                                                     "llama-adapter-test-seed1"]
    row = next(line for line in (later / "seeds.md").read_text().splitlines() if line.startswith("| llama-adapter |"))
    assert row.split(" | ")[1:2] == [f"{chosen:g}"] and row.split(" | ")[7] == "2"  # seed 0 recorded, seed 1 here


def test_a_chosen_run_without_its_test_is_trained_again_and_repeats_its_val_log(world, tmp_path, capsys,
                                                                                monkeypatch):
    out, flags = world
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(out.parent / "cache"))
    kept = tmp_path / "records"
    assert records.main([str(out), str(kept)]) == 0
    shutil.rmtree(kept / "llama-adapter-test")  # lost before its test was recorded
    later = tmp_path / "later"
    capsys.readouterr()
    assert cli.main([*flags, "--out", str(later), "--records", str(kept)]) == 0
    trained, tested = json_lines(capsys.readouterr().out)
    chosen = tested["chosen_lr"]
    assert trained["lr"] == chosen and trained["recorded"] == str(kept / f"llama-adapter-lr{chosen:g}")
    assert trained["same_val_log"] is True  # one thread, the same seed: training repeats exactly
    assert tested["test_avg"] == json.loads((out / "llama-adapter-test" / "summary.json").read_text())["Avg"]


def test_a_recorded_run_trained_with_other_flags_is_refused(world, tmp_path, capsys):
    out, flags = world
    kept = tmp_path / "records"
    assert records.main([str(out), str(kept)]) == 0
    capsys.readouterr()
    assert cli.main([*flags, "--epochs", "2", "--out", str(tmp_path / "later"), "--records", str(kept)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "finished with train.epochs 1, but this call trains 2" in err
    assert str(kept / "llama-adapter-lr0.005") in err


def test_records_that_are_no_folder_are_refused(world, tmp_path, capsys):
    _, flags = world
    with pytest.raises(SystemExit) as exit_:
        cli.main([*flags, "--out", str(tmp_path / "later"), "--records", str(tmp_path / "nowhere")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"--records {tmp_path / 'nowhere'}: not a folder")
    assert not (tmp_path / "later").exists()
