"""`hf-immunize mistake-sft` / `accelerate launch scripts/mistake_sft.py`: mistake analysis from a YAML recipe.

Runs the whole method: step 1 (the base model's answers to the induction prompt, or the data set's unsafe responses
with `mistake_source: dataset`), step 2 (the base model's guided critiques), step 3 (`MistakeSFTTrainer` on the
unguided critique rows mixed with helpful rows), then saves the model, its card and the built data set
(`mistake_dataset.jsonl` in `output_dir`). Step 4 is inference: `hf_immunize.guided_generate` on the saved model.

Data: `dataset_name` holds red-team instructions: PKU-SafeRLHF rows (`prompt, response_0/1, is_response_0/1_safe`;
the unsafe response, when a row has one, is the data-set mistake and the fallback for a refused induction), or any
file with a `prompt` or `instruction` column (an optional `harmful` / `response` column gives unsafe responses).
`helpful_dataset_name` holds helpful instruction data (Alpaca or Dolly layout). `dataset_name: toy` uses the offline
safety world (red-team prompts of its alignment weapons, helpful rows = the benign rows of its alignment set).

Steps 1-2 run on every process under a multi-process launch (the same seed gives the same data everywhere).

    hf-immunize mistake-sft --config recipes/mistake_sft_tiny.yaml --max_steps 20
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

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

__all__ = ["MistakeSFTScriptArguments", "load_mistake_data", "main", "make_parser"]

DATASET_FILE = "mistake_dataset.jsonl"


@dataclass
class MistakeSFTScriptArguments(ScriptArguments):
    r"""
    Parameters:
        helpful_dataset_name (`str`, *optional*):
            Helpful instruction data (Alpaca / Dolly layout): a Hub id, local file or directory. Ignored for `toy`.
        helpful_dataset_split (`str`, *optional*, defaults to `"train"`):
            Split of `helpful_dataset_name`.
        max_instructions (`int`, *optional*):
            Use only the first N red-team instructions.
    """

    helpful_dataset_name: str | None = field(
        default=None, metadata={"help": "Helpful instruction data (Alpaca or Dolly layout)."}
    )
    helpful_dataset_split: str = field(default="train", metadata={"help": "Split of `helpful_dataset_name`."})
    max_instructions: int | None = field(default=None, metadata={"help": "Use only the first N instructions."})

    def __post_init__(self):
        super().__post_init__()
        if self.max_instructions is not None and self.max_instructions < 1:
            raise ValueError(f"`max_instructions` must be >= 1, got {self.max_instructions}.")
        if self.dataset_name != "toy" and self.helpful_dataset_name is None:
            raise ValueError(
                "`helpful_dataset_name` is required (e.g. tatsu-lab/alpaca): mistake analysis mixes helpful pairs "
                "into the training set."
            )


def make_parser():
    from hf_immunize.methods.mistake_sft import MistakeSFTConfig

    return make_method_parser(MistakeSFTConfig, MistakeSFTScriptArguments)


HELP = CommandHelp(
    "mistake-sft", MistakeSFTScriptArguments, "methods/mistake_sft/mistake_sft_config.py", "MistakeSFTConfig", __doc__
)


def _instruction_of(prompt: str) -> str:
    return prompt.removeprefix("User: ").removesuffix("\nAssistant:")


def load_mistake_data(script_args: MistakeSFTScriptArguments):
    """(instructions, unsafe responses or None per row, helpful rows with `instruction, output`)."""
    from datasets import Dataset

    from hf_immunize.data.adapters import load_instructions, load_source

    if script_args.dataset_name == "toy":
        from hf_immunize.data.toy import make_safety_world

        world = make_safety_world(**(script_args.toy_world or {}))
        rows = world.alignment_harmful
        instructions = [_instruction_of(p) for p in rows["prompt"]]
        unsafe = list(rows["harmful"])
        refusals = set(rows["prompt"])
        benign = world.alignment.filter(lambda r: r["prompt"] not in refusals)
        helpful = Dataset.from_dict(
            {"instruction": [_instruction_of(p) for p in benign["prompt"]], "output": benign["completion"]}
        )
    else:
        source = load_source(
            script_args.dataset_name,
            split=script_args.dataset_train_split,
            name=script_args.dataset_config,
            dataset_label="dataset_name",
        )
        columns = set(source.column_names)
        if {"prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe"} <= columns:
            instructions = list(source["prompt"])
            unsafe = [
                r["response_0"]
                if not r["is_response_0_safe"]
                else r["response_1"]
                if not r["is_response_1_safe"]
                else None
                for r in source
            ]
        elif "prompt" in columns or "instruction" in columns:
            instructions = list(source["prompt" if "prompt" in columns else "instruction"])
            column = next((c for c in ("harmful", "response") if c in columns), None)
            unsafe = list(source[column]) if column else None
        else:
            raise ValueError(
                f"`dataset_name` {script_args.dataset_name!r}: expected PKU-SafeRLHF columns or a `prompt` / "
                f"`instruction` column, found {source.column_names}."
            )
        helpful_source = load_source(
            script_args.helpful_dataset_name,
            split=script_args.helpful_dataset_split,
            dataset_label="helpful_dataset_name",
        )
        helpful = load_instructions(helpful_source).rename_columns({"prompt": "instruction", "completion": "output"})
    if script_args.max_instructions is not None:
        instructions = instructions[: script_args.max_instructions]
        unsafe = unsafe[: script_args.max_instructions] if unsafe is not None else None
    return instructions, unsafe, helpful


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse_args(make_parser, argv, HELP)
    from hf_immunize.methods.mistake_sft import (
        MistakeSFTTrainer,
        build_mistake_dataset,
        generate_analyses,
        induce_mistakes,
    )

    check_model_source(script_args, model_args)
    peft_config = peft_config_from(model_args)
    check_output_dir(training_args, "mistake-sft", script_args, model_args)
    instructions, unsafe, helpful = load_mistake_data(script_args)
    if script_args.tiny_model is not None:
        from hf_immunize.testing import tiny_causal_lm

        model = tiny_causal_lm(**script_args.tiny_model)
    else:  # steps 1-2 need the base model itself, so it is loaded here rather than by SFTTrainer
        from transformers import AutoModelForCausalLM

        kwargs = {**causal_lm_init_kwargs(model_args), **(training_args.model_init_kwargs or {})}
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    tokenizer = load_tokenizer(model_args, script_args)

    pairs, induction = induce_mistakes(
        model, tokenizer, instructions, training_args, unsafe_responses=unsafe, return_stats=True
    )
    analysed, analysis = generate_analyses(model, tokenizer, pairs, training_args, return_stats=True)
    data, counts = build_mistake_dataset(analysed, helpful=helpful, cfg=training_args, return_stats=True)
    if len(data) == 0:
        raise ValueError(f"no training rows were built (induction {induction}, analyses {analysis}).")
    trainer = MistakeSFTTrainer(
        model=model, args=training_args, train_dataset=data, processing_class=tokenizer, peft_config=peft_config
    )
    mark_run(training_args, "mistake-sft", script_args)
    if training_args.process_index == 0:  # the built data set and the pipeline's counts, beside the model
        os.makedirs(training_args.output_dir, exist_ok=True)
        path = os.path.join(training_args.output_dir, DATASET_FILE)
        data.to_json(path + ".tmp", lines=True)
        os.replace(path + ".tmp", path)
        stats_path = os.path.join(training_args.output_dir, "mistake_pipeline_stats.json")
        with open(stats_path + ".tmp", "w") as f:
            json.dump({"induction": induction, "analysis": analysis, "dataset": counts}, f, indent=2)
        os.replace(stats_path + ".tmp", stats_path)
    finish_run(trainer, script_args, training_args, "mistake-sft")


if __name__ == "__main__":
    main()
