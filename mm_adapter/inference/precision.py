"""The precision inference runs in: bf16 autocast over weights of any dtype, and frozen weights cast once for it.

Under CPU autocast every ``F.linear`` casts its fp32 weight to bf16 again at each call (autocast caches casts only
of weights that require grad), which for a frozen base is the same cast thousands of times over an evaluation.
:func:`frozen_linear_weights_in_bf16` makes that cast once for the enclosed calls and puts the fp32 weights back
after: autocast then finds bf16 weights and casts nothing, and every result is bit-identical, since autocast would
have computed the same bf16 weights and the same bf16 matmuls (embeddings and norms keep their fp32 weights, so
the residual stream keeps its precision; a tied LM head gets its own copy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def precision(model, bf16: bool):
    """bf16 autocast on the model's device (a no-op when off); the weights keep their dtype."""
    return torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16)


@contextlib.contextmanager
def frozen_linear_weights_in_bf16(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """For the enclosed calls under bf16 autocast on CPU, the model's frozen fp32 linear weights as bf16 copies,
    made once (see the module's docstring); a no-op when off, on other devices (where weights are usually loaded
    in bf16 already, and a second copy of a large model may not fit) or for weights that train."""
    swapped = [(module, module.weight) for module in model.modules()
               if isinstance(module, nn.Linear) and module.weight.dtype == torch.float32
               and not module.weight.requires_grad and module.weight.device.type == "cpu"] if enabled else []
    copies: dict[int, nn.Parameter] = {}  # one copy per weight: tied weights stay tied
    try:
        for module, weight in swapped:
            module.weight = copies.setdefault(id(weight), nn.Parameter(weight.detach().to(torch.bfloat16),
                                                                       requires_grad=False))
        yield
    finally:
        for module, weight in swapped:
            module.weight = weight
