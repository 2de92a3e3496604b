"""The evaluation runner on a tiny random model and a tiny BPE tokenizer built here.

Score mode is checked against an explicit per-question forward; batching and padding must not
change probabilities beyond float32 rounding (atol 1e-5); generate mode against transformers'
unpadded generate; the predictions file against a kill (a stopped run plus a truncated last line).
"""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import mm_adapter.eval.run as runner
from mm_adapter import AdapterConfig, MMAdapterError, adapter_parameters, attach_adapter
from mm_adapter.eval.run import EvalConfig, evaluate, partial_path, run
from mm_adapter.inference.scoring import encode_scored, greedy_generate, option_probabilities
from mm_adapter.scienceqa.data import Problem
from mm_adapter.scienceqa.predictions import load_predictions
from mm_adapter.scienceqa.prompts import build_prompt, option_letters
from tiny import tiny_model

ATOL = 1e-5  # float32: batched vs unbatched matmuls differ only by rounding

PROBLEMS = [
    Problem("p1", "Which animal is a mammal?", ("trout", "cat", "frog"), 1, hint="Look at the animals."),
    Problem("p2", "Is ice cold?", ("yes", "no"), 0),
    Problem("p3", "Which word is a noun?", ("run", "blue", "table", "quickly"), 2, image="image.png",
            caption="A wooden table in a kitchen."),
    Problem("p4", "What is the capital of France?", ("Rome", "Paris", "Oslo", "Bern", "Madrid"), 1,
            hint="Europe has many capitals. Each country has one capital city."),
    Problem("p5", "Which is heavier?", ("a feather", "a brick"), 1, image="image.png", caption="A brick."),
    Problem("p6", "Which planet is largest?", ("Mars", "Jupiter", "Venus"), 1),
    Problem("p7", "Select the liquid.", ("water", "rock"), 0, hint="Think of a glass."),
]
FMT = "QCM-A"


def _corpus() -> list[str]:
    texts = [build_prompt(p, FMT, use_caption=True).text for p in PROBLEMS]
    texts += [f"The answer is {letter}." for letter in option_letters(5)] * 5
    return texts * 10


