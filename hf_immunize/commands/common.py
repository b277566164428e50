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
    "mark_run",
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


def parse_args(parser, argv: list[str] | None, command_help=None):
    """Parses `argv` (or `sys.argv`) with the recipe given by `--config`; an unknown recipe key or flag is an error
    that suggests the closest option names.

    `parser` is the TrlParser or a function that builds it; `command_help`
    (:class:`~hf_immunize.commands.help.CommandHelp`) makes `-h`/`--help` print the command's short help without
    building the parser (no torch/transformers import), and `--help_all` print argparse's full listing under the
    command's own name.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if command_help is not None and ("-h" in argv or "--help" in argv):
        from hf_immunize.commands.help import format_help

        print(format_help(command_help))
        raise SystemExit(0)
    parser = parser() if callable(parser) and not hasattr(parser, "parse_args_and_config") else parser
    if command_help is not None:
        parser.prog = f"hf-immunize {command_help.command}"
        parser.usage = f"hf-immunize {command_help.command} [--config RECIPE.yaml] [--OPTION VALUE ...]"
    if "--help_all" in argv:
        parser.print_help()
        raise SystemExit(0)
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv) or not os.path.isfile(argv[index + 1]):
            path = argv[index + 1] if index + 1 < len(argv) else None
            raise ValueError(f"`--config` must name a YAML recipe file, got {path!r}.")
    *parsed, from_recipe, from_flags = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    known = sorted({f for dc in parser.dataclass_types for f in dc.__dataclass_fields__})
    problems = []
    for where, remaining in (("recipe key", from_recipe), ("flag", from_flags)):
        for item in remaining:
            if item.startswith("--"):
                problems.append(f"unknown {where} {item.removeprefix('--')!r}{_suggest(item, known)}")
            elif where == "flag" and not (problems and problems[-1].startswith("unknown flag")):
                problems.append(f"unexpected value {item!r} on the command line (options are `--name value`)")
    if problems:
        raise ValueError("; ".join(problems) + ". `--help` lists the options.")
    return tuple(parsed)


def _suggest(item: str, known: list[str]) -> str:
    import difflib

    name = item.removeprefix("--").split("=")[0]
    scored = sorted(((difflib.SequenceMatcher(None, name, k).ratio(), k) for k in known), reverse=True)
    close = [k for ratio, k in scored[:3] if ratio >= 0.6 and ratio >= scored[0][0] - 0.05]
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


RUN_MARKER = "hf_immunize_run.json"


# Training arguments that say how a run is carried out, not what it trains: they may change when a run is resumed
# (a longer `max_steps`, other logging or saving, a push at the end).
_OPERATIONAL_ARGS = {
    "output_dir",
    "resume_from_checkpoint",
    "run_name",
    "logging_dir",
    "max_steps",
    "num_train_epochs",
    "disable_tqdm",
    "report_to",
    "dataloader_num_workers",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "ddp_timeout",
    "skip_memory_metrics",
    "prediction_loss_only",
    "per_device_eval_batch_size",
    "push_to_hub",
}
_OPERATIONAL_PREFIXES = ("logging_", "log_", "save_", "eval_", "hub_", "include_")
# Script arguments that only affect what is written after training.
_OPERATIONAL_SCRIPT_ARGS = {"immunization_report"}
_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")


def check_output_dir(training_args, run_name: str, script_args=None, model_args=None) -> None:
    """Decides what a command does with its `output_dir`, before any compute, and says it.

    - empty or absent: a new run;
    - it holds a run of this command whose model, data and method settings (`hf_immunize_run.json`) are the ones
      given now: the run **resumes** from its last `checkpoint-*` (`resume_from_checkpoint` is set to it); without a
      checkpoint, an unfinished run starts again from the beginning and a finished one (its model saved) is refused;
    - anything else (files no command wrote, another command, other settings) is **refused**, naming what differs.

    Settings that only say how a run is carried out (`max_steps`, logging, saving, hub options, ...) may change on a
    resume. :func:`finish_run` writes the marker when training starts, so a run that fails while being set up
    leaves nothing behind.
    """
    out = training_args.output_dir
    settings = _run_settings(training_args, run_name, script_args, model_args)
    training_args._hf_immunize_run_settings = settings  # what finish_run writes into the marker
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"`output_dir` {out!r} exists and is not a directory.")
    if not os.path.isdir(out) or not os.listdir(out):
        return
    marker = os.path.join(out, RUN_MARKER)
    if not os.path.isfile(marker):
        names = sorted(os.listdir(out))
        raise ValueError(
            f"`output_dir` {out!r} already holds files that no hf_immunize command wrote ({', '.join(names[:4])}"
            f"{', ...' if len(names) > 4 else ''}); choose an empty or new directory."
        )
    with open(marker) as f:
        previous = json.load(f)
    if previous.get("command") != run_name:
        raise ValueError(
            f"`output_dir` {out!r} holds a run of `hf-immunize {previous.get('command')}`; this is `hf-immunize "
            f"{run_name}`. Choose another output_dir."
        )
    changed = _differences(previous, settings)
    if changed:
        shown = "; ".join(changed[:5]) + ("; ..." if len(changed) > 5 else "")
        raise ValueError(
            f"`output_dir` {out!r} holds an `hf-immunize {run_name}` run with other settings ({shown}); its model "
            "would be overwritten. Choose another output_dir, or give the same settings to resume that run."
        )
    if training_args.resume_from_checkpoint:
        return
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(out)
    if last is not None:
        training_args.resume_from_checkpoint = last
        if training_args.process_index == 0:
            print(f"hf-immunize {run_name}: {out} holds this run (same settings): resuming from {last}.")
    elif any(os.path.exists(os.path.join(out, name)) for name in _MODEL_FILES):
        raise ValueError(
            f"`output_dir` {out!r} already holds the finished `hf-immunize {run_name}` run with these settings (its "
            "model is saved) and no checkpoint to resume from (`save_strategy` was 'no'). Choose another "
            "output_dir to train again."
        )
    elif training_args.process_index == 0:
        print(f"hf-immunize {run_name}: {out} holds this run (same settings) but no checkpoint: starting over.")


def _jsonable(value):
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _run_settings(training_args, run_name: str, script_args=None, model_args=None) -> dict:
    """The model, data and method settings that define a run (JSON-comparable)."""
    import dataclasses

    args = {
        key: value
        for key, value in training_args.to_dict().items()
        if key not in _OPERATIONAL_ARGS
        and not key.startswith(_OPERATIONAL_PREFIXES)
        and not key.startswith("_")
        and "token" not in key
    }
    settings = {"command": run_name, "args": _jsonable(args)}
    if script_args is not None:
        data = {k: v for k, v in dataclasses.asdict(script_args).items() if k not in _OPERATIONAL_SCRIPT_ARGS}
        settings["data"] = _jsonable(data)
    if model_args is not None:
        settings["model"] = _jsonable({k: v for k, v in dataclasses.asdict(model_args).items() if "token" not in k})
    return settings


def _differences(previous: dict, now: dict) -> list[str]:
    out = []
    for section in ("data", "model", "args"):
        before, after = previous.get(section, {}), now.get(section, {})
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                out.append(f"`{key}`: {before.get(key)!r} then, {after.get(key)!r} now")
    return out


def mark_run(training_args, run_name: str, script_args=None) -> None:
    """Writes the run marker (`hf_immunize_run.json`) into `output_dir`: call it before a command first writes there
    (:func:`finish_run` does, at the start of training), so that a later run recognises the folder as this run's."""
    _write_marker(training_args, run_name, script_args)


