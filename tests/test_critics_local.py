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
