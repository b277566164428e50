"""MLAC's checks of the model and task before training: which task it is (classifier or causal LM), the censoring
weights that task allows, eager or MATH attention for second-order gradients, the classification head, the harmful
task's classes, and the config coercion."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import TrainingArguments
from transformers.trainer_utils import _is_peft_model, unwrap_peft_model

from hf_immunize.methods.mlac.mlac_config import MLACConfig

__all__: list[str] = []

_HEAD_ATTRIBUTES = ("classifier", "score", "classification_head", "head")


def _summed_loss(logits: torch.Tensor, labels: torch.Tensor, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of cross-entropy over the labelled items and their count (examples, or next tokens for a causal LM)."""
    if task == "causal_lm":
        logits, labels = logits[:, :-1, :], labels[:, 1:]  # (B, T-1, V), (B, T-1)
    logits = _upcast(logits.reshape(-1, logits.shape[-1]))  # (N, C)
    labels = labels.reshape(-1)  # (N,)
    total = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    return total, labels.ne(-100).sum()


def _upcast(tensor: torch.Tensor) -> torch.Tensor:
    """Losses in at least fp32 (fp64 stays fp64: the exactness tests run in it)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _resolve_task(model, task: str) -> str:
    if task != "auto":
        return task
    base = unwrap_peft_model(model)
    name = type(base).__name__
    if name.endswith("ForCausalLM"):
        return "causal_lm"
    if name.endswith("ForSequenceClassification") or _find_head(base) is not None:
        return "classification"
    raise ValueError(
        f"`task='auto'` cannot tell what {name} is: set `task` to 'classification' (a sequence classifier with a "
        "linear head) or 'causal_lm'."
    )


def _resolve_weights(args: MLACConfig, task: str, model) -> dict:
    """The outer weights and head reset with their task-dependent defaults; refuses combinations that do not apply."""
    classifier = task == "classification"
    c = args.adapted_loss_weight if args.adapted_loss_weight is not None else (0.0 if classifier else 1.0)
    e = args.head_adjusted_loss_weight if args.head_adjusted_loss_weight is not None else (1.0 if classifier else 0.0)
    reset = args.reset_adversary_head if args.reset_adversary_head is not None else classifier
    if not classifier and e:
        raise ValueError(
            f"`head_adjusted_loss_weight` ({e}) applies to classifiers only: a causal LM's head is its vocabulary. "
            "Use `adapted_loss_weight` (the bounded harmful next-token loss)."
        )
    if not classifier and reset:
        raise ValueError("`reset_adversary_head=True` needs a classification head; a causal LM has none to reset.")
    if classifier and _find_head(unwrap_peft_model(model)) is None:
        raise ValueError(f"could not find the classification head of {type(unwrap_peft_model(model)).__name__}.")
    if args.adversary_params == "lora" and not _is_peft_model(model):
        raise ValueError("`adversary_params='lora'` needs LoRA adapters: pass `peft_config` or a PeftModel.")
    if args.adversary_params == "head" and not reset and not classifier and model.get_output_embeddings() is None:
        raise ValueError("`adversary_params='head'` needs an output embedding (lm_head) on a causal LM.")
    return {"c": float(c), "d": float(args.grad_norm_weight), "e": float(e), "reset_head": reset}


def _check_attention(model, args: MLACConfig, grad_norm_weight: float) -> None:
    """A double backward needs eager attention or SDPA (run with the MATH kernel); anything else is refused."""
    needs_double_backward = (args.num_differentiated_steps > 0 and args.inner_steps > 0) or grad_norm_weight > 0
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if needs_double_backward and implementation not in ("eager", "sdpa"):
        raise ValueError(
            f"meta_gradient={args.meta_gradient!r} differentiates through inner gradients, which needs a second "
            f"derivative of attention; attn_implementation={implementation!r} has none. Load the model with "
            "`attn_implementation='eager'` (or 'sdpa', which MLAC runs with the MATH kernel), or use "
            "meta_gradient='first_order'."
        )


def _attention_context(model):
    """SDPA's fused CPU/CUDA kernels have no double backward; its MATH kernel has (plain differentiable ops)."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation == "sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def _find_head(model) -> tuple[str, nn.Linear] | None:
    """`(qualified name, Linear)` of a classifier's output projection (last Linear of a multi-layer head)."""
    for attribute in _HEAD_ATTRIBUTES:
        head = getattr(model, attribute, None)
        if head is None:
            continue
        active = getattr(head, "modules_to_save", None)  # PEFT's ModulesToSaveWrapper: the trainable copy
        if active is not None and getattr(head, "active_adapter", None) is not None:
            adapter = head.active_adapter
            head = active[adapter if isinstance(adapter, str) else adapter[0]]
        if isinstance(head, nn.Linear):
            return attribute, head
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if isinstance(head, nn.Module) else []
        if linears:
            return attribute, linears[-1]
    return None


def _classification_head(model) -> tuple[str, nn.Linear]:
    found = _find_head(unwrap_peft_model(model))
    if found is None:
        raise ValueError(f"could not find the classification head of {type(model).__name__}.")
    return found


def _head_parameter_names(model, task: str) -> tuple[str | None, str | None]:
    """Names (in `model.named_parameters()`) of the head's weight and bias the adversary uses."""
    if task == "causal_lm":
        head = model.get_output_embeddings()
    else:
        head = _classification_head(model)[1]
    names = {id(p): n for n, p in model.named_parameters()}
    bias = getattr(head, "bias", None)
    return names.get(id(head.weight)), names.get(id(bias)) if bias is not None else None


def _harmful_classes(harmful: Dataset, args: MLACConfig, model, reset_head: bool) -> int:
    column = "labels" if "labels" in harmful.column_names else "label"
    labels = harmful[column]
    if not labels or not all(isinstance(y, int) and not isinstance(y, bool) for y in labels):
        raise ValueError(f"`harmful_dataset` needs integer class labels in `{column}` for a classifier.")
    classes = args.adversary_num_labels or max(labels) + 1
    if min(labels) < 0 or max(labels) >= classes:
        raise ValueError(
            f"`harmful_dataset` labels span {min(labels)}..{max(labels)}, outside 0..{classes - 1} "
            f"(adversary_num_labels={args.adversary_num_labels!r})."
        )
    if not reset_head:
        head = _classification_head(model)[1]
        if classes > head.out_features:
            raise ValueError(
                f"reset_adversary_head=False makes the adversary use the model's own head ({head.out_features} "
                f"outputs), but the blocked task has {classes} classes."
            )
    return max(classes, 2)


def _as_mlac_config(args, model) -> MLACConfig:
    if args is None:
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or "model"
        return MLACConfig(f"{str(name).rstrip('/').split('/')[-1]}-MLAC")
    if isinstance(args, MLACConfig):
        return args
    if isinstance(args, TrainingArguments):  # MLAC's fields at their defaults
        values = args.to_dict()
        values["hub_token"] = args.hub_token  # to_dict hides it
        return MLACConfig(**{k: v for k, v in values.items() if k in MLACConfig.__dataclass_fields__})
    raise TypeError(f"`args` must be an MLACConfig or TrainingArguments, got {type(args).__name__}.")
