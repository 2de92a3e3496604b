"""Answering multiple-choice prompts with a causal LM: option-letter scoring and greedy generation.

Scoring feeds ``prompt + " The answer is"`` and reads the next-token log-probabilities of the
option letters. The letter token is found by tokenising exactly what training sees,
``prompt + " The answer is X."``, and taking the token right after the shared prefix, so the
scored token is the one the adapter was trained to produce (for SmolLM2/Llama tokenizers: " A").
A tokenizer whose prefix tokens change when the letter follows, or whose letters share their first
token, is refused with a one-line error (use generate mode there) rather than scored wrongly.

Both work on a list of prompts in one batch; the caller chooses the batch size. ``offsets`` is an
optional (batch, hidden) tensor added to the adaption prompts (the multimodal path).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from mm_adapter.errors import MMAdapterError
from mm_adapter.model.adapter import prompt_offset
from mm_adapter.model.attention import custom_mask
from mm_adapter.scienceqa.prompts import ANSWER_PREFIX, PromptFormat, option_letters, stated_answer

SCORED_SUFFIX = " " + ANSWER_PREFIX


@dataclass(frozen=True)
class ScoredPrompt:
    """Token ids of ``prompt + " The answer is"`` and of each option letter that would follow it."""

    input_ids: list[int]
    letter_ids: list[int]


def encode_scored(tokenizer, prompts: Sequence[str], n_options: Sequence[int]) -> list[ScoredPrompt]:
    """Tokenise the scored text and find the letter tokens as training tokenises the target."""
    heads = [prompt + SCORED_SUFFIX for prompt in prompts]
    fulls = [f"{head} {letter}." for head, n in zip(heads, n_options) for letter in option_letters(n)]
    head_ids = tokenizer(heads).input_ids
    full_ids = iter(tokenizer(fulls).input_ids)
    encoded = []
    for head, ids, n in zip(heads, head_ids, n_options):
        letters = []
        for letter, full in zip(option_letters(n), full_ids):
            if full[: len(ids)] != ids or len(full) <= len(ids):
                raise MMAdapterError(f"tokenizer merges {SCORED_SUFFIX!r} with the following ' {letter}', so "
                                     "the letter token is not well defined; use generate mode")
            letters.append(full[len(ids)])
        if len(set(letters)) != n:
            raise MMAdapterError("tokenizer does not give the option letters distinct first tokens after "
                                 f"{SCORED_SUFFIX!r} ({letters}); use generate mode")
        encoded.append(ScoredPrompt(ids, letters))
    return encoded


def _offset_context(model, offsets: torch.Tensor | None):
    return contextlib.nullcontext() if offsets is None else prompt_offset(model, offsets.to(model.device))


@torch.no_grad()
def last_token_logits(model, sequences: Sequence[Sequence[int]], offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Float32 next-token logits (batch, vocab) after each sequence.

    Right padding keeps every real token's positions and attention exactly as unbatched; the
    decoder runs on the whole batch and ``lm_head`` only on each row's last real position.
    """
    device = model.device
    ids, mask = padded(sequences, device)
    with _offset_context(model, offsets):
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return head_logits(model, hidden[torch.arange(len(sequences), device=device), mask.sum(1) - 1])


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits of the LM head on the given hidden states only (not the whole sequence)."""
    logits = model.lm_head(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma-2 style models
    return torch.tanh(logits / cap) * cap if cap else logits


def padded(sequences: Sequence[Sequence[int]], device, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded with 0 on ``side`` into one (batch, width) tensor, and the attention mask."""
    lengths = torch.tensor([len(s) for s in sequences], device=device)
    ids = pad_sequence([torch.as_tensor(s, device=device) for s in sequences], batch_first=True, padding_value=0,
                       padding_side=side)
    width = ids.shape[1]
    real = torch.arange(width, device=device) < lengths[:, None]
    return ids, (real if side == "right" else real.flip(-1)).long()


