"""Mistake analysis (Chen et al., "Gaining Wisdom from Setbacks", ICLR 2024, arXiv 2310.10477) on `trl.SFTTrainer`.

The method's novelty is in its data, not in its loss: the model is trained with plain completion-only SFT on
(instruction, bad response) -> analysis rows, mixed with helpful rows (see :mod:`.pipeline`). The trainer therefore
adds no math; it enforces what makes the training safe:

- completion-only loss: the bad response sits in the prompt, so its tokens are masked with -100 and never a target;
- no cue in any training prompt: a cue ("harmless, ethical and inoffensive", or the guided analysis statement) is
  for steps 1, 2 and 4 only; a data set that carries one is refused before any training;
- no `formatting_func` (TRL refuses it together with completion-only loss).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import fields

from transformers import TrainingArguments
from trl import SFTTrainer

from hf_immunize.core.trainer_mixin import ImmunizeTrainerMixin
from hf_immunize.methods.mistake_sft.mistake_sft_config import MistakeSFTConfig
from hf_immunize.methods.mistake_sft.pipeline import PROMPT_SETTINGS, cues_in, prompt_builders

__all__ = ["MistakeSFTTrainer"]

_CITATION = """@inproceedings{chen2024gaining,
  title     = {Gaining Wisdom from Setbacks: Aligning Large Language Models via Mistake Analysis},
  author    = {Kai Chen and Chunwei Wang and Kuo Yang and Jianhua Han and Lanqing Hong and Fei Mi and Hang Xu and
               Zhengying Liu and Wenyong Huang and Zhenguo Li and Dit-Yan Yeung and Lifeng Shang and Xin Jiang and
               Qun Liu},
  booktitle = {The Twelfth International Conference on Learning Representations},
  year      = {2024},
  url       = {https://arxiv.org/abs/2310.10477}
}"""


class MistakeSFTTrainer(ImmunizeTrainerMixin, SFTTrainer):
    """`trl.SFTTrainer` for mistake analysis: completion-only SFT on analysis + helpful rows, cue-free prompts.

    Takes every argument of `SFTTrainer` except `formatting_func` (any SFT dataset layout, `peft_config`,
    `quantization_config`, a model id string). Completion-only loss needs rows that say where the answer starts
    (prompt-completion, as `build_mistake_dataset` writes them, or `messages` with `assistant_only_loss=True`);
    plain text and `messages` rows are trained on every token, as under SFT. Build the training set with
    :func:`~hf_immunize.methods.mistake_sft.build_mistake_dataset`; its `source` column ("analysis" / "helpful") is
    counted here (model card) and then dropped by SFT's preparation like any extra column.

    Logged metrics: SFT's own (`loss`, `entropy`, `mean_token_accuracy`, `num_tokens`); the realised row counts per
    source are on the model card.

    >>> from hf_immunize import MistakeSFTConfig, MistakeSFTTrainer, build_mistake_dataset
    >>> from datasets import Dataset
    >>> from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer
    >>> args = MistakeSFTConfig(
    ...     output_dir="/tmp/mistake-doctest", max_steps=1, per_device_train_batch_size=2, use_cpu=True,
    ...     activation_checkpointing=False, report_to="none", save_strategy="no", helpful_ratio=1.0,
    ... )
    >>> pairs = Dataset.from_list([{"instruction": "How do I make the poison X?", "response": "Mix a with b.",
    ...                             "analysis": "It explains a poison. A safe reply refuses."}])
    >>> helpful = Dataset.from_list([{"instruction": "What is 2 plus 2?", "output": "4."}])
    >>> data = build_mistake_dataset(pairs, helpful=helpful, cfg=args)
    >>> sorted(data["source"])
    ['analysis', 'helpful']
    >>> trainer = MistakeSFTTrainer(
    ...     model=tiny_causal_lm(), args=args, train_dataset=data, processing_class=tiny_tokenizer()
    ... )
    >>> trainer.source_counts["train"]
    {'analysis': 1, 'helpful': 1}
    """

    _tag_names = ["trl", "sft", "hf-immunize", "mistake-analysis"]
    _name = "MistakeSFT"
    _paper = {
        "title": "Gaining Wisdom from Setbacks: Aligning Large Language Models via Mistake Analysis",
        "id": "2310.10477",
        "citation": _CITATION,
    }
    # SFT's loss is a token sum over `num_items_in_batch`, which __init__ makes the Trainer always count.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model,
        args: MistakeSFTConfig | TrainingArguments | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_loss_func=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        quantization_config=None,
        peft_config=None,
        formatting_func=None,
    ):
        args = _as_mistake_config(args, model)
        if formatting_func is not None:
            raise ValueError(
                f"`formatting_func`={formatting_func!r} is not supported by MistakeSFTTrainer: the loss must be on "
                "the completion only, which TRL cannot do with a formatting function. Pass `prompt`/`completion` rows "
                "(e.g. from `build_mistake_dataset`)."
            )
        datasets = {"train": train_dataset}
        if isinstance(eval_dataset, dict):
            datasets.update({f"eval_{k}": v for k, v in eval_dataset.items()})
        elif eval_dataset is not None:
            datasets["eval"] = eval_dataset
        self.source_counts = {}
        for name, dataset in datasets.items():
            _check_no_cue(dataset, args, name)
            if dataset is not None and "source" in (getattr(dataset, "column_names", None) or []):
                self.source_counts[name] = dict(sorted(Counter(dataset["source"]).items()))
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            quantization_config=quantization_config,
            peft_config=peft_config,
            formatting_func=None,
        )
        self._refuse_sharded_training("MistakeSFT", edits_weights=False)  # refuses FSDP1 only
        # SFT divides its loss by `num_items_in_batch` itself and never passes it to the model, so counting it is
        # always right; without it, a model whose forward lacks `**kwargs` would get per-micro-batch means.
        self.model_accepts_loss_kwargs = True

    def _card_hyperparameters(self) -> dict:
        args = self.args
        return {
            "mistake_source": args.mistake_source,
            "helpful_ratio": args.helpful_ratio,
            "induce_cue (step 1)": args.induce_cue,
            "analysis_cue (step 2)": args.analysis_cue,
            "respond_cue (step 4)": args.respond_cue,
            "cue_position": args.cue_position,
        }

    def _measure_options(self) -> dict:
        return prompt_builders(self.args)

    def _run_record_evaluation(self) -> dict:
        return {"prompt_settings": {name: getattr(self.args, name) for name in PROMPT_SETTINGS}}

    def _card_training_data(self, dataset_names: list[str]) -> list[str]:
        lines = super()._card_training_data(dataset_names)
        counts = self.source_counts.get("train")
        if counts:  # the realised mix of the training set (invariant 4 of the spec)
            lines.append("training rows by source: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return lines


def _prompts_of(dataset) -> list[str]:
    """The prompt text of every row a model will be trained on (plain text rows have no separate prompt)."""
    columns = getattr(dataset, "column_names", None) or []
    if "prompt" in columns:
        prompts = dataset["prompt"]
        return [p if isinstance(p, str) else " ".join(m.get("content", "") for m in p) for p in prompts]
    if "messages" in columns:  # every non-assistant turn is prompt
        return [
            " ".join(m.get("content", "") for m in messages if m.get("role") != "assistant")
            for messages in dataset["messages"]
        ]
    return []


def _check_no_cue(dataset, args: MistakeSFTConfig, name: str) -> None:
    if dataset is None or not hasattr(dataset, "column_names"):  # iterable data sets are not scanned
        return
    for index, prompt in enumerate(_prompts_of(dataset)):
        found = cues_in(prompt, args)
        if found:
            raise ValueError(
                f"`{name}` row {index}: the prompt contains the cue(s) {found}. Mistake analysis trains on prompts "
                "without any cue (cues belong to induction, guided analysis and inference only); build the rows with "
                "`build_mistake_dataset`."
            )


def _as_mistake_config(args, model) -> MistakeSFTConfig:
    if args is None:
        name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
        return MistakeSFTConfig(f"{str(name).rstrip('/').split('/')[-1]}-MistakeSFT")
    if isinstance(args, MistakeSFTConfig):
        return args
    if isinstance(args, TrainingArguments):  # an SFTConfig or TrainingArguments: our fields at their defaults
        # Read the attributes, not `to_dict()`, which masks every `*_token` field (`pad_token` -> "<PAD_TOKEN>").
        values = {f.name: getattr(args, f.name) for f in fields(args) if f.init}
        values = {k: v for k, v in values.items() if k in MistakeSFTConfig.__dataclass_fields__}
        if values.get("completion_only_loss") is None:
            values["completion_only_loss"] = True
        return MistakeSFTConfig(**values)
    raise TypeError(
        f"`args` must be a MistakeSFTConfig, an SFTConfig or TrainingArguments, got {type(args).__name__}."
    )
