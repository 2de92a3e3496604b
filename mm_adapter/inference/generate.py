"""A thin layer over transformers' ``generate``: KV cache, sampling defaults of the original, streaming.

The adapter needs nothing special here: its prompt keys/values are projected at prefill and
reused for every cached decoding step (see ``adapter.py``).
"""

from __future__ import annotations

import torch
from transformers import TextStreamer

from mm_adapter.inference.config import SamplingConfig


@torch.no_grad()
def generate_text(model, tokenizer, prompt: str, sampling: SamplingConfig = SamplingConfig(),
                  stream: bool = False, add_special_tokens: bool = True) -> str:
    """Generate a continuation of ``prompt`` and return only the new text (printed as it comes if ``stream``)."""
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special_tokens).to(model.device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    output = model.generate(**inputs, **sampling.generate_kwargs(), streamer=streamer,
                            pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def chat_prompt(tokenizer, message: str) -> str:
    """Wrap a user message in the tokenizer's chat template when it has one (instruct models)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
    return message