def option_log_probs(model, tokenizer, prompts: Sequence[str], n_options: Sequence[int],
                     offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Full-vocabulary log-probabilities of each option letter after the answer prefix.

    ``prompts`` end at "Answer:" (``build_prompt(...).prompt``). Shape (batch, max n); options a
    question does not have are -inf.
    """
    encoded = encode_scored(tokenizer, prompts, n_options)
    log_probs = torch.log_softmax(last_token_logits(model, [e.input_ids for e in encoded], offsets), dim=-1)
    out = torch.full((len(encoded), max(n_options)), float("-inf"))
    for row, e in enumerate(encoded):
        out[row, : len(e.letter_ids)] = log_probs[row, e.letter_ids].cpu()
    return out


@dataclass(frozen=True)
class _ClozeText:
    """One option's tokens: the first ``shared`` are common to all options of its question (computed
    once), the ones from ``first`` on are its answer text (scored)."""

    ids: list[int]
    owner: int  # the question's row
    index: int  # the option's index in its question
    shared: int
    first: int


def _cloze_texts(tokenizer, prompts: Sequence[str], choices: Sequence[Sequence[str]]) -> list[_ClozeText]:
    texts, owners, indices, bounds = [], [], [], []
    for row, (prompt, options) in enumerate(zip(prompts, choices)):
        for index in range(len(options)):
            texts.append(prompt + " " + stated_answer(options, index, PromptFormat.QCM_T))
            owners.append(row)
            indices.append(index)
            bounds.append(len(prompt + SCORED_SUFFIX))
    encoded = tokenizer(texts, return_offsets_mapping=True)
    firsts = [next(i for i, (_, end) in enumerate(spans) if end > bound)
              for spans, bound in zip(encoded["offset_mapping"], bounds)]
    shared = {}
    for row in range(len(prompts)):  # longest common token prefix of the row's options, up to the scored part
        members = [(ids, first) for ids, first, owner in zip(encoded["input_ids"], firsts, owners) if owner == row]
        length = min(first for _, first in members)
        while length > 1 and any(ids[:length] != members[0][0][:length] for ids, _ in members):
            length -= 1
        shared[row] = length
    return [_ClozeText(ids, owner, index, shared[owner], first)
            for ids, owner, index, first in zip(encoded["input_ids"], owners, indices, firsts)]


@dataclass(frozen=True)
class _OptionTree:
    """One row per question: the tokens its options share, then each option's own tokens, side by side.

    ``allowed`` is the (rows, 1, width, width) attention mask of that layout: a shared token sees the shared tokens
    before it, an option's token sees the shared tokens and its own option's tokens up to itself (never another
    option's), so every option is read exactly as if it ran alone after the prompt, at its own positions.
    ``scored`` lists, per scored token, its (row, column of the state that predicts it, token id, option).
    """

    ids: torch.Tensor
    positions: torch.Tensor
    allowed: torch.Tensor
    scored: tuple[list[int], list[int], list[int], list[int]]


def _option_tree(options: Sequence[_ClozeText], rows: int, device) -> _OptionTree:
    ids, positions, segments = ([[] for _ in range(rows)] for _ in range(3))
    scored: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
    for number, o in enumerate(options):
        row = o.owner
        if not ids[row]:
            ids[row], positions[row], segments[row] = list(o.ids[:o.shared]), list(range(o.shared)), [0] * o.shared
        start = len(ids[row])  # column of the option's first own token
        ids[row] += o.ids[o.shared:]
        positions[row] += range(o.shared, len(o.ids))
        segments[row] += [o.index + 1] * (len(o.ids) - o.shared)
        for token in range(o.first, len(o.ids)):  # predicted by the state after token - 1
            column = token - 1 if token - 1 < o.shared else start + token - 1 - o.shared
            for found, value in zip(scored, (row, column, o.ids[token], number)):
                found.append(value)
    width = max(len(row) for row in ids)
    pad = [width - len(row) for row in ids]
    ids_t = torch.tensor([row + [0] * n for row, n in zip(ids, pad)], device=device)
    positions_t = torch.tensor([row + [0] * n for row, n in zip(positions, pad)], device=device)
    segment = torch.tensor([row + [-1] * n for row, n in zip(segments, pad)], device=device)
    column = torch.arange(width, device=device)
    query_seg, key_seg = segment[:, :, None], segment[:, None, :]
    allowed = (column[None, :] <= column[:, None]) & (key_seg >= 0) & ((key_seg == 0) | (key_seg == query_seg))
    return _OptionTree(ids_t, positions_t, allowed[:, None], scored)


def _tree_mask(model, tree: _OptionTree, dtype: torch.dtype):
    """The prepared mask for the decoder, saying also what the model's sliding-window masks would: one tensor, or
    one per layer type for models that mix full and sliding layers (``config.layer_types``)."""
    config = model.config
    window = getattr(config, "sliding_window", None)
    types = set(getattr(config, "layer_types", None) or ())

    def within(limit: int | None) -> torch.Tensor:
        if not limit:
            return tree.allowed
        return tree.allowed & (tree.positions[:, None, :, None] - tree.positions[:, None, None, :] < limit)

    if "sliding_attention" in types:
        return {kind: custom_mask(config, within(window if kind == "sliding_attention" else None), dtype)
                for kind in types}
    return custom_mask(config, within(None if types else window), dtype)  # Mistral: every layer slides


@torch.no_grad()
def option_text_log_probs(model, tokenizer, prompts: Sequence[str], choices: Sequence[Sequence[str]],
                          offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Cloze scores of a text format (QCM-T): per option, the mean log-probability of the tokens of
    " <option text>." after ``prompt + " The answer is"``. Shape (batch, max n); missing options -inf.

    Each option is tokenised with its prompt as ONE string, as training tokenises the target; the
    scored tokens are those ending after the answer prefix (a token straddling it counts). The mean,
    not the sum, so a long option is not beaten by a short one for its length alone.

    One forward, one row per question: the tokens its options share (the prompt) once, then every option's own
    tokens beside each other, with a mask that lets each option see only the prompt and itself (``_OptionTree``).
    Nothing is padded per option and no cache is copied; the LM head runs only at the scored positions.
    """
    device = model.device
    options = _cloze_texts(tokenizer, prompts, choices)
    tree = _option_tree(options, len(prompts), device)
    mask = _tree_mask(model, tree, model.get_input_embeddings().weight.dtype)
    with _offset_context(model, offsets):
        hidden = model.get_decoder()(input_ids=tree.ids, attention_mask=mask, position_ids=tree.positions,
                                     use_cache=False).last_hidden_state
    rows, columns, targets, owners = (torch.tensor(values, device=device) for values in tree.scored)
    log_probs = torch.log_softmax(head_logits(model, hidden[rows, columns]), dim=-1)
    picked = log_probs.gather(1, targets[:, None]).squeeze(1)
    totals = torch.zeros(len(options), device=device).index_add_(0, owners, picked)
    means = (totals / torch.bincount(owners, minlength=len(options))).cpu()
    result = torch.full((len(prompts), max(len(c) for c in choices)), float("-inf"))
    for o, mean in zip(options, means):
        result[o.owner, o.index] = mean
    return result


def choice_scores(model, tokenizer, prompts: Sequence[str], choices: Sequence[Sequence[str]],
                  fmt: "str | PromptFormat" = PromptFormat.QCM_A, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """What score mode compares, as the format states the answer: letter log-probabilities, or for a
    text format the options' cloze scores. (batch, max n), -inf past a question's options; argmax answers."""
    if PromptFormat.parse(fmt).answers_by_text:
        return option_text_log_probs(model, tokenizer, prompts, choices, offsets)
    return option_log_probs(model, tokenizer, prompts, [len(c) for c in choices], offsets)


def calibrated_scores(model, tokenizer, prompts: Sequence[str], content_free: Sequence[str],
                      choices: Sequence[Sequence[str]], fmt: "str | PromptFormat" = PromptFormat.QCM_A,
                      offsets: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`choice_scores` minus the same options' scores after each question's ``content_free`` prompt, which
    runs without image offsets (the image is content too): a log-probability ratio, so an option the model
    favours whatever it is asked loses that edge. -inf past a question's options, as before."""
    scores = choice_scores(model, tokenizer, prompts, choices, fmt, offsets)
    prior = choice_scores(model, tokenizer, content_free, choices, fmt)
    return torch.where(prior.isfinite(), scores - prior, scores)  # -inf - -inf would be nan


def tokens_needed(tokenizer, prompts: Sequence[str], choices: Sequence[Sequence[str]],
                  fmt: "str | PromptFormat" = PromptFormat.QCM_A, new_tokens: int = 0) -> list[int]:
    """Per prompt, the longest sequence answering it runs through the model: the prompt plus ``new_tokens``
    (generate mode), its longest stated option (a text format) or ``prompt + " The answer is"`` (letters)."""
    if new_tokens:
        return [len(ids) + new_tokens for ids in tokenizer(list(prompts)).input_ids]
    if not PromptFormat.parse(fmt).answers_by_text:
        return [len(ids) for ids in tokenizer([prompt + SCORED_SUFFIX for prompt in prompts]).input_ids]
    texts = [prompt + " " + stated_answer(options, index, PromptFormat.QCM_T)
             for prompt, options in zip(prompts, choices) for index in range(len(options))]
    lengths = iter(len(ids) for ids in tokenizer(texts).input_ids)
    return [max(next(lengths) for _ in options) for options in choices]


def check_context(lengths: Sequence[int], context: int | None, names: Sequence[str]) -> None:
    """Refuse, in one line naming the first, texts longer than the model's context: its positions end there,
    and cutting a prompt would change the question."""
    over = [(name, length) for name, length in zip(names, lengths) if context is not None and length > context]
    if over:
        name, length = over[0]
        more = f" ({len(over)} do not fit)" if len(over) > 1 else ""
        raise MMAdapterError(f"{name}: its prompt and answer take {length} tokens, over the model's context of "
                             f"{context} (max_position_embeddings){more}")


def option_probabilities(model, tokenizer, prompts: Sequence[str], n_options: Sequence[int],
                         offsets: torch.Tensor | None = None) -> list[list[float]]:
    """Per question, the probability of each of its options, renormalised over its n letters."""
    probs = torch.softmax(option_log_probs(model, tokenizer, prompts, n_options, offsets), dim=-1)
    return [row[:n].tolist() for row, n in zip(probs, n_options)]


class _LineEnded(StoppingCriteria):
    """A row is done once its new text holds a newline after some non-blank text."""

    def __init__(self, tokenizer, start: int):
        self.tokenizer, self.start = tokenizer, start

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor(["\n" in text.lstrip() for text in texts], device=input_ids.device)


def answer_line(text: str) -> str:
    """The first non-blank line: where a one-line target ends."""
    return text.strip().split("\n", 1)[0].strip()


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 32,
                    offsets: torch.Tensor | None = None, stop_at_newline: bool = True) -> list[str]:
    """Greedy continuations (new text only) of a left-padded batch, with the KV cache.

    ``stop_at_newline``: every target is one line (lecture newlines are escaped), so a row stops
    at the end of its first non-blank line and only that line is returned; without it small
    models go on to invent the next question and its answer.
    """
    ids, mask = padded(tokenizer(list(prompts)).input_ids, model.device, side="left")
    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos,
                              pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    stop = StoppingCriteriaList([_LineEnded(tokenizer, ids.shape[1])] if stop_at_newline else [])
    with _offset_context(model, offsets):
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, stopping_criteria=stop)
    texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [answer_line(text) if stop_at_newline else text for text in texts]
