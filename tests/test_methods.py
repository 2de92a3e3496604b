"""Methods on equal terms (``--method``): ours and its V2, PEFT's AdaptionPrompt, LoRA, prompt tuning, prefix tuning (all four
through PEFT itself) and full fine-tuning, on tiny models.

Each trains through the ScienceQA job and the ``train alpaca`` command, its folder records the method and
reloads with equal logits and answers; score mode (letters, and the QCM-T cloze with KV-cache reuse) is
checked against an explicit per-option forward of PEFT's own model; sizes left unset match ours on a
SmolLM2-shaped base; options that do not apply, PEFT missing and --images with another method are one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from test_eval_run import PROBLEMS, make_tokenizer, single_thread  # noqa: F401 (autouse fixture)
from test_eval_run_script import base_folder, official_layout  # noqa: F401 (fixture)
from transformers import LlamaConfig, LlamaForCausalLM

from mm_adapter import AdapterConfig, MMAdapterError, TrainConfig, load_base
from mm_adapter.data.alpaca import prompt_text
from mm_adapter.data.config import ScienceQASource
from mm_adapter.errors import ConfigError
from mm_adapter.eval.config import EvalConfig
from mm_adapter.inference.config import SamplingConfig
from mm_adapter.inference.generate import generate_text
from mm_adapter.inference.loading import load_answering
from mm_adapter.inference.scoring import option_log_probs, option_text_log_probs
from mm_adapter.jobs.configs.answering import GenerateConfig
from mm_adapter.jobs.configs.evaluation import EvalScienceQAConfig
from mm_adapter.jobs.configs.training import TrainScienceQAConfig
from mm_adapter.jobs.eval_scienceqa import eval_scienceqa
from mm_adapter.jobs.generate import generate
from mm_adapter.jobs.train_scienceqa import train_scienceqa
from mm_adapter.methods import attach as methods
from mm_adapter.methods import config as method_config
from mm_adapter.methods.attach import attach_method, count_for
from mm_adapter.methods.config import (
    FULL, LLAMA_ADAPTER, LLAMA_ADAPTER_V2, LORA, METHODS, OUR_METHODS, PEFT_METHODS, PREFIX_TUNING, PROMPT_TUNING,
    TuningConfig,
)
from mm_adapter.methods.folders import RECORD_NAME, save_method_folder
from mm_adapter.methods.virtual_tokens import context_tokens
from mm_adapter.model.config import ModelOptions
from mm_adapter.pretrained import resolve_adapter
from mm_adapter.scienceqa.prompts import PromptFormat, build_prompt, stated_answer
from tiny import tiny_model
from tiny_text import arguments, command_here, records, tiny_base_folder, write_records

ADAPTER = AdapterConfig(adapter_len=4, adapter_layers=3)  # 780 trainable on the tiny Llama: the budget matched
FOLDER_METHODS = [m for m in METHODS if m not in OUR_METHODS]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The 7 tiny problems, all in val: trained on and validated on (the property here is the plumbing)."""
    return official_layout(tmp_path_factory.mktemp("methods") / "data")


def trained_parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def initial(base: Path, method: str, adapter: AdapterConfig = ADAPTER, seed: int = 0) -> dict[str, torch.Tensor]:
    """The trainable parameters a run of ``method`` starts from (the jobs seed torch with the train seed first)."""
    model, _ = load_base(str(base), dtype="fp32")
    torch.manual_seed(seed)
    return trained_parameters(attach_method(model, TuningConfig(method=method), adapter, autocast=False).model)


def assert_moved(base: Path, method: str, saved: Path, adapter: AdapterConfig = ADAPTER) -> None:
    """The saved adapter, reloaded on the base, holds other values than the run started from."""
    model, _, _ = load_answering(str(base), method, saved, "cpu", "fp32")
    now = dict(model.named_parameters())
    start = initial(base, method, adapter)
    assert start and all(name in now for name in start)
    assert any(not torch.equal(now[name].float(), value.float()) for name, value in start.items())