def make_tokenizer(merges: bool = True) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the problems' own text, so " A".." E" are single tokens;
    ``merges=False`` keeps it at single bytes (the letter then follows a separate space token)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + len(specials) + (200 if merges else 0),
                                  special_tokens=specials, initial_alphabet=alphabet, show_progress=False)
    tokenizer.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny forwards gain nothing from threads; on shared CPUs idle OpenMP workers spinning
    against other processes made these tests 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    tok = make_tokenizer()
    for letter in option_letters(5):
        assert len(tok(f" {letter}").input_ids) == 1, "fixture: letters must be single tokens"
    return tok


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model("llama-gqa", vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _reference_probs(model, tokenizer, problem: Problem) -> torch.Tensor:
    """One question, no batching: full logits of prompt + " The answer is", letters looked up by name."""
    ids = tokenizer(build_prompt(problem, FMT, use_caption=True).prompt + " The answer is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    letters = [tokenizer.convert_tokens_to_ids(f"Ġ{letter}") for letter in option_letters(len(problem.choices))]
    return torch.softmax(logits[letters], dim=-1)


def test_score_mode_equals_explicit_unbatched_forward(model, tokenizer):
    """Score mode's choice and option probabilities equal one explicit unbatched forward per question (atol 1e-5), and
    its output states the letter."""
    answers = evaluate(model, tokenizer, PROBLEMS, EvalConfig(format=FMT, batch_size=3))
    for problem in PROBLEMS:
        reference = _reference_probs(model, tokenizer, problem)
        answer = answers[problem.pid]
        assert answer.choice == int(reference.argmax())
        assert torch.allclose(torch.tensor(answer.probs), reference, atol=ATOL)
        assert answer.output == f"The answer is {option_letters(len(problem.choices))[answer.choice]}."


def test_scored_letter_is_the_token_training_produces(tokenizer):
    """The scored ids are a prefix of the tokenised training text, and the next token is its letter."""
    for problem in PROBLEMS:
        pair = build_prompt(problem, FMT, use_caption=True)
        (scored,) = encode_scored(tokenizer, [pair.prompt], [len(problem.choices)])
        trained = tokenizer(pair.text).input_ids
        assert trained[: len(scored.input_ids)] == scored.input_ids
        assert trained[len(scored.input_ids)] == scored.letter_ids[problem.answer]


def test_tokenizer_without_single_letter_tokens_is_refused():
    """A tokenizer whose option letters share a first token cannot be scored: refused in one error, never scored
    wrongly."""
    with pytest.raises(MMAdapterError, match="distinct first tokens"):
        encode_scored(make_tokenizer(merges=False), ["Answer:"], [3])


@pytest.mark.parametrize("batch_size", [2, 7])
def test_batch_size_changes_neither_choices_nor_probabilities(model, tokenizer, batch_size):
    """Batching and padding change neither the choices nor the probabilities (beyond float32 rounding); answers come
    back in input order."""
    one = evaluate(model, tokenizer, PROBLEMS, EvalConfig(format=FMT, batch_size=1))
    many = evaluate(model, tokenizer, PROBLEMS, EvalConfig(format=FMT, batch_size=batch_size))
    assert list(many) == [p.pid for p in PROBLEMS]
    for pid, answer in many.items():
        assert answer.choice == one[pid].choice
        assert torch.allclose(torch.tensor(answer.probs), torch.tensor(one[pid].probs), atol=ATOL)


def test_image_offsets_are_per_row_and_batch_invariant(tokenizer):
    """The multimodal path: a (batch, hidden) offset reaches each row's prompts, and only its own."""
    model = attach_adapter(tiny_model("llama-gqa", vocab_size=len(tokenizer), seed=3),
                           AdapterConfig(adapter_len=3, adapter_layers=2))
    for params in adapter_parameters(model).values():
        params["gate"].data.fill_(2.0)  # open the zero-initialised gates so the prompts matter
    prompts = [build_prompt(p, FMT).prompt for p in PROBLEMS[:3]]
    n_options = [len(p.choices) for p in PROBLEMS[:3]]
    offsets = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 5
    batched = torch.tensor(option_probabilities(model, tokenizer, prompts, [4, 4, 4], offsets))
    single = torch.tensor([option_probabilities(model, tokenizer, [p], [4], offsets[i: i + 1])[0]
                           for i, p in enumerate(prompts)])
    assert torch.allclose(batched, single, atol=ATOL)
    plain = torch.tensor(option_probabilities(model, tokenizer, prompts, [4, 4, 4]))
    zero = torch.tensor(option_probabilities(model, tokenizer, prompts, [4, 4, 4], torch.zeros_like(offsets)))
    assert torch.allclose(plain, zero, atol=ATOL) and not torch.allclose(plain, batched, atol=1e-3)
    assert [len(row) for row in option_probabilities(model, tokenizer, prompts, n_options)] == n_options


def test_greedy_generate_batched_equals_unpadded_generate(model, tokenizer):
    """Batched, left-padded greedy decoding gives exactly the text of transformers' unpadded generate per prompt."""
    prompts = [build_prompt(p, FMT, use_caption=True).prompt for p in PROBLEMS[:4]]
    batched = greedy_generate(model, tokenizer, prompts, max_new_tokens=6, stop_at_newline=False)
    for prompt, text in zip(prompts, batched):
        ids = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**ids, do_sample=False, max_new_tokens=6, pad_token_id=0, eos_token_id=2)
        assert text == tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)


def test_generate_mode_parses_and_counts_unparseable(model, tokenizer, tmp_path, monkeypatch):
    """Generate mode reads the answer from the text; an unreadable or ambiguous one is stored as -1 and counted, never
    guessed."""
    canned = {"Which animal": "The answer is B.", "Is ice": "I am not sure.", "Which word": "(C)",
              "What is the capital": "The answer is A. No, the answer is B.", "Which is heavier": "a brick",
              "Which planet": "The answer is F.", "Select": "A"}

    def fake_generate(model, tokenizer, prompts, *args):
        return [next(text for key, text in canned.items() if key in prompt) for prompt in prompts]

    monkeypatch.setattr(runner, "greedy_generate", fake_generate)
    summary = run(model, tokenizer, PROBLEMS, tmp_path / "gen.json", EvalConfig(mode="generate", batch_size=3),
                  progress=False)
    predictions = load_predictions(tmp_path / "gen.json")
    assert predictions.results == {"p1": 1, "p2": -1, "p3": 2, "p4": -1, "p5": 1, "p6": -1, "p7": 0}
    assert predictions.outputs["p4"] == canned["What is the capital"]
    assert (summary.no_answer, summary.correct, summary.finished) == (3, 4, True)


def _spy(monkeypatch) -> list[str]:
    computed: list[str] = []
    real = runner.answer_batch

    def spy(model, tokenizer, problems, config, offsets=None):
        computed.extend(p.pid for p in problems)
        return real(model, tokenizer, problems, config, offsets)

    monkeypatch.setattr(runner, "answer_batch", spy)
    return computed


