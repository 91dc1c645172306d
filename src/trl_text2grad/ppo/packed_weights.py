"""Linear layers run on oneDNN with pre-packed weights while sampling on a CPU.

A decoding step multiplies a handful of rows (the batch) by every weight matrix of the model. On x86 CPUs PyTorch
sends float32 ``F.linear`` to the BLAS library (MKL), which re-packs the weight matrix into its blocked layout on
every call; with 8 rows that packing, not the arithmetic, is most of the cost. On the 2-core AMD machine of
``docs/benchmarks.md``, with 8 rows, a ``1536 x 576`` product took 2.4x as long through MKL as with the same
weights in oneDNN's pre-packed layout, and the ``49152 x 576`` output layer 4x as long. Within
:func:`packed_linear_weights`, every eligible linear layer computes its product with
``torch.ops.mkldnn._linear_pointwise`` on a copy of its weight packed once for the whole context (the copy is
freed on exit). A LoRA layer (``peft``) whose adapters can be folded in is packed with the adapters folded into the
copy (``W + s * B @ A``), so sampling pays neither the adapter products nor a merge of the model's own weights: the
model's parameters are never written.

The products equal the plain ones up to float rounding (a different summation order: relative differences of about
1e-6); ``tests/test_packed_weights.py`` checks logits and greedy tokens. Inference only: the packed forward has no
gradient, so with autograd on (or when a LoRA layer's adapters are switched after packing) a layer runs its own
forward.

Eligible: ``nn.Linear`` layers (and plain ``peft`` LoRA ``Linear`` layers over them) with float32 or bfloat16
weights on the CPU, when PyTorch has oneDNN. Everything else (quantized layers, DoRA and other LoRA variants, LoRA
dropout, other devices) keeps its own forward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .merging import adapter_delta, has_adapter_dropout, plain_active_adapters

__all__ = ["PackResult", "packed_linear_weights", "packed_linear_available"]

_DTYPES = (torch.float32, torch.bfloat16)


@dataclass
class PackResult:
    """What :func:`packed_linear_weights` did: ``layers`` packed, of which ``lora_layers`` with adapters folded in,
    and ``packed_bytes`` held by the packed copies."""

    layers: int = 0
    lora_layers: int = 0
    packed_bytes: int = 0


def packed_linear_available() -> bool:
    """Whether this PyTorch build can run pre-packed linear layers (oneDNN on the CPU)."""
    return bool(
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _eligible_linear(layer: nn.Module) -> bool:
    weight = getattr(layer, "weight", None)
    return (
        type(layer) is nn.Linear
        and isinstance(weight, torch.Tensor)
        and weight.device.type == "cpu"
        and weight.dtype in _DTYPES
        and weight.dim() == 2
    )


def _is_lora_layer(layer: nn.Module) -> bool:
    """Any ``peft`` LoRA layer (plain, quantized, embedding, ...): its adapter layers are never packed alone."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft is optional
        return False
    return isinstance(layer, LoraLayer)


def _foldable_lora_adapters(layer: nn.Module) -> list[str] | None:
    """Active adapters of a plain ``peft`` LoRA ``Linear`` over an eligible ``nn.Linear`` (``[]``: adapters off),
    or ``None`` when the layer must keep its own forward."""
    from peft.tuners.lora import Linear as LoraLinear

    if not isinstance(layer, LoraLinear) or not _eligible_linear(layer.get_base_layer()) or layer.merged:
        return None
    if layer.disable_adapters:
        return []
    adapters = plain_active_adapters(layer)
    if adapters is None or (layer.training and any(has_adapter_dropout(layer, a) for a in adapters)):
        return None  # a variant or bias, or dropout on the adapter input in training mode: not a fixed weight
    return adapters


def _adapter_state(layer: nn.Module) -> tuple | None:
    """What decides a LoRA layer's weight (``None`` for a plain linear layer)."""
    if not _is_lora_layer(layer):
        return None
    return bool(layer.disable_adapters), tuple(layer.active_adapters), bool(layer.merged)


def _packed_forward(layer: nn.Module, packed: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
    fallback = type(layer).forward.__get__(layer)
    state = _adapter_state(layer)

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != dtype or args or kwargs or _adapter_state(layer) != state:
            # autograd, an unexpected call or adapters switched since packing: the layer's own forward
            return fallback(x, *args, **kwargs)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return forward


def _folded_weight(
    layer: nn.Module, weight: torch.Tensor, adapters: list[str], scratch: dict[torch.dtype, torch.Tensor]
) -> torch.Tensor:
    """``W + sum(s * B @ A)`` over ``adapters``, in a scratch buffer that the next layer overwrites (it is packed
    before that). One adapter of the weight's dtype without ``fan_in_fan_out`` (the usual case): one ``addmm``;
    otherwise :func:`~trl_text2grad.ppo.merging.adapter_delta` (``peft``'s own ``get_delta_weight``)."""
    if not adapters:
        return weight
    buffer = scratch.get(weight.dtype)
    if buffer is None or buffer.numel() < weight.numel():
        buffer = scratch[weight.dtype] = torch.empty(weight.numel(), dtype=weight.dtype)
    out = buffer[: weight.numel()].view(weight.shape)
    lora_a, lora_b = layer.lora_A[adapters[0]].weight, layer.lora_B[adapters[0]].weight
    if len(adapters) == 1 and not layer.fan_in_fan_out and lora_a.dtype == lora_b.dtype == weight.dtype:
        return torch.addmm(weight, lora_b, lora_a, alpha=layer.scaling[adapters[0]], out=out)
    return torch.add(weight, adapter_delta(layer, adapters), out=out)


@contextlib.contextmanager
@torch.no_grad()
def packed_linear_weights(model: nn.Module, batch_size: int = 8) -> Iterator[PackResult]:
    """Within the context, eligible linear layers of ``model`` run on pre-packed copies of their weights.

    Args:
        model: Any module (a ``transformers`` model, a ``peft`` model).
        batch_size: Rows per call the packing is tuned for (the decoding batch); other row counts work too.

    Yields:
        A :class:`PackResult`. On exit (also on an exception) every layer gets its own forward back and the packed
        copies are freed. The model's parameters are read, never written. Without oneDNN the context does nothing.
    """
    result = PackResult()
    patched: list[nn.Module] = []
    if not packed_linear_available():
        yield result
        return
    scratch: dict[torch.dtype, torch.Tensor] = {}  # one buffer for the folded weights, reused layer after layer
    try:
        inside_lora: set[int] = set()  # the adapter layers (and folded bases) of LoRA layers: never packed alone
        for layer in model.modules():
            if id(layer) in inside_lora:
                continue
            if _is_lora_layer(layer):
                base = layer.get_base_layer()
                adapters = _foldable_lora_adapters(layer)
                # folded: the whole layer is packed here; else its base is packed on its own when reached
                inside_lora.update(id(sub) for sub in layer.modules() if adapters is not None or sub is not base)
                if adapters is None:
                    continue
                weight = _folded_weight(layer, base.weight, adapters, scratch)
                result.lora_layers += bool(adapters)
            elif _eligible_linear(layer):
                base = layer
                weight = layer.weight
            else:
                continue
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_size)
            bias = None if base.bias is None else base.bias.detach()
            layer.forward = _packed_forward(layer, packed, bias, weight.dtype)
            patched.append(layer)
            result.layers += 1
            result.packed_bytes += weight.numel() * weight.element_size()
        yield result
    finally:
        for layer in patched:
            del layer.forward  # the instance attribute: the class's forward applies again