def sqa_config(base: Path, data: Path, out: Path, method: str) -> TrainScienceQAConfig:
    """Tiny: QCM-T, 7 problems trained on and validated on, 2 epochs of 2 steps, fp32, no autocast."""
    return TrainScienceQAConfig(
        out=str(out), source=ScienceQASource(data=str(data)), train_split="val", val_split="val", format="QCM-T",
        model=ModelOptions(base=str(base), dtype="fp32"), adapter=ADAPTER, tuning=TuningConfig(method=method),
        train=TrainConfig(epochs=2, warmup_epochs=0, batch_size=4, lr=1e-2, bf16=False, checkpoint_every=100,
                          progress=False))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_in_the_job_and_its_best_checkpoint_answers_alike_in_eval(base_folder, data, tmp_path,
                                                                                      method):
    """Every method trains through train_scienceqa (parameters move from where the run started), keeps its best val
    checkpoint (ours best.safetensors; others the folder best/, with the method, its sizes and the val accuracy in
    mm_adapter.json, and the last step's folder adapter/), and eval scienceqa with that --adapter on the same val
    problems scores exactly the accuracy validation chose it by."""
    out = tmp_path / "run"
    result = train_scienceqa(sqa_config(base_folder, data, out, method))
    assert result.best_path == out / ("best.safetensors" if method in OUR_METHODS else "best")
    assert result.best_path.exists() and result.train.adapter_path.exists()
    if method not in OUR_METHODS:
        assert result.train.adapter_path == out / "adapter"
        written = json.loads((result.best_path / RECORD_NAME).read_text())
        assert written["method"] == method and written["prompt_format"] == "QCM-T"
        assert written["metadata"]["val_accuracy"] == f"{result.best_val:.4f}"
    assert_moved(base_folder, method, result.train.adapter_path)
    evaluated = eval_scienceqa(EvalScienceQAConfig(
        split="val", out=str(tmp_path / "eval"), source=ScienceQASource(data=str(data)), adapter=str(result.best_path),
        model=ModelOptions(base=str(base_folder), device="cpu", dtype="fp32"), eval=EvalConfig(batch_size=16),
        bootstrap=0, progress=False))
    assert evaluated.summary.accuracy == pytest.approx(result.best_val, abs=1e-9)
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["method"] == method  # V2 named as V2 too


@pytest.fixture(scope="module")
def alpaca(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("alpaca")
    return tiny_base_folder(folder / "base"), write_records(folder / "data.json", records(8))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_through_the_train_alpaca_command(alpaca, tmp_path, capsys, method):
    """`mm-adapter train alpaca --method M` exits 0 and prints the method, its sizes and its trainable count beside
    ours; its adapter (ours adapter.safetensors, others the folder adapter/ recording the method) has moved."""
    base, records_file = alpaca
    code, out, err = command_here(["train", "alpaca", *arguments(base, records_file, tmp_path / "run"),
                                   "--method", method], capsys)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith(f"method {method}"))
    assert "trainable parameters" in line
    saved = tmp_path / "run" / ("adapter.safetensors" if method in OUR_METHODS else "adapter")
    if method not in OUR_METHODS:
        assert json.loads((saved / RECORD_NAME).read_text())["method"] == method
    assert_moved(base, method, saved)


def randomised(model, seed: int = 5):
    """Every trainable parameter moved off its initial value (zero-initialised LoRA B would hide the method)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def tuned_on(base: Path, method: str, **sizes):
    model, tokenizer = load_base(str(base), dtype="fp32")
    torch.manual_seed(0)
    tuned = attach_method(model, TuningConfig(method=method, **sizes), ADAPTER, autocast=False)
    randomised(tuned.model)
    return tuned, tokenizer


def full_logits(model, ids: list[int]) -> torch.Tensor:
    """The model's own forward (PeftModel.forward for PEFT methods), float32, at the input's positions only."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -len(ids):].float()


def explicit_cloze(model, tokenizer, prompt: str, choices) -> list[float]:
    """Per option, the mean log-probability of its stated text, from one unbatched full forward per option."""
    scores = []
    for index in range(len(choices)):
        text = prompt + " " + stated_answer(choices, index, PromptFormat.QCM_T)
        encoded = tokenizer(text, return_offsets_mapping=True)
        ids, bound = encoded.input_ids, len(prompt + " The answer is")
        first = next(i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > bound)
        log_probs = torch.log_softmax(full_logits(model, ids), dim=-1)
        scores.append(torch.stack([log_probs[i - 1, ids[i]] for i in range(first, len(ids))]).mean().item())
    return scores


