"""LoRA adapters folded into the base weights for generation, with the base weights restored bit for bit.

Unmerged LoRA costs two extra small matrix products per adapted layer and decoding step. Folding the adapters into
the weights (``W + s * B @ A``) for the rollout's generation and taking them out again afterwards removes that cost,
but ``(W + D) - D`` is not always ``W`` in floating point: repeated merge/unmerge (as ``peft``'s ``merge_adapter`` /
``unmerge_adapter`` do) lets the frozen base, which is also the reference policy, drift by rounding. Here every
weight whose round trip would not be exact is recorded (index and original value) when merging and written back
after unmerging, so the base weights after generation are exactly those before it. Layers where more than
``max_fixups`` of the weights would need a fix-up (an adapter as large as the weights themselves) stay unmerged.

Only plain ``peft`` LoRA ``Linear`` layers over a floating-point ``nn.Linear`` are merged (no DoRA or other variants,
no LoRA bias, no quantized base layers: those keep their adapters unmerged).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["merged_lora_adapters", "MergeResult"]

_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@dataclass
class _MergedLayer:
    layer: nn.Module
    adapters: list[str]
    fixup_index: torch.Tensor  # flat indices of weights whose round trip is not exact
    fixup_value: torch.Tensor  # their original values
    checksum: torch.Tensor  # sum of the original weights' bit patterns, checked after the restore


@dataclass
class MergeResult:
    """What :func:`merged_lora_adapters` did: ``layers`` merged, and after the context whether the restore was
    ``exact`` (``False`` only if recomputing an adapter's delta gave different bits: a non-deterministic kernel)."""

    layers: int = 0
    exact: bool = True


def _checksum(weight: torch.Tensor) -> torch.Tensor:
    return weight.view(_INT_VIEW[weight.dtype]).sum(dtype=torch.int64)


def _mergeable_adapters(layer: nn.Module) -> list[str]:
    """The active adapters of a plain LoRA ``Linear`` layer that can be merged exactly-reversibly (else ``[]``)."""
    from peft.tuners.lora import Linear as LoraLinear

    if not isinstance(layer, LoraLinear) or layer.disable_adapters or layer.merged:
        return []
    base = layer.get_base_layer()
    if type(base) is not nn.Linear or base.weight.dtype not in _INT_VIEW or not base.weight.is_contiguous():
        return []
    adapters = plain_active_adapters(layer)
    if adapters is None or any(has_adapter_dropout(layer, adapter) for adapter in adapters):
        return []  # dropout only matters in training mode, but keep the generation path obviously equal
    return adapters


def plain_active_adapters(layer: nn.Module) -> list[str] | None:
    """The active adapters of a ``peft`` LoRA layer, or ``None`` if one of them is more than ``s * B @ A`` (a
    variant such as DoRA, or a LoRA bias): only plain adapters fold into a weight matrix."""
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    for adapter in adapters:
        if adapter in getattr(layer, "lora_variant", {}) or layer.lora_bias.get(adapter, False):
            return None
    return adapters


def has_adapter_dropout(layer: nn.Module, adapter: str) -> bool:
    """Whether ``adapter`` of a LoRA layer drops out its input (when the layer is in training mode)."""
    dropout = layer.lora_dropout[adapter]
    return not isinstance(dropout, nn.Identity) and dropout.p > 0


def adapter_delta(layer: nn.Module, adapters: list[str]) -> torch.Tensor:
    """``sum(s * B @ A)`` over ``adapters`` of a LoRA layer (``peft``'s ``get_delta_weight``), in the base weight's
    dtype."""
    delta = None
    for adapter in adapters:
        part = layer.get_delta_weight(adapter)
        delta = part if delta is None else delta + part
    return delta.to(layer.get_base_layer().weight.dtype)


@contextlib.contextmanager
@torch.no_grad()
def merged_lora_adapters(model: nn.Module, max_fixups: float = 0.1) -> Iterator[MergeResult]:
    """Within the context, the active LoRA adapters of ``model`` are folded into its base weights.

    Args:
        model: A ``peft`` model (or any module containing ``peft`` LoRA layers).
        max_fixups: Largest fraction of a layer's weights that may need a fix-up; layers above it stay unmerged.
            A fix-up is kept as an index and a value (8 bytes with float32 weights) until the restore. The fraction
            is about the fraction of weights smaller than their adapter delta: ~7 % for a delta of 4 % of the
            weights' mean magnitude.

    Yields:
        A :class:`MergeResult`. On exit (also on an exception) the adapters are unmerged and every base weight is
        bit-identical to its value before the context; each layer's restore is checked against a checksum of its
        original bits (``MergeResult.exact``).
    """
    result = MergeResult()
    merged: list[_MergedLayer] = []
    try:
        for layer in model.modules():
            adapters = _mergeable_adapters(layer)
            if not adapters:
                continue
            weight = layer.get_base_layer().weight
            int_dtype = _INT_VIEW[weight.dtype]
            delta = adapter_delta(layer, adapters)
            merged_weight = weight + delta
            round_trip = merged_weight - delta
            wrong = (round_trip.view(int_dtype) != weight.view(int_dtype)).flatten().nonzero().flatten()
            if wrong.numel() > max_fixups * weight.numel():
                continue
            values = weight.flatten()[wrong].clone()
            index = wrong.to(torch.int32) if weight.numel() < 2**31 else wrong
            record = _MergedLayer(layer, adapters, index, values, _checksum(weight))
            weight.copy_(merged_weight)
            merged.append(record)
            layer.merged_adapters = list(adapters)
            del delta, merged_weight, round_trip
        result.layers = len(merged)
        yield result
    finally:
        for record in reversed(merged):
            layer = record.layer
            weight = layer.get_base_layer().weight
            weight.sub_(adapter_delta(layer, record.adapters))
            weight.view(-1)[record.fixup_index.long()] = record.fixup_value
            layer.merged_adapters = []
            if not torch.equal(_checksum(weight), record.checksum):
                result.exact = False
