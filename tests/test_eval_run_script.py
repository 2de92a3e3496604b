"""scripts/eval_scienceqa.py end to end on a tiny saved model, and a smoke run of SmolLM2 on real val data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from eval.run import EvalConfig, accuracy, evaluate
from eval.scoring import encode_scored
from mm_adapter import MMAdapterError
from scienceqa.data import load_official
from scienceqa.predictions import load_predictions
from scienceqa.prompts import build_prompt, option_letters
from tests.test_eval_run import PROBLEMS, make_tokenizer, single_thread  # noqa: F401 (autouse fixture)
from tests.tiny import tiny_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "eval_scienceqa.py"


def _script():
    spec = importlib.util.spec_from_file_location("eval_scienceqa", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _official_layout(root: Path) -> Path:
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


def test_script_writes_predictions_prints_the_table_and_refuses_a_rerun(base_folder, tmp_path, capsys):
    data, out = _official_layout(tmp_path / "data"), tmp_path / "runs" / "pred.json"
    argv = ["--base", str(base_folder), "--data", str(data), "--split", "val", "--batch-size", "3",
            "--out", str(out), "--bootstrap", "50", "--no-progress", "--name", "tiny"]
    assert _script().main(argv) == 0
    table = capsys.readouterr()
    assert "| **tiny** |" in table.out and "| ↳ n | 7 | 0 | 0 |" in table.out
    assert "7 problems (0 resumed)" in table.err
    predictions = load_predictions(out)
    assert len(predictions) == 7 and json.loads(out.read_text())["config"]["base"] == str(base_folder)
    with pytest.raises(MMAdapterError, match="exists"):
        _script().main(argv)
    with pytest.raises(MMAdapterError, match="one of the inputs"):
        _script().main([str(data / "problems.json") if arg == str(out) else arg for arg in argv])


@pytest.fixture(scope="module")
def smollm2():
    from mm_adapter import load_base
    from mm_adapter.base import smollm2_gguf_path

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
