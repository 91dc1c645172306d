"""TransformersCritic: a local causal LM as critic (tiny random model for speed; SmolLM2 in the slow test)."""

from __future__ import annotations

import pytest

from trl_text2grad.critics.local_model import TransformersCritic
from trl_text2grad.spans import Critique


def test_tiny_model_batches_and_reports_parse_errors(tiny_llama, smollm2_tokenizer):
    model = tiny_llama()
    critic = TransformersCritic(
        model, tokenizer=smollm2_tokenizer, template="summarization", batch_size=2, max_new_tokens=6
    )
    prompts = ["Post one about cats.", "Post two.", "A third, longer post about the weather today."]
    responses = ["Cats are nice.", "Two.", "It rains."]
    critiques = critic.critique(prompts, responses)
    assert len(critiques) == 3 and all(isinstance(c, Critique) for c in critiques)
    assert len(critic.last_answers) == 3 and all(isinstance(a, str) for a in critic.last_answers)
    # a random model does not write the JSON object: every sample's problem is reported, none is hidden
    assert all(e is not None for e in critic.last_errors)
    assert smollm2_tokenizer.padding_side == "left"  # restored
    # deterministic greedy decoding: same batch, same answers
    again = critic.critique(prompts, responses)
    assert [c.text for c in again] == [c.text for c in critiques]
    assert critic(prompts[:1], responses[:1])[0].text == critiques[0].text  # callable like a reward function


def test_tokenizer_without_chat_template_is_rejected(tiny_llama, bpe_tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        TransformersCritic(tiny_llama(tokenizer=bpe_tokenizer), tokenizer=bpe_tokenizer)


@pytest.mark.slow
def test_smollm2_critic_on_slf5k_rows():
    critic = TransformersCritic(template="summarization", batch_size=2, max_new_tokens=64)
    post = "I asked my roommate twice to wash her dishes. Last week I found mould on a plate. How do I bring it up?"
    critiques = critic.critique([post, post], ["Roommate never cleans; how to raise it?", "My roommate is great."])
    assert len(critiques) == 2
    assert all(a and a.strip() for a in critic.last_answers)
    assert all(c.text or e for c, e in zip(critiques, critic.last_errors))


def test_generation_errors_fail_their_rows(tiny_llama, smollm2_tokenizer, monkeypatch):
    critic = TransformersCritic(tiny_llama(), tokenizer=smollm2_tokenizer, batch_size=2, max_new_tokens=4)

    def out_of_memory(**kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(critic.model, "generate", out_of_memory)
    critiques = critic.critique(["a", "b", "c"], ["x y", "z", "w"])
    assert [c.error.kind for c in critiques] == ["generation"] * 3
    assert "out of memory" in critiques[0].error.message and critiques[0].error.retryable
    assert critic.last_errors[0] == critiques[0].error.message


def test_llm_critic_row_problems_are_per_row_failures():
    import json

    from trl_text2grad.critics.base import LLMCritic

    class Fixed(LLMCritic):
        def generate(self, conversations):
            return [json.dumps({"critique": "ok", "good_spans": ["x"], "poor_spans": []})] * len(conversations)

    class NeedsTests(Fixed):
        required_context = ("tests",)

    critic = NeedsTests(user_template="P: {prompt}\nR: {response}\nT: {tests}")
    out = critic.critique(["p", "p"], ["x", "x"], tests=["t1", None])  # the second row has no tests
    assert not out[0].failed and out[1].error.kind == "missing_context" and "'tests'" in out[1].error.message
    out = critic.critique(["p", {"not": "a prompt"}], ["x", "x"], tests=["t1", "t2"])
    assert not out[0].failed and out[0].good == ["x"] and out[1].error.kind == "invalid_input"
    assert [f.kind if f else None for f in critic.last_failures] == [None, "invalid_input"]
