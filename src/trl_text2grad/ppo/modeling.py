"""The policy + value module trained by :class:`~trl_text2grad.ppo.span_ppo_trainer.SpanPPOTrainer`.

``PolicyWithValue`` holds the policy (a causal LM, possibly a ``peft.PeftModel``) and either a scalar value head on
the policy's last hidden state (``value_model=None``: one forward gives logits and values) or a separate value model
(an ``AutoModelForSequenceClassification`` with ``num_labels=1``, as in TRL 1.12). Its ``forward`` returns, for the
last ``response_length`` positions, the logits that predicted each response token and the value of the state before
it; the trainer never calls sub-modules directly, so DDP/DeepSpeed wrapping sees every trainable parameter.
"""

from __future__ import annotations

import inspect
import json
import os

import torch
from torch import nn

__all__ = ["PolicyWithValue", "VALUE_HEAD_FILE", "VALUE_MODEL_DIR"]

VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_MODEL_DIR = "value_model"
_LAYOUT_FILE = "span_ppo_value.json"


def _hidden_size(config) -> int:
    config = getattr(config, "get_text_config", lambda: config)()
    for name in ("hidden_size", "n_embd", "d_model", "dim"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ValueError(
        f"cannot find the hidden size of {type(config).__name__} (looked for hidden_size/n_embd/d_model); pass a "
        "separate `value_model` instead of relying on the built-in value head."
    )


def _accepts(module: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


class PolicyWithValue(nn.Module):
    """Policy causal LM plus value function (built-in head or separate value model).

    Args:
        policy: The causal language model (``PreTrainedModel`` or ``peft.PeftModel``).
        value_model: Optional ``AutoModelForSequenceClassification`` (``num_labels=1``) used as critic. ``None``
            adds ``v_head``, a ``Linear(hidden_size, 1)`` on the policy's last hidden state.
    """

    def __init__(self, policy: nn.Module, value_model: nn.Module | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model
        if value_model is None:
            hidden = _hidden_size(policy.config)
            self.v_head = nn.Linear(hidden, 1)
            nn.init.normal_(self.v_head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(self.v_head.bias)
        else:
            self.v_head = None
            if not hasattr(value_model, "score") or not hasattr(value_model, "base_model_prefix"):
                raise ValueError(
                    "value_model must be a transformers sequence-classification model (with a `score` head and a "
                    f"`base_model_prefix`), e.g. AutoModelForSequenceClassification(num_labels=1); got "
                    f"{type(value_model).__name__}. Pass value_model=None to use a value head on the policy."
                )
        self.config = policy.config
        self._policy_takes_logits_to_keep = _accepts(self._base_policy(), "logits_to_keep")

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _base_policy(self) -> nn.Module:
        policy = self.policy
        return policy.get_base_model() if hasattr(policy, "get_base_model") else policy

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        response_length: int,
        compute_values: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits predicting the last ``response_length`` tokens and the values of the states before them.

        Returns:
            ``(logits [B, R, V], values [B, R] or None)``: ``logits[:, t]`` is the distribution the response token
            ``t`` was drawn from, ``values[:, t]`` the value of the prefix that ends just before it.
        """
        keep = response_length + 1
        use_head = compute_values and self.v_head is not None
        kwargs = {"use_cache": False, "output_hidden_states": use_head}
        if self._policy_takes_logits_to_keep:
            kwargs["logits_to_keep"] = keep
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        logits = out.logits[:, -keep:-1]
        values = None
        if use_head:
            hidden = out.hidden_states[-1][:, -keep:-1]
            values = self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1)
        elif compute_values and self.value_model is not None:
            backbone = getattr(self.value_model, self.value_model.base_model_prefix)
            vout = backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                output_hidden_states=True,
            )
            values = self.value_model.score(vout.hidden_states[-1][:, -keep:-1]).squeeze(-1)
        return logits, values

    # -- gradient checkpointing (forwarded to the wrapped models) ---------------------------------------------------
    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self._base_policy(), "is_gradient_checkpointing", False))

    def _checkpointed_models(self):
        models = [self.policy]
        if self.value_model is not None:
            models.append(self.value_model)
        return models

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs):
        for model in self._checkpointed_models():
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs)
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        for model in self._checkpointed_models():
            model.gradient_checkpointing_disable()

    # -- saving / loading -----------------------------------------------------------------------------------------
    def save_pretrained(self, output_dir: str, safe_serialization: bool = True, **kwargs) -> None:
        """Save the policy (or its adapter) at ``output_dir`` and the value head / value model next to it."""
        from safetensors.torch import save_file

        os.makedirs(output_dir, exist_ok=True)
        self.policy.save_pretrained(output_dir, **kwargs)
        if self.v_head is not None:
            state = {k: v.detach().contiguous().cpu() for k, v in self.v_head.state_dict().items()}
            save_file(state, os.path.join(output_dir, VALUE_HEAD_FILE))
            layout = {"value": "head"}
        else:
            self.value_model.save_pretrained(os.path.join(output_dir, VALUE_MODEL_DIR), **kwargs)
            layout = {"value": "model"}
        with open(os.path.join(output_dir, _LAYOUT_FILE), "w") as f:
            json.dump(layout, f)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        """Load weights saved by :meth:`save_pretrained` into this module (policy or adapter, and value)."""
        from safetensors.torch import load_file

        base = self._base_policy()
        if hasattr(self.policy, "load_adapter") and hasattr(self.policy, "peft_config"):
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            for name in self.policy.peft_config:
                sub = checkpoint_dir if name == "default" else os.path.join(checkpoint_dir, name)
                if os.path.isdir(sub):
                    set_peft_model_state_dict(self.policy, load_peft_weights(sub), adapter_name=name)
        else:
            _load_pretrained_weights(base, checkpoint_dir)
        if self.v_head is not None:
            path = os.path.join(checkpoint_dir, VALUE_HEAD_FILE)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} is missing: this checkpoint was not written by SpanPPOTrainer.")
            self.v_head.load_state_dict(load_file(path))
        else:
            _load_pretrained_weights(self.value_model, os.path.join(checkpoint_dir, VALUE_MODEL_DIR))


def _load_pretrained_weights(model: nn.Module, directory: str) -> None:
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors") and f.startswith("model"))
    if not files:
        raise FileNotFoundError(f"no model*.safetensors weights in {directory}.")
    state = {}
    for name in files:
        state.update(load_file(os.path.join(directory, name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (e.g. lm_head = embed_tokens) are saved once; anything else missing is an error.
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if isinstance(getattr(model, "_tied_weights_keys", None), dict):
        tied = set(model._tied_weights_keys)
    really_missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if really_missing or unexpected:
        raise RuntimeError(
            f"checkpoint {directory} does not match the model: missing {really_missing[:5]}, unexpected "
            f"{unexpected[:5]}."
        )
