"""Adapter training step on a 7B-shaped LLaMA on one GPU: tokens/s and model-FLOPs utilisation vs PEFT.

No 7B weights are needed (or downloaded): the LLaMA-7B architecture (32 layers, hidden 4096, MLP
11008, 32 heads, vocab 32000) is built on the meta device and materialised directly on the GPU in
bf16 with random N(0, 0.02) weights (norms 1, rotary tables recomputed). Random weights cost the
same FLOPs as real ones. Then, on that one model in turn: our adapter (10 x 30), the frozen base
(forward + activation backward, no adapter) and PEFT AdaptionPrompt (same adapter_len/layers, run
as its users run it: ``model(**batch, labels=...)``, logits everywhere); each under bf16 autocast
like the trainer, ``--warmup`` untimed then the median of ``--repeats`` CUDA-synchronised steps.

Model FLOPs of one step (the same numerator for every variant, so MFU ratios are speed ratios):
forward + activation backward of the frozen body, 4 * N_body per token (frozen weights need no
weight gradient, so not the usual 6 * N), attention 12 * layers * hidden * seq per token (QK^T and
PV, full square as in PaLM's accounting; backward twice the forward), and the LM head over the
labelled positions only (4 * vocab * hidden each). MFU = model FLOPs / step time / ``--peak-tflops``
(default from the device name: H100/H200 SXM 989, H100 PCIe 756 dense bf16 TFLOP/s).
Sized to finish in well under 5 minutes on one H100 (about 13.5 GB of weights; batch 4 x 512).
``--tiny``: a 4-layer toy on CPU through the same code (the test suite runs it; no GPU needed).
Run: .venv/bin/python -m bench.gpu_7b [--batch 4 --seq 512 --repeats 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench.common import emit, header
from bench.steps import build_step
from mm_adapter import detach_adapter
from mm_adapter.training.batches import IGNORE_INDEX

LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=256, rms_norm_eps=1e-6)
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}
COLUMNS = ["variant", "step_s", "tokens_per_s", "model_tflops", "mfu", "peak_mem_gb", "trainable"]


def model_config(tiny: bool, layers: int | None = None) -> LlamaConfig:
    """LLaMA-7B's shape (or the toy's), with ``layers`` decoder layers instead of all of them where given."""
    shape = TINY if tiny else LLAMA_7B
    config = LlamaConfig(**{**shape, "num_hidden_layers": min(layers or shape["num_hidden_layers"],
                                                              shape["num_hidden_layers"])})
    config._attn_implementation = "sdpa"
    return config


def materialise(config: LlamaConfig, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> LlamaForCausalLM:
    """Build on the meta device (no host memory), allocate on ``device``, fill with random weights."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    model.model.rotary_emb = type(model.model.rotary_emb)(config).to(device)  # its buffers were left empty
    model.requires_grad_(False)
    return model


def step_flops(config: LlamaConfig, batch: int, seq: int, labelled: int, weight_grads: bool = False) -> float:
    """Useful FLOPs of one adapter training step (see the module docstring); ``weight_grads``: full fine-tuning,
    whose backward also computes every weight's gradient (6 instead of 4 FLOPs per parameter and token)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    kv = d * config.num_key_value_heads // config.num_attention_heads
    body = layers * (2 * d * d + 2 * d * kv + 3 * d * config.intermediate_size)
    tokens = batch * seq
    per_parameter = 6.0 if weight_grads else 4.0
    return (per_parameter * body * tokens + 12.0 * layers * d * seq * tokens
            + per_parameter * config.vocab_size * d * labelled)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


def make_batch(config: LlamaConfig, batch: int, seq: int, label_fraction: float, device: torch.device) -> dict:
    """Random tokens; labels on the last ``label_fraction`` of every row (an Alpaca-like response)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
    labels = ids.clone()
    labels[:, : seq - max(1, int(seq * label_fraction))] = IGNORE_INDEX
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    out = {k: v.to(device) for k, v in out.items()}
    out["n_labels"] = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return out


def time_step(step, batch: dict, device: torch.device, warmup: int, repeats: int) -> tuple[float, float | None]:
    """Median seconds per step and peak allocated memory (GB; CUDA only, else None)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step(batch)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(batch)
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return statistics.median(times), peak


def _release(model, variant: str) -> None:
    """Undo what ``build_step(variant)`` did to a shared model, so the next variant starts from the frozen base."""
    if variant == "ours":
        detach_adapter(model)
    elif variant == "full":
        model.requires_grad_(False)
        model.zero_grad(set_to_none=True)


def run_variants(model, variants, config: LlamaConfig, batch: dict, args: argparse.Namespace, device: torch.device,
                 peak: float | None, adapter_layers: int):
    """Time each variant in place on one model, in order (PEFT wraps the model: put it last); returns the model
    (PEFT-wrapped if it ran) and one row per variant."""
    rows = {}
    for variant in variants:
        model, step = build_step(variant, model, torch.bfloat16, args.adapter_len, adapter_layers, copy_base=False)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        seconds, memory = time_step(step, batch, device, args.warmup, args.repeats)
        flops = step_flops(config, args.batch, args.seq, batch["n_labels"], weight_grads=variant == "full")
        rows[variant] = {"variant": variant, "layers": config.num_hidden_layers, "step_s": seconds,
                         "tokens_per_s": args.batch * args.seq / seconds, "model_tflops": flops / seconds / 1e12,
                         "mfu": flops / seconds / 1e12 / peak if peak else "-",
                         "peak_mem_gb": memory if memory is not None else "-", "trainable": trainable}
        _release(model, variant)
        del step
    return model, rows


def add_shape_args(parser: argparse.ArgumentParser) -> None:
    """The flags this script shares with ``bench.gpu_suite``: the toy switch, the batch and the timing."""
    parser.add_argument("--tiny", action="store_true", help="a 4-layer toy on CPU (smoke test of this script)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--label-fraction", type=float, default=0.5)
    parser.add_argument("--adapter-len", type=int, default=10)
    parser.add_argument("--adapter-layers", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, help="device peak dense bf16 TFLOP/s (default: from its name)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(parser)
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA device; this benchmark needs one GPU (use --tiny for the CPU smoke path)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.tiny else "cuda")
    config = model_config(args.tiny)
    adapter_layers = min(args.adapter_layers, config.num_hidden_layers)
    started = time.perf_counter()
    model = materialise(config, device)
    batch = make_batch(config, args.batch, args.seq, args.label_fraction, device)
    flops = step_flops(config, args.batch, args.seq, batch["n_labels"])
    peak = peak_tflops(device, args.peak_tflops)
    print(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "params": sum(p.numel() for p in model.parameters()), "batch": args.batch, "seq": args.seq,
                      "labelled": batch["n_labels"], "adapter": [args.adapter_len, adapter_layers],
                      "model_tflop_per_step": round(flops / 1e12, 3), "peak_tflops": peak,
                      "materialise_s": round(time.perf_counter() - started, 1)}), flush=True)
    header(COLUMNS)
    # in place on one model: ours is detached before PEFT wraps it
    _, rows = run_variants(model, ("ours", "frozen", "peft"), config, batch, args, device, peak, adapter_layers)
    for row in rows.values():
        emit(row, COLUMNS)
    print(json.dumps({"ours_over_peft": rows["ours"]["step_s"] / rows["peft"]["step_s"],
                      "ours_over_frozen": rows["ours"]["step_s"] / rows["frozen"]["step_s"],
                      "total_s": round(time.perf_counter() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
