"""The main job on its embedded default: load SmolLM2-135M, attach a LLaMA-Adapter, answer one prompt.

Later stages (ScienceQA training, tables, the demo) extend this entry point.
"""

from __future__ import annotations

import argparse
import time

from _cli import run

from mm_adapter import AdapterConfig, attach_adapter, count_trainable, load_adapter, load_base
from mm_adapter.generate import SamplingConfig, chat_prompt, generate_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m", help="base model spec (see mm_adapter.load_base)")
    parser.add_argument("--adapter", help="an adapter file to load instead of a fresh zero-init adapter")
    parser.add_argument("--adapter-len", type=int, default=10)
    parser.add_argument("--adapter-layers", type=int, default=30)
    parser.add_argument("--prompt", default="Name three primary colors.")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model, tokenizer = load_base(args.base)
    print(f"base: {args.base} ({type(model).__name__}, {model.config.num_hidden_layers} layers, "
          f"hidden {model.config.hidden_size}) loaded in {time.perf_counter() - start:.1f} s")
    if args.adapter:
        load_adapter(model, args.adapter)
    else:
        layers = min(args.adapter_layers, model.config.num_hidden_layers)
        attach_adapter(model, AdapterConfig(adapter_len=args.adapter_len, adapter_layers=layers))
    print(f"trainable adapter parameters: {count_trainable(model):,}")
    print(f"prompt: {args.prompt}")
    print("answer: ", end="", flush=True)
    generate_text(model, tokenizer, chat_prompt(tokenizer, args.prompt),
                  SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0), stream=True)
    return 0


if __name__ == "__main__":
    run(main)
