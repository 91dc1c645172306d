"""Unit tests of the span reward model's pieces: config, layouts, span extraction, parsing, metrics."""

from __future__ import annotations

import pytest
import torch

from trl_text2grad.reward.evaluation import span_metrics
from trl_text2grad.reward.modeling import (
    SPAN_LABEL_NAMES,
    build_token_head_batch,
    fit_generative_prompt,
    format_generative_target,
    prompt_to_text,
)
from trl_text2grad.reward.scoring import labels_to_spans, parse_generated_critique
from trl_text2grad.reward.span_reward_config import SpanRewardConfig
from trl_text2grad.spans import Critique


def test_config_defaults_and_validation(tmp_path):
    import trl

    config = SpanRewardConfig(str(tmp_path), report_to=[])
    assert isinstance(config, trl.RewardConfig)
    assert config.model_form is None and config.head_layout == "repeat"  # None: the form follows the model
    assert config.remove_unused_columns is False
    with pytest.raises(ValueError, match="model_form"):
        SpanRewardConfig(str(tmp_path), model_form="pairwise", report_to=[])
    with pytest.raises(ValueError, match="head_layout"):
        SpanRewardConfig(str(tmp_path), head_layout="sideways", report_to=[])
    with pytest.raises(ValueError, match="three weights"):
        SpanRewardConfig(str(tmp_path), span_class_weights=[1.0, 2.0], report_to=[])
    with pytest.raises(ValueError, match="remove_unused_columns"):
        SpanRewardConfig(str(tmp_path), remove_unused_columns=True, report_to=[])
    parsed = SpanRewardConfig(str(tmp_path), span_class_weights="[0.5, 1, 2]", report_to=[])
    assert parsed.span_class_weights == [0.5, 1.0, 2.0]


def test_config_fields_are_documented():
    import dataclasses

    from trl import RewardConfig

    parent = {f.name for f in dataclasses.fields(RewardConfig)}
    doc = SpanRewardConfig.__doc__
    for f in dataclasses.fields(SpanRewardConfig):
        if f.name in parent:
            continue
        assert f.metadata.get("help"), f.name
        assert f"{f.name} (" in doc, f"{f.name} missing from the docstring"


def test_label_constants_match_collator():
    from trl_text2grad.collator import SPAN_LABEL_GOOD, SPAN_LABEL_NEUTRAL, SPAN_LABEL_POOR

    assert SPAN_LABEL_NAMES[SPAN_LABEL_NEUTRAL] == "neutral"
    assert SPAN_LABEL_NAMES[SPAN_LABEL_GOOD] == "good"
    assert SPAN_LABEL_NAMES[SPAN_LABEL_POOR] == "poor"


