"""`hf-immunize booster` / `accelerate launch scripts/booster.py`: Booster alignment from a YAML recipe.

Data: `dataset_name` is a refusal file in the RepNoise/Booster layout (`prompt, response, refusal`), read with
:func:`hf_immunize.data.adapters.load_refusal_file`: alignment = prompt → refusal, harmful = prompt → harmful answer,
row for row (`refusal_rows` picks a half-open row range, as the paper's rows 5000-10000). `harmful_dataset_name`
replaces the harmful half by another source with `prompt, completion` columns (or BeaverTails, unsafe rows only).
`dataset_name: toy` uses the offline safety world (`toy_world` = keyword arguments of `make_safety_world`).

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


def load_booster_data(script_args: BoosterScriptArguments):
    """(alignment, harmful) as prompt/completion datasets, prompts wrapped by `prompt_template`."""
    from hf_immunize.data.adapters import load_beavertails, load_refusal_file, load_source

    if script_args.dataset_name == "toy":
        from hf_immunize.data.toy import make_safety_world

        world = make_safety_world(**(script_args.toy_world or {}))
        rows = world.alignment_harmful
        alignment = world.alignment
    else:
        source = load_source(
            script_args.dataset_name,
            split=script_args.dataset_train_split,
            name=script_args.dataset_config,
            dataset_label="dataset_name",
        )
        rows = load_refusal_file(source)
        if script_args.refusal_rows is not None:
            start, stop = script_args.refusal_rows
            if stop > len(rows):
                raise ValueError(f"`refusal_rows` {script_args.refusal_rows} exceed the {len(rows)} rows of the file.")
            rows = rows.select(range(start, stop))
        alignment = rows.map(lambda r: {"completion": r["refusal"]}, remove_columns=["harmful", "refusal"])
    harmful = rows.map(lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"])
    if script_args.harmful_dataset_name is not None:
        other = load_source(
            script_args.harmful_dataset_name,
            split=script_args.harmful_dataset_split,
            dataset_label="harmful_dataset_name",
        )
        if {"response", "is_safe", "category"} <= set(other.column_names):
            other = load_beavertails(other, unsafe_only=True)
        harmful = other.select_columns(["prompt", "completion"]) if "completion" in other.column_names else other
    if script_args.prompt_template != "none":
        wrap = lambda r: {"prompt": script_args.format_prompt(r["prompt"])}  # noqa: E731
        alignment, harmful = alignment.map(wrap), harmful.map(wrap)
    return alignment, harmful


def main(argv: list[str] | None = None) -> None:
    from hf_immunize.methods.booster import BoosterTrainer

    script_args, training_args, model_args = parse_args(make_parser(), argv)
    check_model_source(script_args, model_args)
    peft_config = peft_config_from(model_args)
    alignment, harmful = load_booster_data(script_args)
    if script_args.tiny_model is not None:
        from hf_immunize.testing import tiny_causal_lm

        model = tiny_causal_lm(**script_args.tiny_model)
    else:
        model = model_args.model_name_or_path  # SFTTrainer loads it with `model_init_kwargs`
        user_kwargs = training_args.model_init_kwargs or {}
        training_args.model_init_kwargs = {**causal_lm_init_kwargs(model_args), **user_kwargs}
    tokenizer = load_tokenizer(model_args, script_args)
    check_output_dir(training_args, "booster")
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
