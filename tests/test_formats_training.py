"""Training with the lecture and solution as extra signal: QCM-ALE (the answer, then "BECAUSE: lecture solution")
and QCM-LEA (lecture, solution, then the answer).

The rules protected: labels cover the whole target (lecture, explanation and answer) and nothing of the prompt; a
problem with no lecture and no solution (most of ScienceQA) trains exactly as QCM-A, and one with only one of them
leaves no gap; score mode reads QCM-ALE's answer where it comes first, and refuses QCM-LEA, whose answer follows text
the model would first have to write (so does ``train scienceqa``, whose validation is score mode); QCM-ALE trains
end to end through the ScienceQA job, and its logged val accuracy is what score mode gives its best adapter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_eval_run import make_tokenizer, single_thread  # noqa: F401  (autouse fixture)

from mm_adapter import AdapterConfig, TrainConfig, load_adapter, load_base, read_adapter
from mm_adapter.cli import main
from mm_adapter.data.config import ScienceQASource
from mm_adapter.data.problems import encode_problem, load_problems
from mm_adapter.errors import ConfigError
from mm_adapter.eval.config import EvalConfig
from mm_adapter.eval.run import accuracy, evaluate
from mm_adapter.inference.scoring import encode_scored
from mm_adapter.jobs.configs.training import TrainScienceQAConfig
from mm_adapter.jobs.train_scienceqa import train_scienceqa
from mm_adapter.jobs.validation import LOG_NAME, best_logged
from mm_adapter.model.config import ModelOptions
from mm_adapter.scienceqa.data import Problem
from mm_adapter.scienceqa.prompts import build_prompt
from mm_adapter.scienceqa.synthetic import generate
from mm_adapter.training.batches import IGNORE_INDEX
from tiny import tiny_model

EXPLAINED = Problem("e1", "Which is a mammal?", ("trout", "cat"), 1, lecture="Mammals have fur.\nThey feed milk.",
                    solution="A cat has fur.")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def tiny_sqa(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny Llama base folder and a generated ScienceQA-format set (16 train, 8 val; lectures and solutions on
    some families, none on others)."""
    return tiny_sqa_folder(tmp_path_factory.mktemp("tiny-sqa"), {"train": 16, "val": 8})


def tiny_sqa_folder(root: Path, sizes: dict[str, int]) -> tuple[Path, Path]:
    """``root/base`` (a tiny Llama and its word tokenizer) and ``root/data`` (a generated set of ``sizes``)."""
    tokenizer = make_tokenizer()
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), max_position_embeddings=1024, bos_token_id=1,
                       eos_token_id=2, pad_token_id=0)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    return root / "base", generate(root / "data", sizes, seed=0)


def tiny_train_config(base: Path, data: Path, out: Path, **overrides) -> TrainScienceQAConfig:
    """``train scienceqa`` on the tiny set: 2 optimizer steps, fp32, one thread."""
    return TrainScienceQAConfig(out=str(out), source=ScienceQASource(data=str(data)),
                                model=ModelOptions(base=str(base), dtype="fp32", threads=1),
                                adapter=AdapterConfig(adapter_len=4, adapter_layers=2),
                                train=TrainConfig(epochs=1, warmup_epochs=0, batch_size=8, lr=1e-2, bf16=False,
                                                  progress=False), **overrides)


def _labelled_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX])


@pytest.mark.parametrize("fmt, target", [
    ("QCM-ALE", " The answer is B. BECAUSE: Mammals have fur.\\nThey feed milk. A cat has fur."),
    ("QCM-LEA", " Mammals have fur.\\nThey feed milk. A cat has fur. The answer is B."),
])
def test_labels_cover_lecture_explanation_and_answer_and_nothing_of_the_prompt(tokenizer, fmt, target):
    """The labels are exactly the target (lecture and solution, newlines escaped to one line, and the answer) and the
    EOS; every token before it is the prompt, unlabelled."""
    example = encode_problem(tokenizer, EXPLAINED, fmt)
    assert _labelled_text(tokenizer, example) == target + "</s>"
    first = next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
    assert tokenizer.decode(example["input_ids"][:first]) == build_prompt(EXPLAINED, fmt).prompt


def test_problems_without_lecture_or_solution_train_as_qcm_a_and_leave_no_gaps(tokenizer):
    """No lecture and no solution: both explanation formats give the QCM-A example itself (no dangling "BECAUSE:");
    only one of them: it is joined with single spaces."""
    plain = Problem("p", "Which is a mammal?", ("trout", "cat"), 1)
    for fmt in ("QCM-ALE", "QCM-LEA"):
        assert encode_problem(tokenizer, plain, fmt) == encode_problem(tokenizer, plain, "QCM-A")
    solved = Problem("s", "Which is a mammal?", ("trout", "cat"), 1, solution="A cat has fur.")
    assert build_prompt(solved, "QCM-ALE").target == " The answer is B. BECAUSE: A cat has fur."
    assert build_prompt(solved, "QCM-LEA").target == " A cat has fur. The answer is B."


def test_score_mode_reads_the_ale_answer_and_refuses_lea(tokenizer, capsys, tmp_path):
    """Score mode scores exactly the letter token an ALE example is trained to produce after "The answer is"; LEA is
    refused in score mode (EvalConfig, and train scienceqa before any work: one line, exit 2), allowed in generate
    mode."""
    example = encode_problem(tokenizer, EXPLAINED, "QCM-ALE")
    (scored,) = encode_scored(tokenizer, [build_prompt(EXPLAINED, "QCM-ALE").prompt], [2])
    assert example["input_ids"][:len(scored.input_ids)] == scored.input_ids
    assert example["input_ids"][len(scored.input_ids)] == scored.letter_ids[EXPLAINED.answer]
    with pytest.raises(ConfigError, match="format: QCM-LEA states the answer after the lecture and solution"):
        EvalConfig(format="QCM-LEA")
    assert EvalConfig(format="QCM-LEA", mode="generate").prompt_format == "QCM-LEA"
    with pytest.raises(ConfigError, match="format: QCM-LEA"):
        TrainScienceQAConfig(out="o", format="QCM-LEA")
    capsys.readouterr()
    code = main(["train", "scienceqa", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--format", "QCM-LEA"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --format: QCM-LEA") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_qcm_ale_trains_end_to_end_and_validation_reads_its_answer(tiny_sqa, tmp_path):
    """train scienceqa on QCM-ALE: problems with explanations train on them, best.safetensors records QCM-ALE, and the
    best val accuracy it logged is what score mode gives that adapter on val."""
    base, data = tiny_sqa
    tokenizer = make_tokenizer()
    problems = load_problems(ScienceQASource(data=str(data)), "train", say=lambda line: None)
    assert any("BECAUSE:" in _labelled_text(tokenizer, encode_problem(tokenizer, p, "QCM-ALE")) for p in problems)
    result = train_scienceqa(tiny_train_config(base, data, tmp_path / "ale", format="QCM-ALE"))
    assert read_adapter(result.best_path).prompt_format == "QCM-ALE"
    logged, _ = best_logged(tmp_path / "ale" / LOG_NAME)
    model, tokenizer = load_base(str(base), dtype="fp32")
    load_adapter(model, result.best_path)
    val = load_problems(ScienceQASource(data=str(data)), "val", say=lambda line: None)
    answers = evaluate(model, tokenizer, val, EvalConfig(format="QCM-ALE", batch_size=16))
    assert accuracy(answers, val) == logged == result.best_val
