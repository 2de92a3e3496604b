"""The ``eval scienceqa`` job end to end on a tiny saved model (the job function, the command in this process,
the documented ``mm-adapter eval scienceqa`` in a real process), and a smoke run of SmolLM2 on real val data."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from entry_point import MM_ADAPTER
from test_eval_run import PROBLEMS, make_tokenizer, single_thread  # noqa: F401 (autouse fixture)

from mm_adapter import MMAdapterError
from mm_adapter.cli import main as cli_main
from mm_adapter.data.config import ScienceQASource
from mm_adapter.eval.config import EvalConfig
from mm_adapter.eval.run import accuracy, evaluate, partial_path
from mm_adapter.inference.scoring import encode_scored
from mm_adapter.jobs.configs.evaluation import EvalScienceQAConfig
from mm_adapter.jobs.eval_scienceqa import eval_scienceqa
from mm_adapter.model.config import ModelOptions
from mm_adapter.scienceqa.data import load_official
from mm_adapter.scienceqa.predictions import load_predictions
from mm_adapter.scienceqa.prompts import build_prompt, option_letters
from tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]
COMMAND = [MM_ADAPTER, "eval", "scienceqa"]


def official_layout(root: Path) -> Path:
    """The tiny problems as an official-layout ScienceQA folder (all in val; also used by test_signals)."""
    records = {p.pid: {"question": p.question, "choices": list(p.choices), "answer": p.answer, "hint": p.hint,
                       "image": p.image, "subject": "natural science", "grade": "grade3", "split": "val"}
               for p in PROBLEMS}
    root.mkdir()
    (root / "problems.json").write_text(json.dumps(records))
    (root / "pid_splits.json").write_text(json.dumps({"val": list(records), "test": []}))
    captions = {p.pid: p.caption for p in PROBLEMS if p.caption}
    (root / "captions.json").write_text(json.dumps({"captions": captions}))
    return root


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    tokenizer = make_tokenizer()
    folder = tmp_path_factory.mktemp("tiny-base")
    tiny_model("llama-gqa", vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _config(base: Path, data: Path, out: Path, **overrides) -> EvalScienceQAConfig:
    return EvalScienceQAConfig(split="val", out=str(out), source=ScienceQASource(data=str(data)),
                               model=ModelOptions(base=str(base), device="cpu"), eval=EvalConfig(batch_size=3),
                               bootstrap=50, progress=False, name="tiny", **overrides)


def test_job_writes_the_output_folder_and_refuses_a_rerun(base_folder, tmp_path, capsys):
    """The job answers every problem into OUT/predictions.json (official shape, the base in its config), returns and
    writes the table (table.md, summary.json, config.yaml, eval.json; no partial file left), says the run summary on stderr,
    and refuses to overwrite a finished run or one of its own inputs (even with overwrite)."""
    data, out = official_layout(tmp_path / "data"), tmp_path / "runs" / "tiny"
    result = eval_scienceqa(_config(base_folder, data, out))
    assert result.out == out and result.predictions == out / "predictions.json"
    assert "| **tiny** |" in result.table and "| ↳ n | 7 | 0 | 0 |" in result.table
    assert "7 problems (0 resumed)" in capsys.readouterr().err
    predictions = load_predictions(result.predictions)
    assert len(predictions) == 7 and json.loads(result.predictions.read_text())["config"]["base"] == str(base_folder)
    assert (result.summary.total, result.summary.finished) == (7, True) and result.scores.scored == 7
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "eval.json", "predictions.json", "summary.json",
                                                     "table.md"]
    assert not partial_path(result.predictions).exists()
    assert (out / "table.md").read_text() == result.table
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "val" and summary["name"] == "tiny" and summary["config"]["format"] == "QCM-A"
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["command"] == "eval scienceqa" and written["split"] == "val" and written["out"] == str(out)
    with pytest.raises(MMAdapterError, match="exists"):
        eval_scienceqa(_config(base_folder, data, out))
    with pytest.raises(MMAdapterError, match="one of the inputs"):  # a reference kept in the folder written
        eval_scienceqa(_config(base_folder, data, out, reference=str(out / "summary.json"), overwrite=True))
    assert load_predictions(result.predictions).results == predictions.results


def test_command_prints_the_table_and_its_config_file_reproduces_the_run(base_folder, tmp_path, capsys):
    """``mm-adapter eval scienceqa`` prints the Markdown table on stdout and the run summary on stderr; the
    config.yaml it writes, passed back with --config (and another --out), gives the same predictions; a missing
    --split or a rerun into a finished folder is one "error:" line and exit 2."""
    data, out = official_layout(tmp_path / "data"), tmp_path / "first"
    argv = ["eval", "scienceqa", "--base", str(base_folder), "--data", str(data), "--split", "val",
            "--batch-size", "3", "--out", str(out), "--bootstrap", "0", "--no-progress", "--name", "tiny",
            "--device", "cpu"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr()
    assert printed.out == (out / "table.md").read_text() and "| **tiny** |" in printed.out
    assert "7 problems (0 resumed)" in printed.err
    again = tmp_path / "again"
    assert cli_main(["eval", "scienceqa", "--config", str(out / "config.yaml"), "--out", str(again)]) == 0
    capsys.readouterr()
    assert load_predictions(again / "predictions.json").results == load_predictions(out / "predictions.json").results
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "exists" in err and err.count("\n") == 1
    assert cli_main([a for a in argv if a not in ("--split", "val")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--split" in err and err.count("\n") == 1


def test_the_command_runs_in_a_real_process(base_folder, tmp_path):
    """``mm-adapter eval scienceqa`` (the documented command) runs the same job in a real process: the table on
    stdout, the predictions in the --out folder; a bad input is one line on stderr, exit 2, no traceback."""
    data, out = official_layout(tmp_path / "data"), tmp_path / "out"
    argv = [*COMMAND, "--base", str(base_folder), "--data", str(data), "--split", "val",
            "--out", str(out), "--bootstrap", "0", "--no-progress", "--name", "tiny", "--device", "cpu",
            "--threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| **tiny** |" in done.stdout and len(load_predictions(out / "predictions.json")) == 7
    bad = subprocess.run([*argv, "--batch-size", "0"], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "--batch-size" in bad.stderr
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


@pytest.fixture(scope="module")
def smollm2():
    from mm_adapter import load_base
    from mm_adapter.model.base import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except MMAdapterError as error:
        pytest.skip(str(error))
    return load_base("smollm2-135m")


def test_smollm2_on_real_val_problems(smollm2, shared_data, capsys):
    """Smoke run: score mode answers all, the scored letter is the trained token, generate mode
    agrees where it parses (reported; a zero-shot model often stops at once, so not asserted)."""
    model, tokenizer = smollm2
    problems = load_official(shared_data / "scienceqa", "val")
    problems = sorted(problems, key=lambda p: len(build_prompt(p, use_caption=True).prompt))[:8]
    for problem in problems[:2]:
        pair = build_prompt(problem, use_caption=True)
        (scored,) = encode_scored(tokenizer, [pair.prompt], [len(problem.choices)])
        assert scored.letter_ids == [tokenizer.convert_tokens_to_ids(f"Ġ{x}") for x in
                                     option_letters(len(problem.choices))]
        assert tokenizer(pair.text).input_ids[len(scored.input_ids)] == scored.letter_ids[problem.answer]
    scored = evaluate(model, tokenizer, problems, EvalConfig(batch_size=8, bf16=True))
    for answer, problem in zip(scored.values(), problems):
        assert 0 <= answer.choice < len(problem.choices) and abs(sum(answer.probs) - 1) < 1e-4
    generated = evaluate(model, tokenizer, problems, EvalConfig(mode="generate", batch_size=8, bf16=True,
                                                               max_new_tokens=12))
    parsed = [pid for pid, a in generated.items() if a.choice >= 0]
    agree = sum(generated[pid].choice == scored[pid].choice for pid in parsed)
    with capsys.disabled():
        print(f"\nSmolLM2 on {len(problems)} real val problems: score acc {accuracy(scored, problems):.2f}; "
              f"generate parsed {len(parsed)}, agrees with score on {agree}")
