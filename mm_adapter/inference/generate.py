"""A thin layer over transformers' ``generate``: KV cache, sampling defaults of the original, streaming.

The adapter needs nothing special here: its prompt keys/values are projected at prefill and
reused for every cached decoding step (see ``adapter.py``).
"""

from __future__ import annotations

import torch
from transformers import TextStreamer

from mm_adapter.errors import MMAdapterError
from mm_adapter.inference.config import SamplingConfig
from mm_adapter.model.family import text_config


@torch.no_grad()
def generate_text(model, tokenizer, prompt: str, sampling: SamplingConfig = SamplingConfig(),
                  stream: bool = False, add_special_tokens: bool = True) -> str:
    """Generate a continuation of ``prompt`` and return only the new text (printed as it comes if ``stream``).

    At most ``sampling.max_new_tokens`` tokens, and never past the model's context (``max_position_embeddings``):
    a base without an end token would otherwise run on to the requested count, past the positions it was trained
    on. A prompt that leaves no room is one line."""
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens).to(model.device)
    kwargs = sampling.generate_kwargs()
    length = inputs["input_ids"].shape[1]
    context = getattr(text_config(model.config), "max_position_embeddings", None)
    if context is not None:
        if length >= context:
            raise MMAdapterError(f"the prompt takes {length} tokens, the whole context of the model "
                                 f"({context} tokens); nothing can be generated; shorten the instruction")
        kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], context - length)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    output = model.generate(**inputs, **kwargs, streamer=streamer, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def chat_prompt(tokenizer, message: str) -> str:
    """Wrap a user message in the tokenizer's chat template when it has one (instruct models)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
    return message
