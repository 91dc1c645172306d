"""Unit tests of ``pad_sequences``, the one padding helper (collator, reward collator, PPO prompts, scorer)."""

import numpy as np
import pytest
import torch

from trl_text2grad.collator import pad_sequences


def test_right_padding_is_the_default():
    out = pad_sequences([[1, 2, 3], [4]], 0)
    assert out.dtype == torch.long
    assert out.tolist() == [[1, 2, 3], [4, 0, 0]]


def test_left_padding():
    out = pad_sequences([[1, 2, 3], [4]], -100, side="left")
    assert out.tolist() == [[1, 2, 3], [-100, -100, 4]]


@pytest.mark.parametrize("side", ["left", "right"])
def test_dtype_and_mixed_row_types(side):
    rows = [np.array([0.5, -1.0], dtype=np.float64), torch.tensor([2.0]), [3]]
    out = pad_sequences(rows, 0.0, side=side, dtype=torch.float32)
    assert out.dtype == torch.float32
    assert out.shape == (3, 2)
    expected = [[0.5, -1.0], [2.0, 0.0], [3.0, 0.0]] if side == "right" else [[0.5, -1.0], [0.0, 2.0], [0.0, 3.0]]
    assert out.tolist() == expected


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_to_multiple_of(side):
    out = pad_sequences([[1, 2, 3], [4]], 9, side=side, pad_to_multiple_of=4)
    assert out.shape == (2, 4)
    if side == "right":
        assert out.tolist() == [[1, 2, 3, 9], [4, 9, 9, 9]]
    else:
        assert out.tolist() == [[9, 1, 2, 3], [9, 9, 9, 4]]
    assert pad_sequences([[1, 2, 3, 4]], 0, pad_to_multiple_of=4).shape == (1, 4)  # already a multiple


def test_empty_batch_and_empty_rows():
    empty = pad_sequences([], 0)
    assert empty.shape == (0, 0) and empty.dtype == torch.long
    assert pad_sequences([[], []], 0, side="left").shape == (2, 0)
    assert pad_sequences([[], [7, 8]], 5, side="left").tolist() == [[5, 5], [7, 8]]
    assert pad_sequences([[], [7, 8]], 5, side="right").tolist() == [[5, 5], [7, 8]]


def test_bad_side_is_a_clear_error():
    with pytest.raises(ValueError, match=r"side must be 'left' or 'right', got 'middle'"):
        pad_sequences([[1]], 0, side="middle")


def test_bad_rows_and_multiple_are_clear_errors():
    with pytest.raises(ValueError, match="row 1 must be 1-D"):
        pad_sequences([[1], [[1, 2]]], 0)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        pad_sequences([[1]], 0, pad_to_multiple_of=0)
