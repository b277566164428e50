"""`hf-immunize unlearn` / `accelerate launch scripts/unlearn.py`: unlearning from a YAML recipe.

With `unlearning_loss: whp` (default) the whole pipeline runs in one command: reinforce (a LoRA adapter on the model by
default, `reinforce_full_copy: true` for a full copy) → generic labels (from `anchored_terms`, a JSON file or
string) → fine-tune. The other unlearning losses train directly on the forget corpus, with `retain_dataset_name` for
grad_diff / npo.

Data: `dataset_name` is the forget corpus: a `.txt` file (read whole), a local json/jsonl/csv/parquet file or
directory with a `text` column (`text_column`), a Hub id, or `toy` for the offline book world (`toy_world` =
keyword arguments of `make_book_world`; its dictionary and retain passages are used unless given).

    hf-immunize unlearn --config recipes/unlearn_tiny.yaml --max_steps 20
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hf_immunize.commands.common import (
    ScriptArguments,
    causal_lm_init_kwargs,
    check_model_source,
    check_output_dir,
    finish_run,
    load_tokenizer,
    make_method_parser,
    mark_run,
    parse_args,
    peft_config_from,
)
from hf_immunize.commands.help import CommandHelp

__all__ = ["UnlearnScriptArguments", "load_unlearn_data", "main", "make_parser"]


@dataclass
class UnlearnScriptArguments(ScriptArguments):
    r"""
    Parameters:
        anchored_terms (`str`, *optional*):
            WHP dictionary `{term: substitute | [substitutes]}`: a JSON file or a JSON string.
        text_column (`str`, *optional*, defaults to `"text"`):
            Column of the forget (and retain) rows that holds the text.
        retain_dataset_name (`str`, *optional*):
            Retain data for grad_diff / npo (same forms as `dataset_name`).
        retain_dataset_split (`str`, *optional*, defaults to `"train"`):
            Split of `retain_dataset_name`.
        reinforce_full_copy (`bool`, *optional*, defaults to `False`):
            Reinforce a full copy of the model instead of a LoRA adapter (two full models while labels are built).
        reinforce_lora_r (`int`, *optional*, defaults to `16`):
            Rank of the reinforcement adapter (all linear layers but the LM head).
        reinforce_num_train_epochs (`float`, *optional*, defaults to `3.0`):
            Epochs of reinforcement (reference: 3, uncertain).
        reinforce_max_steps (`int`, *optional*, defaults to `-1`):
            Steps of reinforcement; > 0 overrides the epochs.
        reinforce_learning_rate (`float`, *optional*, defaults to `3e-6`):
            Learning rate of reinforcement (reference: 3e-6 for a 7B full fine-tune, uncertain).
        reinforce_batch_size (`int`, *optional*, defaults to `8`):
            Per-device batch of reinforcement.
        reinforce_gradient_accumulation_steps (`int`, *optional*, defaults to `16`):
            Gradient accumulation of reinforcement (reference: 16, uncertain).
        label_batch_size (`int`, *optional*, defaults to `4`):
            Blocks per forward pass while labels are built.
        labels_output (`str`, *optional*):
            Directory to save the labelled dataset to (`Dataset.save_to_disk`).
    """

    anchored_terms: str | None = field(default=None, metadata={"help": "WHP dictionary: a JSON file or string."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    retain_dataset_name: str | None = field(default=None, metadata={"help": "Retain data (grad_diff, npo)."})
    retain_dataset_split: str = field(default="train", metadata={"help": "Split of `retain_dataset_name`."})
    reinforce_full_copy: bool = field(default=False, metadata={"help": "Reinforce a full copy, not a LoRA adapter."})
    reinforce_lora_r: int = field(default=16, metadata={"help": "Rank of the reinforcement adapter."})
    reinforce_num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs of reinforcement."})
    reinforce_max_steps: int = field(default=-1, metadata={"help": "Steps of reinforcement (> 0 overrides epochs)."})
    reinforce_learning_rate: float = field(default=3e-6, metadata={"help": "Learning rate of reinforcement."})
    reinforce_batch_size: int = field(default=8, metadata={"help": "Per-device batch of reinforcement."})
    reinforce_gradient_accumulation_steps: int = field(
        default=16, metadata={"help": "Gradient accumulation of reinforcement."}
    )
    label_batch_size: int = field(default=4, metadata={"help": "Blocks per forward pass while building labels."})
    labels_output: str | None = field(default=None, metadata={"help": "Save the labelled dataset here."})

    def __post_init__(self):
        super().__post_init__()
        for name in ("reinforce_lora_r", "reinforce_batch_size", "reinforce_gradient_accumulation_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if not self.reinforce_learning_rate > 0:
            raise ValueError(f"`reinforce_learning_rate` must be > 0, got {self.reinforce_learning_rate!r}.")
        if self.label_batch_size < 1:
            raise ValueError(f"`label_batch_size` must be >= 1, got {self.label_batch_size!r}.")


def make_parser():
    from hf_immunize.methods.unlearn import UnlearnConfig

    return make_method_parser(UnlearnConfig, UnlearnScriptArguments)


HELP = CommandHelp("unlearn", UnlearnScriptArguments, "methods/unlearn/unlearn_config.py", "UnlearnConfig", __doc__)


def _texts(source: str, split: str, column: str, label: str, config: str | None = None):
    from datasets import Dataset

    from hf_immunize.data.adapters import load_source

    if source.endswith(".txt") and Path(source).is_file():
        return Dataset.from_dict({"text": [Path(source).read_text(encoding="utf-8")]})
    data = load_source(source, split=split, name=config, dataset_label=label)
    if column not in data.column_names:
        raise ValueError(f"{label}: no `{column}` column (set `text_column`); columns: {data.column_names}.")
    return data.select_columns([column]).rename_column(column, "text") if column != "text" else data


def load_unlearn_data(script_args, unlearning_loss: str):
    """(forget `text` rows, retain rows or None, anchored-term dict or None)."""
    from hf_immunize.methods.unlearn import load_anchored_terms

    retain, terms = None, None
    if script_args.dataset_name == "toy":
        from hf_immunize.data.toy import make_book_world

        world = make_book_world(**(script_args.toy_world or {}))
        forget, retain, terms = world.forget, world.retain, world.anchored_terms
    else:
        forget = _texts(
            script_args.dataset_name,
            script_args.dataset_train_split,
            script_args.text_column,
            "dataset_name",
            script_args.dataset_config,
        )
    if script_args.retain_dataset_name is not None:
        retain = _texts(
            script_args.retain_dataset_name,
            script_args.retain_dataset_split,
            script_args.text_column,
            "retain_dataset_name",
        )
    if script_args.anchored_terms is not None:
        terms = load_anchored_terms(script_args.anchored_terms)
    if unlearning_loss == "whp" and not terms:
        raise ValueError(
            "unlearning_loss='whp' needs `anchored_terms` (a JSON file or string of term -> substitutes)."
        )
    return forget, retain, terms


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse_args(make_parser, argv, HELP)
    from transformers import AutoModelForCausalLM

    from hf_immunize.methods.unlearn import UnlearnTrainer, prepare_whp
    from hf_immunize.methods.unlearn.reinforce import default_reinforce_lora
    from hf_immunize.utils import sft_config

    check_model_source(script_args, model_args)
    peft_config = peft_config_from(model_args)
    forget, retain, terms = load_unlearn_data(script_args, training_args.unlearning_loss)
    check_output_dir(training_args, "unlearn", script_args, model_args)
    tokenizer = load_tokenizer(model_args, script_args)
    if script_args.tiny_model is not None:
        from hf_immunize.testing import tiny_causal_lm

        model = tiny_causal_lm(**script_args.tiny_model)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path, **causal_lm_init_kwargs(model_args)
        )
    train_dataset = forget
    if training_args.unlearning_loss == "whp":
        mark_run(training_args, "unlearn", script_args)  # the reinforcement run writes into output_dir/reinforce
        reinforce_args = sft_config(
            Path(training_args.output_dir) / "reinforce",
            num_train_epochs=script_args.reinforce_num_train_epochs,
            max_steps=script_args.reinforce_max_steps,
            learning_rate=script_args.reinforce_learning_rate,
            per_device_train_batch_size=script_args.reinforce_batch_size,
            gradient_accumulation_steps=script_args.reinforce_gradient_accumulation_steps,
            max_length=training_args.block_size,
            seed=training_args.seed,
            bf16=training_args.bf16,
            use_cpu=training_args.use_cpu,
        )
        lora = default_reinforce_lora()
        lora.r, lora.lora_alpha = script_args.reinforce_lora_r, 2 * script_args.reinforce_lora_r
        use_lora = not script_args.reinforce_full_copy
        model, train_dataset, terms = prepare_whp(
            model,
            tokenizer,
            forget["text"],
            terms,
            training_args,
            reinforce_args=reinforce_args,
            use_lora_reinforce=use_lora,
            reinforce_lora_config=lora if use_lora else None,
            label_batch_size=script_args.label_batch_size,
        )
        if script_args.labels_output and training_args.process_index == 0:
            train_dataset.save_to_disk(script_args.labels_output)
    trainer = UnlearnTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        retain_dataset=retain if training_args.needs_retain else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if terms:
        trainer.whp_card_context["dictionary_size"] = len(terms)
    finish_run(trainer, script_args, training_args, "unlearn")


if __name__ == "__main__":
    main()
