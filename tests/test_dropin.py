"""Drop-in contract: the `SFTTrainer` usage patterns of TRL's docs, run with `SFTTrainer` and with each of our three
SFT-based trainers. Every pattern either behaves as under SFT (checked exactly, see below) or is refused with a message
that says why (the `REFUSED` table, also listed in docs/reliability.md).

What "behaves as under SFT" means, per trainer (one SGD step, no clipping, the same seed and data):
- `MistakeSFTTrainer` adds no math: its weights after the step are SFT's, bit for bit.
- `BoosterTrainer` with `regularizer_weight=0` runs its harmful passes on a fork of the RNG and adds nothing: SFT's
  weights, bit for bit. Its harmful set, given the same rows in the same layout, is prepared into the very rows SFT
  prepares for training.
- `UnlearnTrainer`: `grad_ascent` ascends SFT's token loss with SFT's normaliser, so its update is exactly minus
  SFT's; `whp` (pre-tokenized rows with generic `labels`) is SFT's loss, so SFT's weights. The retain set of
  `grad_diff`, given the same rows, is prepared into SFT's rows.
- `evaluate()` gives SFT's `eval_loss` for all of them.
Same weights, same data and the same code path mean the same operations in the same order, so the bit-exact
comparisons hold on any CPU.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainingArguments
from trl import SFTConfig, SFTTrainer

from hf_immunize import (
    BoosterConfig,
    BoosterTrainer,
    MistakeSFTConfig,
    MistakeSFTTrainer,
    UnlearnConfig,
    UnlearnTrainer,
)
from hf_immunize.testing import parameters_snapshot, tiny_run_args

N = 8
QUESTIONS = [f"What is item {i}?" for i in range(N)]
ANSWERS = [f"Item {i} is a small red cake" + " with jam" * (i % 3) + "." for i in range(N)]


def _turns(i: int, role="role", content="content", user="user", assistant="assistant") -> list[dict]:
    return [{role: user, content: QUESTIONS[i]}, {role: assistant, content: ANSWERS[i]}]


def _layouts(tokenizer) -> dict[str, Dataset]:
    ids = [tokenizer(f"User: {q}\nAssistant: {a}")["input_ids"] for q, a in zip(QUESTIONS, ANSWERS, strict=True)]
    prompt_lengths = [len(tokenizer(f"User: {q}\nAssistant:")["input_ids"]) for q in QUESTIONS]
    return {
        "text": Dataset.from_dict({"text": [f"User: {q}\nAssistant: {a}" for q, a in zip(QUESTIONS, ANSWERS)]}),
        "messages": Dataset.from_dict({"messages": [_turns(i) for i in range(N)]}),
        "prompt_completion": Dataset.from_dict(
            {"prompt": [f"User: {q}\nAssistant:" for q in QUESTIONS], "completion": [f" {a}" for a in ANSWERS]}
        ),
        "prompt_completion_chat": Dataset.from_dict(
            {"prompt": [_turns(i)[:1] for i in range(N)], "completion": [_turns(i)[1:] for i in range(N)]}
        ),
        "sharegpt_conversations": Dataset.from_dict(
            {"conversations": [_turns(i, "from", "value", "human", "gpt") for i in range(N)]}
        ),
        "pretokenized": Dataset.from_dict({"input_ids": ids}),
        "pretokenized_labels": Dataset.from_dict(
            {"input_ids": ids, "labels": [[-100] * n + x[n:] for x, n in zip(ids, prompt_lengths, strict=True)]}
        ),
        "dataset_text_field": Dataset.from_dict({"body": [f"{q} {a}" for q, a in zip(QUESTIONS, ANSWERS)]}),
        "formatting_func": Dataset.from_dict({"question": QUESTIONS, "answer": ANSWERS}),
    }


def _format(row) -> str:
    return f"User: {row['question']}\nAssistant: {row['answer']}"


# pattern -> (layout, extra config, extra trainer kwargs); the config/kwargs values that need objects are built later.
PATTERNS = {
    "text": ("text", {}, {}),
    "messages": ("messages", {}, {}),
    "prompt_completion": ("prompt_completion", {}, {}),
    "prompt_completion_chat": ("prompt_completion_chat", {}, {}),
    "sharegpt_conversations": ("sharegpt_conversations", {}, {}),
    "pretokenized": ("pretokenized", {}, {}),
    "pretokenized_labels": ("pretokenized_labels", {}, {}),
    "dataset_text_field": ("dataset_text_field", {"dataset_text_field": "body"}, {}),
    "formatting_func": ("formatting_func", {}, {"formatting_func": _format}),
    "packing": ("prompt_completion", {"packing": True, "per_device_train_batch_size": 1}, {}),
    "packing_wrapped": ("text", {"packing": True, "packing_strategy": "wrapped", "max_length": 16}, {}),
    "completion_only_loss_false": ("prompt_completion", {"completion_only_loss": False}, {}),
    "assistant_only_loss": ("messages", {"assistant_only_loss": True}, {}),
    "peft_lora": ("prompt_completion", {}, {"peft_config": "lora"}),
    "gradient_checkpointing": ("prompt_completion", {"activation_checkpointing": True}, {}),
    "training_arguments": ("prompt_completion", {"__class__": TrainingArguments}, {}),
    "eval_dataset": ("prompt_completion", {}, {"eval_dataset": True}),
}

# (trainer, pattern) -> the words the refusal must contain. Every entry is a documented difference from SFTTrainer.
REFUSED = {
    ("mistake_sft", "formatting_func"): "`formatting_func`=.* is not supported by MistakeSFTTrainer",
    ("mistake_sft", "completion_only_loss_false"): "`completion_only_loss` must be True for mistake analysis",
    **{
        ("unlearn_whp", p): "unlearning_loss='whp' trains on generic labels"
        for p, (layout, _, _) in PATTERNS.items()
        if layout != "pretokenized_labels"
    },
    # A plain TrainingArguments carries no unlearning field, so UnlearnTrainer runs its default loss, whp.
    ("unlearn_grad_ascent", "training_arguments"): "unlearning_loss='whp' trains on generic labels",
}
TRAINERS = ["mistake_sft", "booster", "unlearn_grad_ascent", "unlearn_whp"]


def _config(cls, output_dir, extra: dict):
    extra = dict(extra)
    cls = extra.pop("__class__", cls)
    kwargs = tiny_run_args(output_dir, max_steps=1, per_device_train_batch_size=2, optim="sgd", max_grad_norm=0.0)
    kwargs.update(extra)
    if cls is TrainingArguments:  # a plain TrainingArguments has none of SFT's fields
        kwargs = {k: v for k, v in kwargs.items() if k in TrainingArguments.__dataclass_fields__}
    return cls(**kwargs)


def _run(kind, lm_path, tokenizer, layouts, pattern, tmp_path, evaluate_first=False):
    """Builds the trainer for `kind` and the pattern, trains one step; returns (trainer, weights before, eval loss)."""
    from peft import LoraConfig

    layout, extra_config, extra_kwargs = PATTERNS[pattern]
    data = layouts[layout]
    model = AutoModelForCausalLM.from_pretrained(lm_path)
    kwargs = {"processing_class": tokenizer, "train_dataset": data}
    for key, value in extra_kwargs.items():
        if key == "peft_config":
            value = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        if key == "eval_dataset":
            value = data
        kwargs[key] = value
    out = tmp_path / kind
    if kind == "sft":
        trainer = SFTTrainer(model=model, args=_config(SFTConfig, out, extra_config), **kwargs)
    elif kind == "mistake_sft":
        trainer = MistakeSFTTrainer(model=model, args=_config(MistakeSFTConfig, out, extra_config), **kwargs)
    elif kind == "booster":
        trainer = BoosterTrainer(
            model=model, args=_config(BoosterConfig, out, extra_config), harmful_dataset=data, **kwargs
        )
        trainer.args.regularizer_weight = 0.0  # set after init: a TrainingArguments becomes a BoosterConfig there
    else:
        args = _config(UnlearnConfig, out, extra_config)
        if isinstance(args, UnlearnConfig):  # a TrainingArguments gives UnlearnConfig's default loss, whp
            args.unlearning_loss = kind.removeprefix("unlearn_")
        trainer = UnlearnTrainer(model=model, args=args, **kwargs)
    eval_loss = trainer.evaluate()["eval_loss"] if evaluate_first else None
    before = parameters_snapshot(trainer.model)
    trainer.train()
    return trainer, before, eval_loss


@pytest.fixture(scope="module")
def layouts(tiny_tokenizer):
    return _layouts(tiny_tokenizer)


@pytest.fixture(scope="module")
def sft_runs(tiny_lm_path, tiny_tokenizer, layouts, tmp_path_factory):
    """SFTTrainer's result per pattern (it must accept every one), computed once."""
    return {}