def test_resume_after_kill_computes_only_the_rest_and_matches_an_uninterrupted_run(
        model, tokenizer, tmp_path, monkeypatch):
    """After a kill (stopped run plus a truncated last line) a rerun computes only the missing pids and writes a file
    byte-identical to an uninterrupted run's."""
    config, identity = EvalConfig(format=FMT, batch_size=2), {"base": "tiny"}
    run(model, tokenizer, PROBLEMS, tmp_path / "full.json", config, identity, progress=False)
    out = tmp_path / "pred.json"
    first = run(model, tokenizer, PROBLEMS, out, config, identity, max_batches=2, progress=False)
    assert not first.finished and not out.exists() and first.computed == 4
    with partial_path(out).open("a") as f:
        f.write('{"pid": "p6", "cho')  # killed in the middle of writing a line
    computed = _spy(monkeypatch)
    second = run(model, tokenizer, PROBLEMS, out, config, identity, progress=False)
    first_pids = [p.pid for batch in runner.batch_plan(PROBLEMS, config)[:2] for p in batch]
    assert second.resumed == 4 and second.finished and second.computed == 3
    assert sorted(computed) == sorted({p.pid for p in PROBLEMS} - set(first_pids))
    assert out.read_bytes() == (tmp_path / "full.json").read_bytes()
    assert not partial_path(out).exists()
    assert len(load_predictions(out)) == len(PROBLEMS)


def test_finished_file_and_foreign_partial_are_refused(model, tokenizer, tmp_path):
    """A finished predictions file is replaced only with overwrite; a partial file of another configuration is refused
    naming the differing key, and discarded with overwrite."""
    out = tmp_path / "pred.json"
    run(model, tokenizer, PROBLEMS[:2], out, EvalConfig(), {"base": "tiny"}, progress=False)
    with pytest.raises(MMAdapterError, match="exists"):
        run(model, tokenizer, PROBLEMS[:2], out, EvalConfig(), {"base": "tiny"}, progress=False)
    run(model, tokenizer, PROBLEMS[:2], out, EvalConfig(), {"base": "tiny"}, overwrite=True, progress=False)

    other = tmp_path / "other.json"
    run(model, tokenizer, PROBLEMS, other, EvalConfig(batch_size=2), {"base": "tiny"}, max_batches=1, progress=False)
    with pytest.raises(MMAdapterError, match=r"another configuration \(format: 'QCM-A' there, 'CQM-A' now\)"):
        run(model, tokenizer, PROBLEMS, other, EvalConfig(format="CQM-A"), {"base": "tiny"}, progress=False)
    summary = run(model, tokenizer, PROBLEMS, other, EvalConfig(format="CQM-A"), {"base": "tiny"}, overwrite=True,
                  progress=False)
    assert summary.resumed == 0 and json.loads(other.read_text())["config"]["format"] == "CQM-A"


def test_predictions_file_shape(model, tokenizer, tmp_path):
    """The predictions file is the official shape in problem order (whatever the batch plan), with outputs and per-
    option probabilities summing to 1."""
    out = tmp_path / "pred.json"
    run(model, tokenizer, PROBLEMS, out, EvalConfig(batch_size=4), {"base": "tiny"}, name="tiny zs", progress=False)
    data = json.loads(out.read_text())
    assert list(data["results"]) == [p.pid for p in PROBLEMS]  # problem order, whatever the batch plan
    assert set(data["outputs"]) == set(data["results"])
    assert all(abs(sum(v) - 1) < 1e-4 and len(v) == len(p.choices)
               for v, p in zip(data["probabilities"].values(), PROBLEMS))
    predictions = load_predictions(out)
    assert predictions.name == "tiny zs" and len(predictions) == len(PROBLEMS)


def test_evaluate_from_a_training_loop_runs_in_eval_mode_and_restores_it(tokenizer):
    """evaluate() answers without dropout when called from a training loop and restores the model's training mode."""
    model = tiny_model("llama-gqa", vocab_size=len(tokenizer), attention_dropout=0.5)
    reference = evaluate(model, tokenizer, PROBLEMS[:3])
    model.train()
    answers = evaluate(model, tokenizer, PROBLEMS[:3])  # dropout would make these differ
    assert model.training
    assert all(torch.allclose(torch.tensor(answers[pid].probs), torch.tensor(reference[pid].probs), atol=ATOL)
               for pid in answers)