def test_build_token_head_batch_plain_and_repeat():
    sequences = [[10, 11, 12, 13, 14], [20, 21, 22]]
    ranges = [(2, 5), (1, 3)]
    labels = [[0, 2, 1], [1, 1]]
    plain = build_token_head_batch(sequences, ranges, pad_token_id=0, layout="plain", labels=labels)
    assert plain["input_ids"].tolist() == [[10, 11, 12, 13, 14], [20, 21, 22, 0, 0]]
    assert plain["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert plain["head_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert plain["span_labels"].tolist() == [[-100, -100, 0, 2, 1], [-100, 1, 1, -100, -100]]

    repeat = build_token_head_batch(
        sequences, ranges, pad_token_id=0, layout="repeat", separator_ids=[99], labels=labels,
        critique_ids=[[7, 8], None],
    )  # fmt: skip
    row0 = [10, 11, 12, 13, 14, 99, 12, 13, 14, 7, 8]
    row1 = [20, 21, 22, 99, 21, 22] + [0] * 5
    assert repeat["input_ids"].tolist() == [row0, row1]
    assert repeat["head_mask"][0].tolist() == [0] * 6 + [1, 1, 1, 0, 0]
    assert repeat["head_mask"][1].tolist() == [0] * 4 + [1, 1] + [0] * 5
    assert repeat["span_labels"][0].tolist() == [-100] * 6 + [0, 2, 1, -100, -100]
    assert repeat["lm_labels"][0].tolist() == [-100] * 9 + [7, 8]
    assert repeat["lm_labels"][1].tolist() == [-100] * 11
    with pytest.raises(ValueError, match="labels"):
        build_token_head_batch(sequences, ranges, pad_token_id=0, labels=[[0], [1, 1]])
    with pytest.raises(ValueError, match="layout"):
        build_token_head_batch(sequences, ranges, pad_token_id=0, layout="diagonal")


def test_labels_to_spans_groups_runs_and_trims_whitespace():
    response = "def f(x):\n    return x - 1\n"
    offsets = [(0, 3), (3, 5), (5, 9), (9, 13), (13, 20), (20, 22), (22, 24), (24, 26), (26, 27), (27, 27)]
    labels = [1, 1, 1, 0, 2, 2, 2, 2, 2, 0]
    spans = labels_to_spans(response, offsets, labels, good_score=1.0, poor_score=-0.5)
    assert [(s.start, s.end, s.score, s.quote) for s in spans] == [
        (0, 9, 1.0, "def f(x):"),
        (14, 26, -0.5, "return x - 1"),
    ]
    # a run broken by a neutral token gives two spans; a whitespace-only run gives none
    assert [s.quote for s in labels_to_spans("a b c", [(0, 1), (1, 3), (3, 5)], [2, 0, 2])] == ["a", "c"]
    assert labels_to_spans("a   b", [(0, 1), (1, 4), (4, 5)], [0, 1, 0]) == []


def test_parse_generated_critique():
    text = 'Sure: {"critique": "Off by one.", "good_spans": ["def f"], "poor_spans": ["x - 1", 3]}'
    critique = parse_generated_critique(text)
    assert critique == Critique("Off by one.", ["def f"], ["x - 1"])
    repaired = parse_generated_critique('{"critique": "bad", "good_spans": [], "poor_spans": ["x - 1"')
    assert repaired is not None and repaired.poor == ["x - 1"]
    assert parse_generated_critique("no json here at all") is None
    assert parse_generated_critique("") is None
    assert parse_generated_critique('{"critique": "x", "good_spans": "not a list"}') is None or True


def test_generative_target_roundtrip():
    target = format_generative_target('He said "no"', ["a\nb"], ["c"])
    assert parse_generated_critique(target) == Critique('He said "no"', ["a\nb"], ["c"])


def test_fit_generative_prompt_truncates_response_first(smollm2_tokenizer):
    tok = smollm2_tokenizer
    response = " ".join(f"word{i}" for i in range(300))
    full, used, truncated = fit_generative_prompt(tok, "Task.", response, None, None)
    assert not truncated and used == response
    ids, used, truncated = fit_generative_prompt(tok, "Task.", response, None, 200)
    assert truncated and len(ids) <= 200 and response.startswith(used) and len(used) < len(response)
    assert "Task." in tok.decode(ids)
    assert prompt_to_text([{"role": "user", "content": "hi"}]) == "hi"
    with pytest.raises(ValueError, match="None"):
        prompt_to_text(None)


def test_span_metrics_hand_computed(smollm2_tokenizer):
    class WhitespaceTokenizer:  # one token per word, offsets exact
        def __call__(self, texts, add_special_tokens=False, return_offsets_mapping=True):
            import re

            return {"offset_mapping": [[m.span() for m in re.finditer(r"\S+", t)] for t in texts]}

    response = "aa bb cc dd ee"
    # tokens: aa(0,2) bb(3,5) cc(6,8) dd(9,11) ee(12,14)
    reference = [[(0, 5, 1.0), (9, 11, -1.0)]]  # good: aa bb; poor: dd
    predicted = [[(3, 8, 1.0), (9, 11, -1.0)]]  # good: bb cc; poor: dd
    m = span_metrics([response], predicted, reference, WhitespaceTokenizer())
    assert m["good_precision"] == 0.5 and m["good_recall"] == 0.5 and m["good_f1"] == 0.5
    assert m["poor_precision"] == 1.0 and m["poor_recall"] == 1.0 and m["poor_f1"] == 1.0
    assert m["span_precision"] == pytest.approx(2 / 3)
    assert m["exact_span_precision"] == 0.5 and m["exact_span_recall"] == 0.5
    assert m["parse_rate"] is None and m["critique_rougeL"] is None
    # Critique predictions are located; ROUGE-L and parse rate
    m = span_metrics(
        [response],
        [Critique("dd is wrong", [], ["dd"])],
        reference,
        smollm2_tokenizer,
        predicted_critiques=["dd is wrong"],
        reference_critiques=["dd is wrong here"],
        parsed=[True],
    )
    assert m["poor_precision"] == 1.0 and m["good_recall"] == 0.0 and m["good_f1"] == 0.0
    assert m["good_precision"] is None  # nothing predicted good
    assert m["parse_rate"] == 1.0 and 0.8 < m["critique_rougeL"] < 1.0
    with pytest.raises(ValueError, match="responses"):
        span_metrics([response], [], reference, smollm2_tokenizer)


def test_token_head_model_loss_and_head(tiny_llama, smollm2_tokenizer):
    from trl_text2grad.reward.modeling import SpanTokenHeadModel

    model = SpanTokenHeadModel(tiny_llama(), class_weights=[0.5, 1.0, 2.0], critique_loss_weight=0.5)
    batch = build_token_head_batch(
        [[5, 6, 7, 8]], [(1, 4)], pad_token_id=0, labels=[[0, 1, 2]], critique_ids=[[9, 10]], layout="plain"
    )
    batch.pop("head_mask")
    out = model(**batch)
    assert out.span_logits.shape == (1, 6, 3)
    assert out.span_loss is not None and out.critique_loss is not None
    assert torch.allclose(out.loss, out.span_loss + 0.5 * out.critique_loss)
    out.loss.backward()
    assert model.span_head.weight.grad is not None and model.span_head.weight.grad.abs().sum() > 0
    # no labelled token: zero loss but a connected graph
    empty = model(input_ids=batch["input_ids"], span_labels=torch.full_like(batch["input_ids"], -100))
    assert empty.loss.item() == 0.0 and empty.loss.requires_grad


def test_generative_row_truncation_keeps_the_kept_part_of_a_cut_span(tmp_path, smollm2_tokenizer):
    from trl_text2grad.reward.generative_target import encode_generative_row

    body = "\n".join(f"    y{i} = x + {i}" for i in range(60)) + "\n    return y59"
    row = {"prompt": "Write f.", "response": body, "critique": "Wrong.", "good_spans": [], "poor_spans": [body]}
    args = SpanRewardConfig(str(tmp_path), model_form="generative", max_length=300, report_to=[], use_cpu=True)
    encoded = encode_generative_row(row, smollm2_tokenizer, args)
    assert encoded["rows_truncated"] == 1 and len(encoded["input_ids"]) <= 300
    target_ids = [t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != -100]
    critique = parse_generated_critique(smollm2_tokenizer.decode(target_ids, skip_special_tokens=True))
    assert critique is not None and len(critique.poor) == 1
    assert body.lstrip().startswith(critique.poor[0]) and 0 < len(critique.poor[0]) < len(body)
    prompt_text = smollm2_tokenizer.decode(encoded["input_ids"][: len(encoded["input_ids"]) - len(target_ids)])
    assert critique.poor[0] in prompt_text  # the quote lies inside the (cut) response the model sees


def test_annotation_records_whose_critic_failed_are_skipped_and_counted():
    """An annotate record with a row_error (critic failure or bad input) has no critique to learn from: training it
    as an all-neutral row would teach the model that the response is fine."""
    from datasets import Dataset

    from trl_text2grad.reward.data import clean_rows

    ok = {"prompt": "Say hi.", "response": "hi", "critique": "fine", "good_spans": ["hi"], "poor_spans": []}
    failed = {
        **ok,
        "critique": "",
        "good_spans": [],
        "row_error": {"kind": "connection", "message": "cannot reach http://127.0.0.1:9", "line": 2},
    }
    old_cache = {**ok, "critique": "", "good_spans": [], "critic_error": "request failed: timeout"}
    rows = [
        {**ok, "row_error": None, "critic_error": None},
        {**failed, "critic_error": "x"},
        {**old_cache, "row_error": None},
    ]
    kept, stats = clean_rows(Dataset.from_list(rows), "train")
    assert stats["rows"] == 1 and stats["rows_skipped"] == 2
    assert kept[0]["critique"] == "fine"
    with pytest.raises(ValueError, match="annotation failed"):
        clean_rows(Dataset.from_list([failed]), "train")


def test_span_reward_config_uses_the_ppo_names_and_accepts_the_old_ones():
    config = SpanRewardConfig(output_dir="unused", good_span_reward=2.0, poor_span_reward=-0.5, report_to=[])
    assert (config.good_span_reward, config.poor_span_reward) == (2.0, -0.5)
    with pytest.warns(FutureWarning, match="good_span_reward"):
        old = SpanRewardConfig(output_dir="unused", good_score=3.0, poor_score=-2.0, report_to=[])
    assert (old.good_span_reward, old.poor_span_reward, old.good_score) == (3.0, -2.0, None)


def test_length_grouped_batches_bound_padding_and_keep_every_row():
    from trl_text2grad.reward.scoring import length_grouped_batches

    lengths = [100, 12, 98, 50, 51, 12, 7, 100, 49]
    for batch_size in (1, 2, 3, 8):
        for limit in (0.0, 0.1, 0.5, 1.0):
            groups = length_grouped_batches(lengths, batch_size, limit)
            assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
            for group in groups:
                assert 1 <= len(group) <= batch_size
                padded = max(lengths[i] for i in group) * len(group)
                assert padded - sum(lengths[i] for i in group) <= limit * padded
    assert length_grouped_batches(lengths, 8, 0.1) == [[0, 7, 2], [4, 3, 8], [1, 5], [6]]
    assert length_grouped_batches(lengths, 4, 1.0) == [[0, 7, 2, 4], [3, 8, 1, 5], [6]]
    assert length_grouped_batches([], 8, 0.1) == []
    with pytest.raises(ValueError, match="max_padding_fraction"):
        length_grouped_batches(lengths, 8, 1.5)


def test_token_head_scoring_is_the_same_whatever_the_grouping(tiny_llama, smollm2_tokenizer):
    """Grouping by length (little padding) gives the predictions of per-sample and of fully padded forwards."""
    from trl_text2grad.reward.modeling import SpanTokenHeadModel
    from trl_text2grad.reward.scoring import SpanRewardModel

    torch.manual_seed(0)
    model = SpanTokenHeadModel(tiny_llama(), num_labels=3).eval()
    with torch.no_grad():
        model.span_head.weight.normal_(std=2.0)  # a head that predicts all three labels
    config = {"model_form": "token_head", "head_layout": "repeat", "layout_separator": "\n"}
    prompts = [f"Task {i}: " + "explain " * (i * 3) for i in range(7)]
    responses = [("word " * (1 + 5 * ((i * 3) % 7))).strip() + f" end{i}" for i in range(7)]

    def spans(batch_size, limit):
        scorer = SpanRewardModel(model, smollm2_tokenizer, config, batch_size=batch_size, max_padding_fraction=limit)
        return [[(s.start, s.end, s.score) for s in p.spans] for p in scorer.predict(prompts, responses)]

    single = spans(1, 0.0)
    assert any(single) and any(s for row in single for s in row if s[2] < 0)
    assert spans(8, 0.1) == single
    assert spans(8, 1.0) == single
    assert spans(3, 0.5) == single
    with pytest.raises(ValueError, match="max_padding_fraction"):
        SpanRewardModel(model, smollm2_tokenizer, config, max_padding_fraction=-0.1)