@pytest.mark.parametrize("method", METHODS)
def test_score_mode_matches_an_explicit_forward_of_each_method(base_folder, method):
    """The cloze scores (prompt once into a KV cache, options on top, batched) and the letter log-probabilities equal
    those of an unbatched full forward of the method's own model (PEFT's forward for PEFT methods) per option: prompt
    and prefix tuning's virtual tokens are in score mode's decoder calls, at PEFT's positions."""
    tuned, tokenizer = tuned_on(base_folder, method)
    model = tuned.model
    prompts = [build_prompt(p, "QCM-T").prompt for p in PROBLEMS]
    cloze = option_text_log_probs(model, tokenizer, prompts, [p.choices for p in PROBLEMS])
    for row, (prompt, problem) in enumerate(zip(prompts, PROBLEMS)):
        expected = torch.tensor(explicit_cloze(model, tokenizer, prompt, problem.choices))
        torch.testing.assert_close(cloze[row, :len(problem.choices)], expected, atol=1e-5, rtol=1e-5)
    letters = [build_prompt(p, "QCM-A").prompt for p in PROBLEMS[:3]]
    scored = option_log_probs(model, tokenizer, letters, [len(p.choices) for p in PROBLEMS[:3]])
    for row, prompt in enumerate(letters):
        ids = tokenizer(prompt + " The answer is").input_ids
        expected = torch.log_softmax(full_logits(model, ids)[-1], dim=-1)
        letter_ids = [tokenizer(f"{prompt} The answer is {c}.").input_ids[len(ids)]
                      for c in "ABCDE"[:len(PROBLEMS[row].choices)]]
        torch.testing.assert_close(scored[row, :len(letter_ids)], expected[letter_ids], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", [PROMPT_TUNING, PREFIX_TUNING])
def test_virtual_tokens_take_context_and_change_the_scores(base_folder, method):
    """A prompt-learning method's virtual tokens take positions of the model's context (problems that no longer fit
    are refused), and leaving them out of score mode would change the scores (so the parity above tests them)."""
    tuned, tokenizer = tuned_on(base_folder, method, num_virtual_tokens=5)
    assert context_tokens(tuned.model) == 256 - 5
    prompts, choices = [build_prompt(PROBLEMS[0], "QCM-T").prompt], [PROBLEMS[0].choices]
    with_tokens = option_text_log_probs(tuned.model, tokenizer, prompts, choices)
    del tuned.model.get_decoder  # PEFT's bare decoder again
    assert (option_text_log_probs(tuned.model, tokenizer, prompts, choices) - with_tokens).abs().max() > 1e-3


@pytest.mark.parametrize("method", FOLDER_METHODS)
def test_a_method_folder_reloads_with_equal_logits(base_folder, tmp_path, method):
    """save_method_folder then load_answering on the same base (full: the folder is the base) gives bit-equal logits,
    PEFT's folder is PEFT's own (PeftModel.from_pretrained loads it too), and mm_adapter.json records the method, its
    sizes and the base it was made from."""
    tuned, tokenizer = tuned_on(base_folder, method)
    folder = save_method_folder(tuned, tmp_path / "saved", "QCM-T", tokenizer)
    ids = tokenizer(build_prompt(PROBLEMS[2], "QCM-T").prompt).input_ids
    loaded, _, visual = load_answering(str(base_folder), method, folder, "cpu", "fp32", say=lambda line: None)
    assert visual is None and torch.equal(full_logits(loaded, ids), full_logits(tuned.model, ids))
    written = json.loads((folder / RECORD_NAME).read_text())
    assert written["method"] == method and written["sizes"] == tuned.sizes
    assert written["base_model_spec"] == str(base_folder)
    assert written["trainable_parameters"]["total"] == tuned.trainable
    if method in PEFT_METHODS:
        peft_model = PeftModel.from_pretrained(load_base(str(base_folder), dtype="fp32")[0], folder).eval()
        torch.testing.assert_close(full_logits(peft_model, ids), full_logits(tuned.model, ids), atol=0, rtol=0)


def test_defaults_match_ours_on_a_smollm2_shaped_base():
    """With sizes unset, each method's trainable count on SmolLM2-135M's shape is the nearest to ours with 10 x 30
    (173,070): PEFT AdaptionPrompt 172,830, LoRA rank 3 on q_proj,v_proj 172,800, prompt tuning 300 tokens and prefix
    tuning 15 tokens 172,800 each; full trains all 134,515,008; the documented larger LoRA (rank 16, all-linear)
    4,884,480; LLaMA-Adapter V2 ours plus a bias and scale on every linear layer's 5,184 outputs in 30 layers (311,040)
    and 61 norm weights of 576 (35,136): 519,246. Counted on the meta device (no weights)."""
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    with torch.device("meta"):
        smollm2 = LlamaForCausalLM(config)
    counts = {method: count_for(smollm2, TuningConfig(method=method), AdapterConfig()) for method in METHODS}
    assert counts == {LLAMA_ADAPTER: 173_070, LLAMA_ADAPTER_V2: 519_246, "peft-adaption-prompt": 172_830,
                      LORA: 172_800, PROMPT_TUNING: 172_800, PREFIX_TUNING: 172_800, FULL: 134_515_008}
    larger = TuningConfig(method=LORA, lora_rank=16, lora_targets="all-linear")
    assert count_for(smollm2, larger, AdapterConfig()) == 4_884_480


def test_each_size_option_sets_what_peft_builds(base_folder):
    """--lora-rank, --lora-alpha (default 2 x rank), --lora-targets and --num-virtual-tokens reach PEFT's model:
    counts scale with rank and tokens, the scaling is alpha/rank, only the named modules get LoRA."""
    one, _ = tuned_on(base_folder, LORA, lora_rank=1)
    two, _ = tuned_on(base_folder, LORA, lora_rank=2, lora_alpha=3.0, lora_targets="k_proj")
    assert one.sizes == {"lora_rank": 1, "lora_alpha": 2.0, "lora_targets": "q_proj,v_proj"}
    layer = two.model.get_base_model().model.layers[0].self_attn
    assert layer.k_proj.scaling["default"] == 1.5 and not hasattr(layer.q_proj, "lora_A")
    assert one.trainable == 4 * (128 + 96) and two.trainable == 2 * 4 * (64 + 32)
    for method, per_token in ((PROMPT_TUNING, 64), (PREFIX_TUNING, 4 * 2 * 32)):
        assert tuned_on(base_folder, method, num_virtual_tokens=7)[0].trainable == 7 * per_token


def one_line_exit_2(argv: list[str], capsys, *needles: str) -> None:
    code, _, err = command_here(argv, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert all(needle in err for needle in needles), err


def test_options_of_another_method_are_refused_in_one_line(alpaca, tmp_path, capsys):
    """A size option set for a method it does not size (--lora-rank with llama-adapter, --num-virtual-tokens with
    lora, --lora-alpha with full) and --images with a method other than ours: one line naming the flag, exit 2,
    no folder; in library code the same ConfigError."""
    base, records_file = alpaca
    common = ["train", "alpaca", *arguments(base, records_file, tmp_path / "no")]
    one_line_exit_2([*common, "--lora-rank", "4"], capsys, "--lora-rank", "lora", "llama-adapter")
    one_line_exit_2([*common, "--method", "lora", "--num-virtual-tokens", "5"], capsys, "--num-virtual-tokens")
    one_line_exit_2([*common, "--method", "full", "--lora-alpha", "8"], capsys, "--lora-alpha", "full")
    one_line_exit_2(["train", "scienceqa", "--data", str(tmp_path), "--out", str(tmp_path / "no"), "--images",
                     "--method", "prefix-tuning"], capsys, "--images", "prefix-tuning")
    assert not (tmp_path / "no").exists()
    with pytest.raises(ConfigError, match="lora_targets: applies to --method lora, not prompt-tuning"):
        TuningConfig(method=PROMPT_TUNING, lora_targets="q_proj")


def test_peft_missing_is_one_line(alpaca, base_folder, tmp_path, capsys, monkeypatch):
    """Without the peft package a PEFT method is refused before any work (one line naming --method and peft, exit 2),
    and a PEFT folder is not loaded (one line); ours and full need no PEFT."""
    tuned, _ = tuned_on(base_folder, LORA)
    folder = save_method_folder(tuned, tmp_path / "lora", "QCM-T")
    monkeypatch.setattr(method_config, "peft_installed", lambda: False)
    monkeypatch.setattr(methods, "peft_installed", lambda: False)
    base, records_file = alpaca
    one_line_exit_2(["train", "alpaca", *arguments(base, records_file, tmp_path / "no"), "--method", "lora"], capsys,
                    "--method", "PEFT", "peft")
    with pytest.raises(MMAdapterError, match="need the peft package"):
        load_answering(str(base_folder), LORA, folder, "cpu")
    TuningConfig(method=FULL)


def test_peft_refusals_are_one_line(base_folder, tmp_path):
    """LoRA targets the base lacks, a PEFT folder loaded on another base, and a method folder where only our adapters
    are taken: one line each, naming what is wrong."""
    model, _ = load_base(str(base_folder))
    with pytest.raises(MMAdapterError, match=r"^--method lora: PEFT cannot build it on this base \(.*nope") as error:
        attach_method(model, TuningConfig(method=LORA, lora_targets="nope"), ADAPTER)
    assert "\n" not in str(error.value)
    tuned, _ = tuned_on(base_folder, PREFIX_TUNING)
    folder = save_method_folder(tuned, tmp_path / "prefix", "QCM-T")
    other = tmp_path / "other"
    tiny_model("llama-mha", vocab_size=make_tokenizer().vocab_size).save_pretrained(other)
    make_tokenizer().save_pretrained(other)
    with pytest.raises(MMAdapterError, match=r"made for .*4/2 heads.* but this base is .*4/4 heads"):
        load_answering(str(other), PREFIX_TUNING, folder, "cpu")
    with pytest.raises(MMAdapterError, match=r"a prefix-tuning folder \(mm_adapter.json\), not a LLaMA-Adapter"):
        resolve_adapter(folder)  # what convert, push and from_pretrained take


def test_generate_and_demo_load_a_method_folder(base_folder, tmp_path, capsys):
    """generate --adapter FOLDER answers as PEFT's own model loaded from the folder does; a method folder beside
    another adapter is refused in one line (it cannot be switched); the demo predictor answers in the recorded
    format with the method on."""
    from mm_adapter.demo.predictor import Predictor

    tuned, tokenizer = tuned_on(base_folder, PROMPT_TUNING)
    folder = save_method_folder(tuned, tmp_path / "prompt", "QCM-T")
    sampling = SamplingConfig(max_new_tokens=4, temperature=0)
    config = GenerateConfig(adapter=[str(folder)], instruction="Is ice cold?",
                            model=ModelOptions(base=str(base_folder)), sampling=sampling)
    answer = generate(config).answers[0]
    peft_model = PeftModel.from_pretrained(load_base(str(base_folder))[0], folder).eval()
    assert answer == generate_text(peft_model, tokenizer, prompt_text(tokenizer, "Is ice cold?", ""), sampling,
                                   add_special_tokens=False)
    with pytest.raises(MMAdapterError, match="a prompt-tuning adapter is given alone"):
        generate(GenerateConfig(adapter=[str(folder), str(folder)], instruction="x",
                                model=ModelOptions(base=str(base_folder))))
    predictor = Predictor.load(str(base_folder), str(folder))
    assert predictor.fmt == PromptFormat.QCM_T and predictor.adapter_name == "prompt"
    problem = PROBLEMS[0]
    expected = torch.softmax(torch.tensor(explicit_cloze(peft_model, tokenizer, build_prompt(problem, "QCM-T").prompt,
                                                         problem.choices)), dim=-1)
    got = predictor.predict(None, problem.question, problem.choices, problem.hint).probabilities
    torch.testing.assert_close(torch.tensor(got), expected, atol=1e-5, rtol=1e-5)