def _sft(pattern, sft_runs, tiny_lm_path, tiny_tokenizer, layouts, tmp_path_factory):
    if pattern not in sft_runs:
        tmp = tmp_path_factory.mktemp(f"sft-{pattern}")
        trainer, before, eval_loss = _run(
            "sft", tiny_lm_path, tiny_tokenizer, layouts, pattern, tmp, evaluate_first=pattern == "eval_dataset"
        )
        after = parameters_snapshot(trainer.model)
        assert any(not torch.equal(after[n], before[n]) for n in after), "SFT did not train"
        sft_runs[pattern] = {"trainer": trainer, "before": before, "after": after, "eval_loss": eval_loss}
    return sft_runs[pattern]


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("kind", TRAINERS)
def test_sft_usage_pattern_behaves_as_under_sft_or_is_refused_with_a_reason(
    kind, pattern, sft_runs, tiny_lm_path, tiny_tokenizer, layouts, tmp_path, tmp_path_factory
):
    sft = _sft(pattern, sft_runs, tiny_lm_path, tiny_tokenizer, layouts, tmp_path_factory)
    refusal = REFUSED.get((kind, pattern))
    if refusal is not None:
        with pytest.raises(ValueError, match=refusal):
            _run(kind, tiny_lm_path, tiny_tokenizer, layouts, pattern, tmp_path)
        assert not (tmp_path / kind).exists() or not any((tmp_path / kind).iterdir())
        return
    trainer, before, eval_loss = _run(
        kind, tiny_lm_path, tiny_tokenizer, layouts, pattern, tmp_path, evaluate_first=pattern == "eval_dataset"
    )
    after = parameters_snapshot(trainer.model)
    assert before.keys() == sft["before"].keys()
    assert all(torch.equal(before[n], sft["before"][n]) for n in before)  # the same start (PEFT init included)
    if kind == "unlearn_grad_ascent":  # −∇NLL with SFT's normaliser: the negated SFT update
        largest_step = largest_slack = 0.0
        for name in after:
            sft_update = sft["after"][name] - sft["before"][name]
            # The gradients are exact negatives; w + δ and w − δ each round to half an ulp of the result, so the two
            # updates may differ by up to eps·(|w| + |δ|) (times 2 for a binade), far below the step itself.
            eps = torch.finfo(before[name].dtype).eps
            slack = 2 * eps * (before[name].abs() + sft_update.abs()) + 1e-12
            assert ((after[name] - before[name]) + sft_update).abs().le(slack).all(), name
            largest_step = max(largest_step, sft_update.abs().max().item())
            largest_slack = max(largest_slack, slack.max().item())
        assert largest_step > 100 * largest_slack  # the comparison is meaningful
    else:
        assert all(torch.equal(after[n], sft["after"][n]) for n in after), f"{kind} trained unlike SFT"
    if eval_loss is not None:
        assert eval_loss == sft["eval_loss"]
    # The second data set, in the same layout, is prepared into SFT's own rows.
    stream = getattr(trainer, "harmful_stream", None)
    if stream is not None:
        _assert_same_rows(stream.dataset, sft["trainer"].train_dataset)


