"""Convert an adapter between the official LLaMA-Adapter v1 release, PEFT, litgpt and our format.

    python scripts/convert_adapter.py --from official --to ours --base /models/llama-7b-meta \\
        llama_adapter_len10_layer30_release.pth runs/official.safetensors
    python scripts/convert_adapter.py --from peft --to ours --base meta-llama/Llama-2-7b-hf peft_folder/ a.safetensors
    python scripts/convert_adapter.py --from ours --to peft --base smollm2-135m a.safetensors peft_folder/

The base (any ``load_base`` spec) gives the shapes every tensor is checked against and the
fingerprint our files carry. Foreign pickles are read with ``weights_only=True`` (never code);
everything written is safetensors. An existing OUTPUT is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import run  # noqa: E402

from mm_adapter import load_base  # noqa: E402
from mm_adapter.config import GATE_ACTIVATIONS  # noqa: E402
from mm_adapter.interop import SOURCES, TARGETS, check_output, convert  # noqa: E402
from mm_adapter.interop.official import DEFAULT_ADAPTER_LEN  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", choices=SOURCES, required=True, help="format of INPUT")
    parser.add_argument("--to", dest="target", choices=TARGETS, required=True, help="format of OUTPUT")
    parser.add_argument("--base", required=True, help="base model spec (see mm_adapter.load_base)")
    parser.add_argument("--adapter-len", type=int, default=None,
                        help=f"official only: prompts per layer (not stored in the file; default {DEFAULT_ADAPTER_LEN})")
    parser.add_argument("--official-gate", choices=GATE_ACTIVATIONS, default=None,
                        help="official only: identity = its inference code (default), tanh = its training code")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    parser.add_argument("input", help="foreign file (official, litgpt, ours) or PEFT folder")
    parser.add_argument("output", help="our .safetensors file, or a PEFT folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = {}
    if args.adapter_len is not None:
        options["adapter_len"] = args.adapter_len
    if args.official_gate is not None:
        options["gate_activation"] = args.official_gate
    output = check_output(args.output, args.overwrite)  # before minutes of base loading
    model, _ = load_base(args.base)
    written = convert(model, args.source, args.input, args.target, output, overwrite=args.overwrite, **options)
    print(f"wrote {written} ({args.source} -> {args.target})")
    return 0


if __name__ == "__main__":
    run(main)
