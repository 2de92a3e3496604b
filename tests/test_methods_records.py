"""bench/methods/records.py: a comparison's records (each finished run's logs and config, each finished test's
predictions, OUT's reports) copied without weights into a folder that can be committed, so the docs' numbers outlive
the machine; a run recorded with other content is refused, never overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_formats_training import tiny_sqa_folder

from bench.methods import cli, lr_search, records


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> Path:
    """A tiny comparison's OUT: ours trained at one lr, tested, tabled."""
    root = tmp_path_factory.mktemp("records")
    base, data = tiny_sqa_folder(root, {"train": 8, "val": 4, "test": 4})
    out = root / "out"
    argv = ["--data", str(data), "--out", str(out), "--base", str(base), "--only", "llama-adapter",
            "--adapter-len", "2", "--adapter-layers", "1", "--quiet", "--grid", "5e-3"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MM_ADAPTER_CACHE", str(root / "cache"))
        assert cli.main(argv) == 0
    return out


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
