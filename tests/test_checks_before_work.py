"""Checks before work (issue 22, item 3): what can be known without a model or a whole data set is refused first.

A misspelt split, a single choice, an unknown recipe, a file that is not what the flag wants (a ScienceQA
problems.json given to ``train alpaca``), or a first record of the wrong shape: one line naming the flag or file,
exit 2, before torch is imported, in well under a second through the real command. ``--limit`` is applied before
records are checked, and empty or unusable records are skipped and counted in one line unless ``--strict``, so
the shipped 5,000-record file (an empty output at record 2,335) trains on the first try.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from mm_adapter.cli.commands import BY_WORDS
from mm_adapter.cli.parse import parse
from mm_adapter.data.alpaca import read_alpaca
from mm_adapter.errors import MMAdapterError
from tiny_text import REPO, arguments, command_here, records, tiny_base_folder, write_records

TRAIN_ALPACA = BY_WORDS[("train", "alpaca")]
SANITY_S = 5.0  # a bound for a refusal that should take well under a second; the measured times are printed


def scienceqa_folder(root):
    """A two-problem official layout: problems.json, pid_splits.json, captions.json."""
    root.mkdir()
    problem = {"question": "Which is a mammal?", "choices": ["cat", "trout"], "answer": 0, "hint": "", "image": None,
               "task": "closed choice", "grade": "grade2", "subject": "natural science", "topic": "biology",
               "category": "c", "skill": "s", "lecture": "", "solution": "", "split": "train"}
    (root / "problems.json").write_text(json.dumps({"1": problem, "2": {**problem, "split": "val"}}, indent=1))
    (root / "pid_splits.json").write_text(json.dumps({"train": ["1"], "val": ["2"], "test": []}))
    (root / "captions.json").write_text(json.dumps({"captions": {}}))
    return root


def refusal(argv: list[str]) -> dict:
    """Run ``mm-adapter ARGV`` in a fresh interpreter: exit code, stderr, seconds inside main(), and whether torch
    was imported by the time it returned."""
    code = textwrap.dedent(f"""
        import contextlib, io, json, sys, time
        from mm_adapter.cli import main
        err = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stderr(err):
            code = main({argv!r})
        print(json.dumps({{"code": code, "seconds": time.perf_counter() - start, "err": err.getvalue(),
                           "torch": "torch" in sys.modules}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_each_check_refuses_before_any_heavy_import_in_well_under_a_second(tmp_path):
    """Each refusal through the real command: exit 2, one line naming the flag or file, torch never imported (so no
    model was loaded), in under SANITY_S seconds (before this change: 8-60 s, after the model loaded)."""
    sqa = scienceqa_folder(tmp_path / "sqa")
    no_output = write_records(tmp_path / "tasks.jsonl", [{"instruction": "x", "instances": []}] * 3, jsonl=True)
    out = str(tmp_path / "out")
    cases = {
        "problems.json to train alpaca": (["train", "alpaca", "--data", str(sqa / "problems.json"), "--out", out],
                                          ["problems.json", "is a ScienceQA problems.json", "train scienceqa"]),
        "records without output": (["train", "alpaca", "--data", str(no_output), "--out", out],
                                   ["tasks.jsonl", "instruction and output", "instances"]),
        "local file with --split": (["train", "alpaca", "--data", str(write_records(tmp_path / "a.json", records(3))),
                                     "--out", out, "--split", "test"], ["a.json", "--split 'test'"]),
        "missing data file": (["train", "alpaca", "--data", str(tmp_path / "nope.json"), "--out", out],
                              ["nope.json", "no such data file"]),
        "eval split": (["eval", "scienceqa", "--data", str(sqa), "--split", "vall", "--out", out],
                       ["--split vall", "pid_splits.json", "no split 'vall'", "val"]),
        "train split": (["train", "scienceqa", "--data", str(sqa), "--train-split", "trian", "--out", out],
                        ["--train-split trian", "no split 'trian'"]),
        "val split": (["train", "scienceqa", "--data", str(sqa), "--val-split", "dev", "--out", out],
                      ["--val-split dev", "no split 'dev'"]),
        "problems.json as --data": (["eval", "scienceqa", "--data", str(sqa / "problems.json"), "--split", "val",
                                     "--out", out], ["--data", "expected a folder"]),
        "no data": (["eval", "scienceqa", "--split", "val", "--out", out], ["--data"]),
        "one choice": (["demo", "--question", "Which?", "--choices", "a"], ["at least 2 choices"]),
        "missing image": (["demo", "--question", "Which?", "--choices", "a", "b", "--image", str(tmp_path / "i.png")],
                          ["--image", "i.png"]),
        "recipe": (["train", "alpaca", "--data", "a.json", "--out", out, "--config", "lama7b"],
                   ["--config lama7b", "alpaca-llama7b", "alpaca-paper"]),
        "choice": (["eval", "scienceqa", "--data", str(sqa), "--split", "val", "--out", out, "--mode", "gen"],
                   ["--mode", "'gen'"]),
        "out is a file": (["train", "alpaca", "--data", str(tmp_path / "a.json"), "--out", str(sqa / "problems.json")],
                          ["--out", "not a folder"]),
    }
    times = {}
    for name, (argv, needles) in cases.items():
        result = refusal(argv)
        err = result["err"]
        assert result["code"] == 2 and err.startswith("error: ") and err.count("\n") == 1, (name, err)
        assert all(needle in err for needle in needles), (name, needles, err)
        assert not result["torch"], f"{name}: torch was imported before the refusal"
        times[name] = result["seconds"]
    print("refusal times (s, inside main()):", {name: round(t, 3) for name, t in times.items()})
    assert max(times.values()) < SANITY_S, times
    assert not (tmp_path / "out").exists()


def test_limit_applies_before_records_are_checked(tmp_path):
    """A bad record after the first --limit records does not matter to the run, even with --strict."""
    path = write_records(tmp_path / "d.json", records(4) + [{"instruction": "x", "input": "", "output": ""}])
    assert len(read_alpaca(path, limit=4).records) == 4  # skip_bad=False: would refuse record 4 if it were read
    with pytest.raises(MMAdapterError, match="record 4: field 'output' is empty"):
        read_alpaca(path)


def test_bad_records_are_skipped_and_counted_by_default_and_strict_refuses(tmp_path, capsys):
    """train alpaca skips empty or unusable records with one summary line (how many of how many, the first one);
    --strict (or the older --no-skip-bad) refuses the first instead."""
    assert parse(TRAIN_ALPACA, ["--data", "a", "--out", "o"]).skips_bad
    assert not parse(TRAIN_ALPACA, ["--data", "a", "--out", "o", "--strict"]).skips_bad
    assert not parse(TRAIN_ALPACA, ["--data", "a", "--out", "o", "--no-skip-bad"]).skips_bad
    path = write_records(tmp_path / "d.json", records(3) + [{"instruction": "x", "input": "", "output": " "}]
                         + records(2, seed=1))
    data = read_alpaca(path, skip_bad=True)
    assert (data.skipped, data.read, len(data.records)) == (1, 6, 5)
    assert data.summary() == (f"skipped 1 of 6 records of {path} as empty or unusable (first: record 3: field "
                              "'output' is empty); --strict refuses them instead")
    base = tiny_base_folder(tmp_path / "base")
    code, out, err = command_here(["train", "alpaca", *arguments(base, path, tmp_path / "run", "--max-steps", "1")],
                                  capsys)
    assert code == 0 and data.summary() in out.splitlines(), (out, err)
    code, _, err = command_here(["train", "alpaca", *arguments(base, path, tmp_path / "strict", "--strict")], capsys)
    assert code == 2 and err.count("\n") == 1 and "record 3: field 'output' is empty" in err, err
    assert not (tmp_path / "strict").exists()


def test_the_shipped_alpaca_file_trains_on_the_first_try(shared_data, tmp_path, capsys):
    """The shipped 5,000 records (an empty output at record 2,335): --limit 40 reads 40 records and checks no
    other; the first 2,400 train with record 2,335 skipped and counted."""
    data = shared_data / "alpaca" / "alpaca_5000.json"
    assert read_alpaca(data, limit=40).read == 40  # strict, and still fine: record 2,335 is not among them
    base = tiny_base_folder(tmp_path / "base")
    code, out, err = command_here(["train", "alpaca", *arguments(base, data, tmp_path / "run", "--limit", "2400",
                                                                 "--max-steps", "1", "--max-seq-len", "64")], capsys)
    assert code == 0, err
    assert "skipped 1 of 2,400 records" in out and "record 2335: field 'output' is empty" in out, out


def test_more_adapted_layers_than_the_base_has_is_refused_before_it_loads(tmp_path):
    """--adapter-layers (and ablate's --layers) beyond the base's decoder layers, the paper's 30 on Gemma-3-270m's
    18: counted from a GGUF's tensor names (one file or its parts) or a model folder's config, refused through the
    real command before torch is imported. As many layers as the base has passes, and so does a method that adapts
    no top layers (lora sizes itself from the count)."""
    import gguf
    import numpy as np

    from mm_adapter.jobs.preflight import check_before_work

    path = tmp_path / "three.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(30)  # metadata that lies: the tensors hold three layers
    for block in range(3):
        for name in ("attn_q", "ffn_up"):
            writer.add_tensor(f"blk.{block}.{name}.weight", np.ones((4, 8), dtype=np.float32))
    writer.add_tensor("token_embd.weight", np.ones((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    parts = [tmp_path / "three.gguf.part0", tmp_path / "three.gguf.part1"]
    parts[0].write_bytes(data[:len(data) // 2])
    parts[1].write_bytes(data[len(data) // 2:])
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": {"num_hidden_layers": 2}}))
    sqa, out = scienceqa_folder(tmp_path / "sqa"), str(tmp_path / "out")
    alpaca = str(write_records(tmp_path / "a.json", records(3)))
    cases = [(["train", "scienceqa", "--data", str(sqa), "--base", str(path), "--adapter-layers", "4"],
              "--adapter-layers: 4 adapted layers asked, but the base", "only 3 decoder layers: give 3 or fewer"),
             (["train", "alpaca", "--data", alpaca, "--base", ",".join(map(str, parts))],
              "--adapter-layers: 30 adapted layers asked", "only 3 decoder layers"),
             (["ablate", "scienceqa", "--data", str(sqa), "--base", str(folder), "--adapter-layers", "2", "--layers",
               "1", "8"], "--layers: 8 adapted layers asked", "only 2 decoder layers")]
    for argv, *needles in cases:
        result = refusal([*argv, "--out", out])
        err = result["err"]
        assert result["code"] == 2 and err.count("\n") == 1 and all(n in err for n in needles), (argv, err)
        assert not result["torch"] and result["seconds"] < SANITY_S, result
    scienceqa = BY_WORDS[("train", "scienceqa")]
    for flags in (["--adapter-layers", "3"], ["--method", "lora"], ["--base", "org/name"]):
        check_before_work(parse(scienceqa, ["--data", str(sqa), "--out", out, "--base", str(path), *flags]))
    assert not (tmp_path / "out").exists()
