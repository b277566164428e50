"""Offline, deterministic tiny models and tokenizers for tests, the demo and the benchmarks.

Nothing here touches the network: the tokenizer is a byte-level BPE trained locally on the toy worlds' text, and the
models are built from configs with a fixed seed, saved, and reloaded so that `name_or_path` is a real directory (TRL
and PEFT read it). Built artefacts are cached under `$HF_IMMUNIZE_CACHE` (default `~/.cache/hf_immunize`), keyed by
every argument that changes them, so the second call is a fast load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "parameters_snapshot",
    "tiny_causal_lm",
    "tiny_encoder_classifier",
    "tiny_run_args",
    "tiny_tokenizer",
]

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]

# `{% generation %}` marks assistant turns so TRL's `assistant_only_loss=True` works with the tiny tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# Part of every cache key, with a digest of the builders' source; bump to invalidate old entries by hand.
_BUILD_VERSION = "1"
_ARCHS = ("llama", "qwen2")


def cache_dir() -> Path:
    return Path(os.environ.get("HF_IMMUNIZE_CACHE", Path.home() / ".cache" / "hf_immunize"))


@lru_cache
def _source_digest() -> str:
    """Hash of the code that decides what gets built (toy corpora, builders): an edit invalidates the cache."""
    from hf_immunize.data import toy

    h = hashlib.sha256()
    for path in (Path(__file__), *sorted(Path(toy.__file__).parent.glob("*.py"))):  # the toy package's modules
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _key(**kwargs) -> str:
    blob = json.dumps({"v": _BUILD_VERSION, "src": _source_digest(), **kwargs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _atomic_build(target: Path, build) -> Path:
    """Runs `build(tmp_dir)` and renames the result to `target`: a crash never leaves a half-written cache entry."""
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build(tmp)
        (tmp / ".complete").touch()
        if target.exists():  # an incomplete leftover, or another process finished first
            if (target / ".complete").exists():
                return target
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _train_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hf_immunize.data.toy import toy_corpus

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(toy_corpus(seed=seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
        padding_side="right",
    )


def tiny_tokenizer(vocab_size: int = 1024, seed: int = 0, save_dir: str | os.PathLike | None = None):
    """A byte-level BPE tokenizer trained on the toy worlds (pad `<pad>`, eos `</s>`, bos `<s>`, a chat template).

    >>> tok = tiny_tokenizer()
    >>> tok.decode(tok("How do I make the cake?")["input_ids"])
    'How do I make the cake?'
    """
    from transformers import AutoTokenizer

    if vocab_size < 300:  # 256 byte symbols + specials must fit
        raise ValueError(f"`vocab_size` must be >= 300, got {vocab_size}.")
    path = _tokenizer_path(vocab_size, seed)
    if save_dir is not None:
        shutil.copytree(path, save_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete"))
        path = Path(save_dir)
    return AutoTokenizer.from_pretrained(path)


@lru_cache
def _tokenizer_path(vocab_size: int, seed: int) -> Path:
    target = cache_dir() / "tokenizers" / _key(kind="tokenizer", vocab_size=vocab_size, seed=seed)
    return _atomic_build(target, lambda d: _train_tokenizer(vocab_size, seed).save_pretrained(d))


def _build_and_save(kind: str, save_dir, build_model, key_args: dict, tokenizer_args: dict, loader):
    """Builds a model with `build_model()` under a fixed seed, saves it with its tokenizer, reloads it from disk."""
    import torch

    def build(directory: Path):
        torch.manual_seed(key_args["seed"])
        model = build_model()
        model.save_pretrained(directory)
        tiny_tokenizer(**tokenizer_args).save_pretrained(directory)
        if not (directory / "config.json").is_file():  # never cache a model folder without its model
            raise RuntimeError(
                f"the tiny {kind} model was not written to {directory}: `save_pretrained` writes only on rank 0 once "
                "torch.distributed is initialized. Build it once in a single process first (call the same "
                "`hf_immunize.testing` function before launching), or pass `save_dir` on rank 0."
            )

    if save_dir is None:
        path = _atomic_build(cache_dir() / kind / _key(kind=kind, **key_args, **tokenizer_args), build)
    else:
        path = Path(save_dir)
        path.mkdir(parents=True, exist_ok=True)
        build(path)
    return loader(path)


def tiny_causal_lm(
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    attn_implementation: str = "eager",
    vocab_size: int = 1024,
    seed: int = 0,
    save_dir: str | os.PathLike | None = None,
):
    """A tiny Llama or Qwen2 causal LM built from a config, saved (with the tiny tokenizer) and reloaded.

    Eager attention is the default because the CPU SDPA kernel has no second derivative (MLAC needs one).
    The same arguments always give the same weights.

    >>> model = tiny_causal_lm(hidden_size=32)
    >>> model.config.model_type, model.config._attn_implementation
    ('llama', 'eager')
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    if arch not in _ARCHS:
        raise ValueError(f"`arch` must be one of {_ARCHS}, got {arch!r}.")
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(
            f"`hidden_size` ({hidden_size}) must be divisible by `num_heads` ({num_heads}), "
            f"and `num_heads` by `num_kv_heads` ({num_kv_heads})."
        )
    tokenizer = tiny_tokenizer(vocab_size=vocab_size, seed=0)
    config_cls = LlamaConfig if arch == "llama" else Qwen2Config
    key_args = {
        "arch": arch,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "intermediate_size": intermediate_size or 4 * hidden_size,
        "max_position_embeddings": max_position_embeddings,
        "seed": seed,
    }

    def build_model():
        config = config_cls(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=key_args["intermediate_size"],
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            max_position_embeddings=max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        return AutoModelForCausalLM.from_config(config)

    def load(path):
        return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn_implementation)

    return _build_and_save("causal_lm", save_dir, build_model, key_args, {"vocab_size": vocab_size}, load)


