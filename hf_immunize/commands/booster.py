"""`hf-immunize booster` / `accelerate launch scripts/booster.py`: Booster alignment from a YAML recipe.

Data. `dataset_name` (a local file or folder, a Hub id, or `toy`) is read by its columns:
- a refusal file (`prompt, response, refusal`, the RepNoise/Booster layout; or `prompt, continuation, refusal`):
  alignment = prompt -> refusal, harmful = prompt -> harmful answer, row for row (`refusal_rows` picks a half-open
  row range, as the paper's rows 5000-10000);
- any layout SFTTrainer trains on (`text` or the `dataset_text_field` column, `messages`, ShareGPT
  `conversations`, `prompt` + `completion`, pre-tokenized `input_ids`): the alignment set as it is; the harmful set
  then comes from `harmful_dataset_name`;
- `toy`: the offline safety world (`toy_world` = keyword arguments of `make_safety_world`).
`harmful_dataset_name` gives (or replaces) the harmful set: any SFT layout, a refusal file (its harmful answers) or
BeaverTails (`prompt, response, is_safe, category`: the unsafe rows). `prompt_template` wraps plain-text prompts of
prompt-completion rows; conversational rows use the tokenizer's chat template.

    hf-immunize booster --config recipes/booster_tiny.yaml --max_steps 20
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hf_immunize.commands.common import (
    ScriptArguments,
    causal_lm_init_kwargs,
    check_model_source,
    check_output_dir,
    finish_run,
    load_tokenizer,
    make_method_parser,
    parse_args,
    peft_config_from,
)
from hf_immunize.commands.help import CommandHelp

__all__ = ["BoosterScriptArguments", "load_booster_data", "main", "make_parser"]


@dataclass
class BoosterScriptArguments(ScriptArguments):
    r"""
    Parameters:
        refusal_rows (`list[int]`, *optional*):
            `[start, stop)` rows of the refusal file to use (the paper: 5000 10000).
    """

    refusal_rows: list[int] | None = field(
        default=None, metadata={"help": "Half-open row range [start, stop) of the refusal file."}
    )

    def __post_init__(self):
        super().__post_init__()
        rows = self.refusal_rows
        if rows is not None and (len(rows) != 2 or not 0 <= rows[0] < rows[1]):
            raise ValueError(f"`refusal_rows` must be two rows `start stop` with 0 <= start < stop, got {rows}.")


def make_parser():
    from hf_immunize.methods.booster import BoosterConfig

    return make_method_parser(BoosterConfig, BoosterScriptArguments)


HELP = CommandHelp("booster", BoosterScriptArguments, "methods/booster/booster_config.py", "BoosterConfig", __doc__)


def load_booster_data(script_args: BoosterScriptArguments, training_args=None):
    """(alignment, harmful) datasets in layouts SFT reads; plain prompts wrapped by `prompt_template`."""
    from hf_immunize.data.adapters import load_beavertails, load_refusal_file, load_source

    text_field = getattr(training_args, "dataset_text_field", "text")
    if script_args.dataset_name == "toy":
        from hf_immunize.data.toy import make_safety_world

        world = make_safety_world(**(script_args.toy_world or {}))
        alignment = world.alignment
        harmful = _harmful_answers(world.alignment_harmful)
    else:
        source = load_source(
            script_args.dataset_name,
            split=script_args.dataset_train_split,
            name=script_args.dataset_config,
            dataset_label="dataset_name",
        )
        if "refusal" in source.column_names:
            rows = load_refusal_file(source)
            if script_args.refusal_rows is not None:
                start, stop = script_args.refusal_rows
                if stop > len(rows):
                    raise ValueError(
                        f"`refusal_rows` {script_args.refusal_rows} exceed the {len(rows)} rows of the file."
                    )
                rows = rows.select(range(start, stop))
            alignment = rows.map(lambda r: {"completion": r["refusal"]}, remove_columns=["harmful", "refusal"])
            harmful = _harmful_answers(rows)
        else:
            if script_args.refusal_rows is not None:
                raise ValueError(
                    f"`refusal_rows` picks rows of a refusal file (`prompt, response, refusal`); `dataset_name` "
                    f"{script_args.dataset_name!r} has columns {source.column_names}."
                )
            alignment = _sft_rows(source, "dataset_name", text_field)
            harmful = None
    if script_args.harmful_dataset_name is not None:
        other = load_source(
            script_args.harmful_dataset_name,
            split=script_args.harmful_dataset_split,
            dataset_label="harmful_dataset_name",
        )
        columns = set(other.column_names)
        if {"response", "is_safe", "category"} <= columns:
            harmful = load_beavertails(other, unsafe_only=True).select_columns(["prompt", "completion"])
        elif "refusal" in columns:
            harmful = _harmful_answers(load_refusal_file(other))
        else:
            harmful = _sft_rows(other, "harmful_dataset_name", text_field)
    if harmful is None:
        raise ValueError(
            f"`dataset_name` {script_args.dataset_name!r} holds alignment rows only (columns "
            f"{alignment.column_names}); Booster also needs harmful rows: give `harmful_dataset_name` (any SFT "
            "layout, a refusal file or BeaverTails), or use a refusal file (`prompt, response, refusal`) for both."
        )
    if script_args.prompt_template != "none":
        alignment = _wrap_prompts(alignment, script_args, "dataset_name")
        harmful = _wrap_prompts(harmful, script_args, "harmful_dataset_name")
    return alignment, harmful


def _harmful_answers(rows):
    return rows.map(lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"])


def _sft_rows(dataset, label: str, text_field: str):
    """`dataset` as it is when SFT can read it (the layout check of the trainers, here before any model loads)."""
    from types import SimpleNamespace

    from hf_immunize.core.sft_data import check_sft_rows

    check_sft_rows(dataset, SimpleNamespace(dataset_text_field=text_field), name=f"`{label}`")
    return dataset


def _wrap_prompts(dataset, script_args, label: str):
    prompts = dataset["prompt"] if "prompt" in dataset.column_names else None
    if prompts is None or not all(isinstance(p, str) for p in prompts):
        raise ValueError(
            f"`prompt_template`={script_args.prompt_template!r} wraps plain-text prompts of `prompt`/`completion` "
            f"rows; the `{label}` rows have columns {dataset.column_names}. Use prompt_template 'none' (chat rows use "
            "the tokenizer's chat template)."
        )
    return dataset.map(lambda r: {"prompt": script_args.format_prompt(r["prompt"])})


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse_args(make_parser, argv, HELP)
    from hf_immunize.methods.booster import BoosterTrainer

    check_model_source(script_args, model_args)
    check_output_dir(training_args, "booster", script_args, model_args)
    peft_config = peft_config_from(model_args)
    alignment, harmful = load_booster_data(script_args, training_args)
    if script_args.tiny_model is not None:
        from hf_immunize.testing import tiny_causal_lm

        model = tiny_causal_lm(**script_args.tiny_model)
    else:
        model = model_args.model_name_or_path  # SFTTrainer loads it with `model_init_kwargs`
        user_kwargs = training_args.model_init_kwargs or {}
        training_args.model_init_kwargs = {**causal_lm_init_kwargs(model_args), **user_kwargs}
    tokenizer = load_tokenizer(model_args, script_args)
    trainer = BoosterTrainer(
        model=model,
        args=training_args,
        train_dataset=alignment,
        harmful_dataset=harmful,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    finish_run(trainer, script_args, training_args, "booster")


if __name__ == "__main__":
    main()