def _write_marker(training_args, run_name: str, script_args=None) -> None:
    if training_args.process_index != 0:
        return
    settings = getattr(training_args, "_hf_immunize_run_settings", None)
    if settings is None or settings.get("command") != run_name:
        settings = _run_settings(training_args, run_name, script_args)
    os.makedirs(training_args.output_dir, exist_ok=True)
    marker = os.path.join(training_args.output_dir, RUN_MARKER)
    with open(marker + ".tmp", "w") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
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
    _write_marker(training_args, run_name, script_args)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if script_args.immunization_report and hasattr(trainer, "set_immunization_report"):
        trainer.set_immunization_report(script_args.immunization_report)
    trainer.save_model(training_args.output_dir)
    dataset_name = script_args.dataset_name if script_args.dataset_name != "toy" else None
    trainer.create_model_card(dataset_name=dataset_name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset_name)
    if trainer.is_world_process_zero():
        from hf_immunize.core.card_text import canonical_method

        out = training_args.output_dir
        method = canonical_method(trainer._card_method()) or run_name
        print(f"\nsaved: {out} (weights, tokenizer, README.md card, hf_immunize.json run record)")
        print(f"next:  hf-immunize evaluate --model {out} --method {method} --write_card   (measure it, card it)")
        print(f"then:  hf-immunize push {out} --repo_id <you>/<name>")
    trainer.end()
