"""The classifier attacker's model handling: load or copy the model it is given (never modifying it), find and
replace its classification head with a fresh random one, and the random-initialisation baseline."""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import torch
from torch import nn

__all__ = ["random_init_like"]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


# Attribute names under which Hugging Face sequence classifiers keep their head (BERT/DistilBERT/RoBERTa: classifier,
# Llama/Qwen2/GPT-2: score, DeBERTa-v2 and others: classifier, BART/T5: classification_head).
_HEAD_ATTRIBUTES = ("classifier", "score", "classification_head", "head")


def _is_path(obj: Any) -> bool:
    return isinstance(obj, str | os.PathLike)


def _load_or_copy(model_or_path) -> nn.Module:
    """A private copy of the model: loaded from a path, or deep-copied so the caller's object is never touched."""
    if _is_path(model_or_path):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(model_or_path)
    if isinstance(model_or_path, nn.Module):
        return copy.deepcopy(model_or_path)
    raise TypeError(
        f"`model_or_path` must be a sequence-classification model or a path to one, got {type(model_or_path)}."
    )


def _resolve_tokenizer(tokenizer, model_or_path):
    if tokenizer is not None:
        return tokenizer
    source = model_or_path if _is_path(model_or_path) else getattr(model_or_path, "name_or_path", "")
    if not source or not os.path.isdir(source):
        raise ValueError("`tokenizer` is None and the model has no local directory to load one from: pass it.")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def _find_head(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """Locates the output projection of a classification head: `(parent module, attribute name, the Linear)`.

    A head that is a single `nn.Linear` (BERT, Llama) is replaced whole. A head with its own layers before the output
    (RoBERTa's dense → tanh → out_proj) keeps them as part of the trunk; only its last Linear is replaced. Models with
    none of the usual attribute names fall back to the last Linear whose outputs equal `config.num_labels`.
    """
    for attribute in _HEAD_ATTRIBUTES:
        head = getattr(model, attribute, None)
        if isinstance(head, nn.Linear):
            return model, attribute, head
        if isinstance(head, nn.Module):
            linears = [(name, m) for name, m in head.named_modules() if isinstance(m, nn.Linear)]
            if linears:
                name, linear = linears[-1]
                parent_name, _, child = name.rpartition(".")
                return head.get_submodule(parent_name) if parent_name else head, child, linear
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    candidates = [
        (name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_labels
    ]
    if candidates:
        name, linear = candidates[-1]
        parent_name, _, child = name.rpartition(".")
        return model.get_submodule(parent_name) if parent_name else model, child, linear
    raise TypeError(
        f"could not find the classification head of {type(model).__name__}: looked for an `nn.Linear` under "
        f"{_HEAD_ATTRIBUTES} and for a Linear with config.num_labels={num_labels} outputs."
    )


def _fresh_head(in_features: int, num_labels: int, bias: bool, generator: torch.Generator, like: nn.Linear):
    """A new Linear with PyTorch's default init (what a freshly built `nn.Linear` gets), drawn from `generator`."""
    head = nn.Linear(in_features, num_labels, bias=bias, device="meta")
    bound = 1.0 / math.sqrt(in_features)  # nn.Linear's reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    weight = torch.empty(num_labels, in_features).uniform_(-bound, bound, generator=generator)  # (C, H)
    head.weight = nn.Parameter(weight.to(device=like.weight.device, dtype=like.weight.dtype))
    if bias:
        b = torch.empty(num_labels).uniform_(-bound, bound, generator=generator)  # (C,)
        head.bias = nn.Parameter(b.to(device=like.weight.device, dtype=like.weight.dtype))
    return head


def _install_fresh_head(model: nn.Module, config, generator: torch.Generator) -> nn.Linear:
    """Puts a fresh head of `config.num_labels` outputs (`config.head_bias`: with a bias) in place of the old one."""
    parent, attribute, old = _find_head(model)
    head = _fresh_head(old.in_features, config.num_labels, config.head_bias, generator, like=old)
    setattr(parent, attribute, head)
    model_config = getattr(model, "config", None)
    if model_config is not None:
        model_config.num_labels = config.num_labels  # also resets id2label / label2id to LABEL_0..LABEL_{C-1}
        model_config.problem_type = "single_label_classification"
    if hasattr(model, "num_labels"):
        model.num_labels = config.num_labels
    return head


def random_init_like(model_or_path, seed: int = 0) -> nn.Module:
    """The same architecture with every weight freshly initialised: MLAC's "random init" baseline.

    A defended model should be no easier to attack than this. The input is never modified; the new weights follow
    the architecture's own init (`AutoModelForSequenceClassification.from_config`) under `seed`, and the caller's
    global RNG state is left as it was. A model that was itself built by `from_config` under the same seed (as the
    tiny test models are) comes back identical: pick another seed for those.

    >>> from hf_immunize.testing import tiny_encoder_classifier
    >>> model = tiny_encoder_classifier(num_labels=2)  # itself built from its config under seed 0
    >>> baseline = random_init_like(model, seed=1)
    >>> type(baseline) is type(model), baseline is model
    (True, False)
    >>> bool(torch.equal(baseline.classifier.weight, model.classifier.weight))
    False
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    _check_int("seed", seed, 0)
    if _is_path(model_or_path):
        model_config = AutoConfig.from_pretrained(model_or_path)
        device, dtype = torch.device("cpu"), None
    elif isinstance(model_or_path, nn.Module) and hasattr(model_or_path, "config"):
        model_config = copy.deepcopy(model_or_path.config)
        first = next(model_or_path.parameters())
        device, dtype = first.device, first.dtype
    else:
        raise TypeError(f"`model_or_path` must be a Hugging Face model or a path to one, got {type(model_or_path)}.")
    with torch.random.fork_rng(devices=[]):  # built on the CPU, so only the CPU generator is used and restored
        torch.default_generator.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(model_config)
    return model.to(device=device, dtype=dtype) if dtype is not None else model
