"""The shipped MiniLM tokenizer with semsearch's overrides: truncation at 256, pad to longest."""

import numpy as np
import pytest

from services.embedder.export import minilm_dir
from services.embedder.models import TEXT_MAX_TOKENS
from services.embedder.triton_models.tokenizer_model import build_tokenizer, encode_batch


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(str(minilm_dir() / "tokenizer.json"), TEXT_MAX_TOKENS)


def test_pads_to_longest_in_batch_not_fixed_length(tokenizer):
    ids, mask = encode_batch(tokenizer, ["hello", "a somewhat longer sentence to tokenize"])
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape and ids.shape[1] < 20  # not the baked-in fixed padding
    assert mask[1].all() and mask[0].sum() == 3  # [CLS] hello [SEP]
    assert (ids[0][mask[0] == 0] == 0).all()  # [PAD] is id 0


def test_truncates_at_max_tokens(tokenizer):
    ids, mask = encode_batch(tokenizer, ["word " * 1000])
    assert ids.shape == (1, TEXT_MAX_TOKENS) and mask.all()
    assert ids[0, 0] == tokenizer.token_to_id("[CLS]")
    assert ids[0, -1] == tokenizer.token_to_id("[SEP]")


def test_lowercases_and_splits_words(tokenizer):
    ids, _ = encode_batch(tokenizer, ["Hello WORLD"])
    tokens = [tokenizer.id_to_token(i) for i in ids[0]]
    assert tokens == ["[CLS]", "hello", "world", "[SEP]"]


def test_single_text_is_unpadded(tokenizer):
    _, mask = encode_batch(tokenizer, ["semantic search"])
    assert mask.all()
