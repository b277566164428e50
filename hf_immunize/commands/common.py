"""What every training command shares: argument parsing (TrlParser), data and model loading, the run itself.

A command is `make_parser()` (a `trl.TrlParser` over `(ScriptArguments, <Method>Config, ModelConfig)`: a YAML recipe
given with `--config` sets the defaults, flags override it, an unknown recipe key is an error) and `main(argv)`. The
same module runs as `hf-immunize <command>` and, through a two-line file under `scripts/`, under `accelerate launch`.

Offline and tiny runs use two keys of `ScriptArguments` instead of Hub ids: `tiny_model` (keyword arguments of
:func:`hf_immunize.testing.tiny_causal_lm` / `tiny_encoder_classifier`) and `dataset_name: toy` with `toy_world`
(keyword arguments of the method's toy world in :mod:`hf_immunize.data.toy`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ScriptArguments",
    "check_model_source",
    "check_output_dir",
    "causal_lm_init_kwargs",
    "finish_run",
    "load_tokenizer",
    "make_method_parser",
    "parse_args",
    "peft_config_from",
]

# Prompt templates a recipe may name (`prompt_template`); `{prompt}` is the user turn.
PROMPT_TEMPLATES = {
    "none": "{prompt}",
    # The Alpaca template without an input field, as the Booster/Vaccine code formats alignment and attack data.
    "alpaca_no_input": (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n{prompt}\n\n### Response:\n"
    ),
}


@dataclass
class ScriptArguments:
    r"""
    Data and model-source arguments of the hf_immunize training commands (the method's own settings live in its
    `*Config`, the model's in `trl.ModelConfig`).

    Parameters:
        dataset_name (`str`, *optional*):
            The training data: a Hub id, a local file (json/jsonl/csv/parquet) or directory, or `toy` for the method's
            offline toy world.
        dataset_config (`str`, *optional*):
            Configuration name of a Hub dataset.
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on.
        dataset_test_split (`str`, *optional*):
            Split to evaluate on, when the config evaluates.
        harmful_dataset_name (`str`, *optional*):
            The harmful / blocked / forget data when it is a separate source (same forms as `dataset_name`).
        harmful_dataset_split (`str`, *optional*, defaults to `"train"`):
            Split of `harmful_dataset_name`.
        toy_world (`dict` or JSON `str`, *optional*):
            Keyword arguments of the toy world when `dataset_name` is `toy` (ignored otherwise, so a flag can point a
            tiny recipe at real files).
        tiny_model (`dict` or JSON `str`, *optional*):
            Build an offline tiny model from a config with these keyword arguments instead of loading
            `model_name_or_path` (for CPU runs and tests).
        prompt_template (`str`, *optional*, defaults to `"none"`):
            How a prompt is wrapped before training: one of `PROMPT_TEMPLATES`.
        immunization_report (`str`, *optional*):
            An immunization report (its JSON file or the folder `hf-immunize evaluate` / `attack` wrote) to put into
            the model card.
    """

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub id, local file or directory, or `toy` for the offline toy world."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of a Hub dataset."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (used when `eval_strategy` is not `no`)."}
    )
    harmful_dataset_name: str | None = field(
        default=None, metadata={"help": "Harmful / blocked data when it is a separate source."}
    )
    harmful_dataset_split: str = field(default="train", metadata={"help": "Split of `harmful_dataset_name`."})
    toy_world: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments (JSON) of the toy world when dataset_name is `toy`."}
    )
    tiny_model: dict | str | None = field(
        default=None, metadata={"help": "Build an offline tiny model with these keyword arguments (JSON)."}
    )
    prompt_template: str = field(
        default="none", metadata={"help": f"Prompt wrapper: one of {sorted(PROMPT_TEMPLATES)}."}
    )
    immunization_report: str | None = field(
        default=None, metadata={"help": "Immunization report (JSON file or its folder) to put into the model card."}
    )

    def __post_init__(self):
        for name in ("toy_world", "tiny_model"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as err:
                    raise ValueError(f"`{name}` must be a JSON object, got {value!r}: {err}.") from None
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"`{name}` must be a mapping of keyword arguments, got {value!r}.")
            setattr(self, name, value)
        if self.prompt_template not in PROMPT_TEMPLATES:
            raise ValueError(
                f"`prompt_template` must be one of {sorted(PROMPT_TEMPLATES)}, got {self.prompt_template!r}."
            )
        if self.dataset_name is None:
            raise ValueError("`dataset_name` is required: a Hub id, a local file or directory, or `toy`.")
        if self.immunization_report is not None:
            from hf_immunize.evaluation.report import ImmunizationReport

            try:  # the JSON file or the folder `ImmunizationReport.save` / `hf-immunize evaluate` wrote
                ImmunizationReport.load(self.immunization_report)
            except (FileNotFoundError, ValueError) as err:
                raise ValueError(f"`immunization_report`: {err}") from None

    def format_prompt(self, prompt: str) -> str:
        return PROMPT_TEMPLATES[self.prompt_template].format(prompt=prompt)


def make_method_parser(config_cls, script_cls=ScriptArguments):
    """`TrlParser((script_cls, config_cls, ModelConfig))`; `--help` lists every field with its metadata help."""
    from trl import ModelConfig, TrlParser

    return TrlParser((script_cls, config_cls, ModelConfig))


def parse_args(parser, argv: list[str] | None):
    """Parses `argv` (or `sys.argv`) with the recipe given by `--config`; an unknown recipe key is an error."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv) or not os.path.isfile(argv[index + 1]):
            path = argv[index + 1] if index + 1 < len(argv) else None
            raise ValueError(f"`--config` must name a YAML recipe file, got {path!r}.")
    try:
        return parser.parse_args_and_config(argv, fail_with_unknown_args=True)
    except ValueError as err:
        if "Unknown arguments from config file" in str(err):
            fields = sorted({f for dc in parser.dataclass_types for f in dc.__dataclass_fields__})
            raise ValueError(f"{err} Known keys: {', '.join(fields)}.") from None
        raise


RUN_MARKER = "hf_immunize_run.json"


def check_output_dir(training_args, run_name: str) -> None:
    """Refuses an output directory that holds another run (a different command or settings), before any compute.

    A directory is ours to continue when it is empty, or when its `hf_immunize_run.json` names the same command and
    the same settings (then `--resume_from_checkpoint` continues it). :func:`finish_run` writes the marker when
    training starts, so a run that fails while being set up leaves nothing behind.
    """
    out = training_args.output_dir
    if os.path.isdir(out) and os.listdir(out):
        marker = os.path.join(out, RUN_MARKER)
        previous = json.loads(open(marker).read()) if os.path.isfile(marker) else None
        if previous != _run_settings(training_args, run_name):
            what = "a different hf_immunize run" if previous else "files of another run"
            raise ValueError(
                f"`output_dir` {out!r} already holds {what}; choose an empty directory (or the same command and "
                "settings to resume)."
            )
    elif os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"`output_dir` {out!r} exists and is not a directory.")


