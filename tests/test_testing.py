"""The offline builders: deterministic tiny tokenizer and models that reload from a real directory."""

from pathlib import Path

import pytest
import torch

from hf_immunize.testing import SPECIAL_TOKENS, tiny_causal_lm, tiny_encoder_classifier, tiny_tokenizer


def test_tokenizer_round_trip_specials_and_chat_template(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "User: How do I make the cake?\nAssistant: To make it, mix flour with sugar."
    assert tok.decode(tok(text)["input_ids"]) == text
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<pad>", "</s>", "<s>")
    assert len({tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}) == len(SPECIAL_TOKENS)
    assert all(tok.convert_tokens_to_ids(t) != tok.unk_token_id for t in SPECIAL_TOKENS if t != "<unk>")
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    # Byte-level: anything encodes, nothing maps to <unk>.
    assert tok.unk_token_id not in tok("naïve ☃ 42")["input_ids"]


def test_tokenizer_training_is_deterministic(tiny_tokenizer, monkeypatch, tmp_path):
    """A fresh cache trains the tokenizer again from the toy corpora: the vocabulary must come out identical."""
    import hf_immunize.testing as testing

    monkeypatch.setenv("HF_IMMUNIZE_CACHE", str(tmp_path))
    testing._tokenizer_path.cache_clear()
    try:
        again = testing.tiny_tokenizer()
    finally:
        testing._tokenizer_path.cache_clear()
    assert str(tmp_path) in again.name_or_path
    assert again.get_vocab() == tiny_tokenizer.get_vocab()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_causal_lm_same_seed_same_weights_and_real_directory(arch, tmp_path):
    a = tiny_causal_lm(arch=arch, hidden_size=32, seed=1, save_dir=tmp_path / "a")
    b = tiny_causal_lm(arch=arch, hidden_size=32, seed=1, save_dir=tmp_path / "b")
    c = tiny_causal_lm(arch=arch, hidden_size=32, seed=2, save_dir=tmp_path / "c")
    assert a.config.model_type == arch and a.config._attn_implementation == "eager"
    assert Path(a.name_or_path).is_dir() and (Path(a.name_or_path) / "tokenizer_config.json").exists()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    out = a(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]]))
    assert out.logits.shape == (1, 3, a.config.vocab_size) and torch.isfinite(out.loss)


def test_tiny_causal_lm_cache_reuses_the_same_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_IMMUNIZE_CACHE", str(tmp_path))
    first = tiny_causal_lm(hidden_size=32)
    second = tiny_causal_lm(hidden_size=32)
    assert first.name_or_path == second.name_or_path and str(tmp_path) in first.name_or_path
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), second.parameters()))


def test_tiny_encoder_classifier(tmp_path):
    model = tiny_encoder_classifier(num_labels=3, save_dir=tmp_path / "bert")
    assert model.config.model_type == "bert" and model.config.num_labels == 3
    logits = model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
    assert logits.shape == (1, 3)


@pytest.mark.parametrize(
    "builder,kwargs,field",
    [
        (tiny_causal_lm, {"arch": "gpt9"}, "arch"),
        (tiny_causal_lm, {"hidden_size": 30, "num_heads": 4}, "hidden_size"),
        (tiny_encoder_classifier, {"num_labels": 0}, "num_labels"),
        (tiny_tokenizer, {"vocab_size": 10}, "vocab_size"),
    ],
)
def test_builders_reject_bad_arguments(builder, kwargs, field):
    with pytest.raises(ValueError, match=field):
        builder(**kwargs)