@pytest.mark.parametrize("pattern", [p for p in PATTERNS if p not in ("peft_lora", "gradient_checkpointing")])
def test_retain_set_in_any_sft_layout_is_prepared_like_the_training_set(
    pattern, sft_runs, tiny_lm_path, tiny_tokenizer, layouts, tmp_path, tmp_path_factory
):
    sft = _sft(pattern, sft_runs, tiny_lm_path, tiny_tokenizer, layouts, tmp_path_factory)
    layout, extra_config, extra_kwargs = PATTERNS[pattern]
    args = _config(UnlearnConfig, tmp_path, extra_config)
    if not isinstance(args, UnlearnConfig):
        pytest.skip("a plain TrainingArguments selects the default loss (whp); covered by the test above")
    args.unlearning_loss = "grad_diff"
    trainer = UnlearnTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm_path),
        args=args,
        train_dataset=layouts[layout],
        retain_dataset=layouts[layout],
        processing_class=tiny_tokenizer,
        **{k: v for k, v in extra_kwargs.items() if k == "formatting_func"},
    )
    _assert_same_rows(trainer.retain_stream.dataset, sft["trainer"].train_dataset)


def _assert_same_rows(prepared, reference) -> None:
    assert len(prepared) == len(reference)
    for column in ("input_ids", "labels"):
        assert prepared[column] == reference[column], column


def test_tags_keep_trls_and_add_ours(tiny_lm_path, tiny_tokenizer, layouts, tmp_path):
    """Hub users filter by `trl` and `sft`: our SFT-based trainers keep those tags and add `hf-immunize` and the
    method's own, on the model (`model_tags`, what `push_to_hub` uploads) and on the class."""
    for cls, method in (
        (BoosterTrainer, "booster"),
        (UnlearnTrainer, "unlearn"),
        (MistakeSFTTrainer, "mistake-analysis"),
    ):
        assert cls._tag_names[:3] == ["trl", "sft", "hf-immunize"] and method in cls._tag_names
    trainer, _, _ = _run("booster", tiny_lm_path, tiny_tokenizer, layouts, "prompt_completion", tmp_path)
    assert {"trl", "sft", "hf-immunize", "booster"} <= set(trainer.model.model_tags)