def _run_settings(training_args, run_name: str) -> dict:
    # The settings that define a run (not where it writes or whether it resumes), JSON-comparable.
    skip = {"output_dir", "resume_from_checkpoint", "run_name", "hub_token", "logging_dir"}
    args = {}
    for key, value in training_args.to_dict().items():
        if key not in skip and not key.startswith("_"):
            args[key] = value if isinstance(value, int | float | str | bool | type(None)) else str(value)
    return {"command": run_name, "args": args}


def _write_marker(training_args, run_name: str) -> None:
    if training_args.process_index != 0:
        return
    os.makedirs(training_args.output_dir, exist_ok=True)
    marker = os.path.join(training_args.output_dir, RUN_MARKER)
    with open(marker + ".tmp", "w") as f:
        json.dump(_run_settings(training_args, run_name), f, indent=2, sort_keys=True)
    os.replace(marker + ".tmp", marker)


def causal_lm_init_kwargs(model_args) -> dict[str, Any]:
    """`from_pretrained` keyword arguments from a `trl.ModelConfig` (dtype, attention, 4/8-bit quantization)."""
    from trl import get_quantization_config

    kwargs: dict[str, Any] = {"revision": model_args.model_revision}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    return kwargs


def peft_config_from(model_args):
    """The LoRA config of `model_args` (None unless `use_peft`); a quantized model without LoRA is refused."""
    from trl import get_peft_config

    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        raise ValueError(
            "`load_in_4bit`/`load_in_8bit` needs `use_peft: true`: quantized weights cannot be trained directly."
        )
    return get_peft_config(model_args)


def load_tokenizer(model_args, script_args, model_path: str | None = None):
    """The tokenizer of the model (the offline tiny tokenizer for `tiny_model` runs), with a pad token."""
    from transformers import AutoTokenizer

    from hf_immunize.testing import tiny_tokenizer

    if script_args.tiny_model is not None:
        tokenizer = tiny_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(
            model_path or model_args.model_name_or_path, revision=model_args.model_revision
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"the tokenizer of {model_args.model_name_or_path!r} has neither a pad nor an EOS token; set "
                "`pad_token` on it first."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_model_source(script_args, model_args) -> None:
    """Checks that exactly one model source is given (a Hub id / local path, or `tiny_model`)."""
    if script_args.tiny_model is None and not model_args.model_name_or_path:
        raise ValueError("`model_name_or_path` is required (or `tiny_model` for an offline tiny model).")
    if script_args.tiny_model is not None and model_args.model_name_or_path:
        raise ValueError(
            f"give either `model_name_or_path` ({model_args.model_name_or_path!r}) or `tiny_model`, not both."
        )


def finish_run(trainer, script_args, training_args, run_name: str) -> None:
    """Trains (resuming when asked), saves weights, tokenizer and card, pushes when `push_to_hub`, then ends."""
    _write_marker(training_args, run_name)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if script_args.immunization_report and hasattr(trainer, "set_immunization_report"):
        trainer.set_immunization_report(script_args.immunization_report)
    trainer.save_model(training_args.output_dir)
    dataset_name = script_args.dataset_name if script_args.dataset_name != "toy" else None
    trainer.create_model_card(dataset_name=dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset_name)
    if trainer.is_world_process_zero():
        from hf_immunize.model_card import canonical_method

        out = training_args.output_dir
        method = canonical_method(trainer._card_method()) or run_name
        print(f"\nsaved: {out} (weights, tokenizer, README.md card, hf_immunize.json run record)")
        print(f"next:  hf-immunize evaluate --model {out} --method {method} --write_card   (measure it, card it)")
        print(f"then:  hf-immunize push {out} --repo_id <you>/<name>")
    trainer.end()
