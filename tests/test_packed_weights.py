"""Sampling with oneDNN pre-packed weights (``pack_weights_for_generation``) computes what the plain model computes.

Tolerance: logits agree to ``atol = 1e-4`` on tiny random Llamas in float32 (oneDNN and the default BLAS sum in a
different order, so they may differ by rounding only); greedy tokens are equal; parameters are never written.
"""

from __future__ import annotations

import pytest
import torch

from trl_text2grad.ppo.packed_weights import packed_linear_available, packed_linear_weights

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not packed_linear_available(), reason="this PyTorch build has no oneDNN"),
]

TOL = {"atol": 1e-4, "rtol": 1e-4}
IDS = torch.randint(5, 500, (3, 9), generator=torch.Generator().manual_seed(0))


def _bits(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _lora(tiny_llama, scale: float = 0.05, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_llama(seed=4), LoraConfig(r=4, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear")
    )
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


def _no_patched_forward(model: torch.nn.Module) -> bool:
    return all("forward" not in vars(module) for module in model.modules())


def test_packed_plain_model_gives_the_same_logits_and_greedy_tokens(tiny_llama):
    model = tiny_llama(seed=2).eval()
    before = _bits(model)
    with torch.no_grad():
        plain = model(input_ids=IDS).logits
        plain_tokens = model.generate(input_ids=IDS, max_new_tokens=8, do_sample=False, pad_token_id=0)
        with packed_linear_weights(model, batch_size=3) as packed:
            packed_logits = model(input_ids=IDS).logits
            packed_tokens = model.generate(input_ids=IDS, max_new_tokens=8, do_sample=False, pad_token_id=0)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert packed.layers == linears == 15  # 7 per decoder layer x 2 + the output layer
    assert packed.lora_layers == 0
    assert packed.packed_bytes == sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, torch.nn.Linear))
    torch.testing.assert_close(packed_logits, plain, **TOL)
    assert torch.equal(packed_tokens, plain_tokens)
    assert _no_patched_forward(model)
    assert all(torch.equal(before[k], v) for k, v in _bits(model).items())


def test_packed_lora_model_folds_the_adapters_without_writing_the_weights(tiny_llama):
    model = _lora(tiny_llama).eval()
    before = _bits(model)
    with torch.no_grad():
        unmerged = model(input_ids=IDS).logits
        with model.disable_adapter():
            reference = model(input_ids=IDS).logits
        assert not torch.allclose(unmerged, reference, atol=1e-3)  # the adapters matter
        with packed_linear_weights(model) as packed:
            folded = model(input_ids=IDS).logits
            with model.disable_adapter():  # adapters switched off after packing: the layers' own forwards
                switched = model(input_ids=IDS).logits
        with model.disable_adapter(), packed_linear_weights(model) as packed_reference:
            packed_ref = model(input_ids=IDS).logits
    assert packed.layers == 15 and packed.lora_layers == 14  # the output layer has no adapter
    assert packed_reference.lora_layers == 0 and packed_reference.layers == 15
    torch.testing.assert_close(folded, unmerged, **TOL)
    torch.testing.assert_close(packed_ref, reference, **TOL)
    assert torch.equal(switched, reference)
    assert _no_patched_forward(model)
    assert all(torch.equal(before[k], v) for k, v in _bits(model).items())


def test_packed_layers_fall_back_to_their_own_forward_under_autograd(tiny_llama):
    model = _lora(tiny_llama)
    with packed_linear_weights(model):
        logits = model(input_ids=IDS).logits  # gradients on: the layers' own (differentiable) forwards
    assert logits.requires_grad
    logits.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_lora_dropout_in_training_mode_is_not_folded(tiny_llama):
    model = _lora(tiny_llama, dropout=0.1).train()
    with torch.no_grad(), packed_linear_weights(model) as packed:
        pass
    assert packed.lora_layers == 0 and packed.layers == 15  # the base layers on their own, and the output layer
    model.eval()  # in eval mode dropout is off: the adapters fold
    with torch.no_grad(), packed_linear_weights(model) as packed:
        pass
    assert packed.lora_layers == 14


def test_the_context_restores_the_layers_after_an_exception(tiny_llama):
    model = tiny_llama(seed=2)
    with pytest.raises(RuntimeError, match="boom"), packed_linear_weights(model):
        assert not _no_patched_forward(model)
        raise RuntimeError("boom")
    assert _no_patched_forward(model)