def tiny_encoder_classifier(
    num_labels: int = 2,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    max_position_embeddings: int = 128,
    attn_implementation: str = "eager",
    vocab_size: int = 1024,
    seed: int = 0,
    save_dir: str | os.PathLike | None = None,
):
    """A tiny BERT-style sequence classifier (the shape of MLAC's BERT-tiny), saved with the tiny tokenizer.

    >>> model = tiny_encoder_classifier(num_labels=3)
    >>> model.config.num_labels
    3
    """
    from transformers import AutoModelForSequenceClassification, BertConfig

    if num_labels < 1:
        raise ValueError(f"`num_labels` must be >= 1, got {num_labels}.")
    tokenizer = tiny_tokenizer(vocab_size=vocab_size, seed=0)
    key_args = {
        "num_labels": num_labels,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "max_position_embeddings": max_position_embeddings,
        "seed": seed,
    }

    def build_model():
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=4 * hidden_size,
            max_position_embeddings=max_position_embeddings,
            num_labels=num_labels,
            pad_token_id=tokenizer.pad_token_id,
        )
        return AutoModelForSequenceClassification.from_config(config)

    def load(path):
        return AutoModelForSequenceClassification.from_pretrained(path, attn_implementation=attn_implementation)

    return _build_and_save("encoder_classifier", save_dir, build_model, key_args, {"vocab_size": vocab_size}, load)


def tiny_run_args(output_dir, **overrides) -> dict:
    """Keyword arguments of a short, deterministic, quiet CPU run for a `*Config` (fp32, no saving, constant lr, no
    weight decay, logging every step); `overrides` win.

    >>> tiny_run_args("out", max_steps=1)["max_steps"]
    1
    """
    return {
        "output_dir": str(output_dir),
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "weight_decay": 0.0,
        "max_length": 64,
        "seed": 0,
        "use_cpu": True,
        "bf16": False,
        "activation_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        **overrides,
    }


def parameters_snapshot(model) -> dict:
    """A detached copy of every named parameter (to compare weights before and after a run)."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}
