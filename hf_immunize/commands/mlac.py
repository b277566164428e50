"""`hf-immunize mlac` / `accelerate launch scripts/mlac.py`: MLAC (self-destructing models) from a YAML recipe.

Classification (`task: classification`, the paper's setting): `dataset_name` is Bias in Bios (the Hub copy
`LabHC/bias_in_bios` or local files of its schema, read by :func:`hf_immunize.data.adapters.load_bias_in_bios`); the
desired task is the profession, the blocked task the gender of the same rows. `dataset_name: toy` uses the offline
bios world (`toy_world` = keyword arguments of `make_bios_world`).

Causal LM (`task: causal_lm`): `dataset_name` holds the desired prompt/completion rows and `harmful_dataset_name` the
harmful ones; `dataset_name: toy` uses the safety world (benign rows desired, harmful answers blocked).

    hf-immunize mlac --config recipes/mlac_tiny.yaml --max_steps 20
"""

from __future__ import annotations

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

__all__ = ["load_mlac_data", "main", "make_parser"]


def make_parser():
    from hf_immunize.methods.mlac import MLACConfig

    return make_method_parser(MLACConfig, ScriptArguments)


HELP = CommandHelp("mlac", ScriptArguments, "methods/mlac/mlac_config.py", "MLACConfig", __doc__)


def load_mlac_data(script_args: ScriptArguments, task: str):
    """(desired train, blocked/harmful, desired eval or None) for `task` ('classification' or 'causal_lm')."""
    from hf_immunize.data.adapters import load_bias_in_bios, load_source
    from hf_immunize.data.toy import BiosWorld, make_bios_world, make_safety_world

    if task == "classification":
        if script_args.dataset_name == "toy":
            world = make_bios_world(**(script_args.toy_world or {}))
            train, test = world.train, world.val1
        else:
            train = load_bias_in_bios(script_args.dataset_name, split=script_args.dataset_train_split)
            test = None
            if script_args.dataset_test_split:
                test = load_bias_in_bios(script_args.dataset_name, split=script_args.dataset_test_split)
        columns = ["text", "label"]
        desired = BiosWorld.with_label(train, "profession").select_columns(columns)
        harmful = BiosWorld.with_label(train, "gender").select_columns(columns)
        evaluation = BiosWorld.with_label(test, "profession").select_columns(columns) if test is not None else None
        return desired, harmful, evaluation
    if script_args.dataset_name == "toy":
        world = make_safety_world(**(script_args.toy_world or {}))
        harmful = world.alignment_harmful.map(
            lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
        )
        return world.attack_benign.select_columns(["prompt", "completion"]), harmful, None
    if script_args.harmful_dataset_name is None:
        raise ValueError("`harmful_dataset_name` is required for a causal-LM MLAC run (the blocked task's rows).")
    desired = load_source(
        script_args.dataset_name,
        split=script_args.dataset_train_split,
        name=script_args.dataset_config,
        dataset_label="dataset_name",
    )
    harmful = load_source(
        script_args.harmful_dataset_name, split=script_args.harmful_dataset_split, dataset_label="harmful_dataset_name"
    )
    evaluation = None
    if script_args.dataset_test_split:
        evaluation = load_source(
            script_args.dataset_name, split=script_args.dataset_test_split, dataset_label="dataset_name"
        )
    return desired, harmful, evaluation


def _load_model(script_args, model_args, task: str, num_labels: int | None):
    from hf_immunize import testing

    if task == "classification":
        if script_args.tiny_model is not None:
            return testing.tiny_encoder_classifier(**{"num_labels": num_labels, **script_args.tiny_model})
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(
            model_args.model_name_or_path, num_labels=num_labels, **causal_lm_init_kwargs(model_args)
        )
    if script_args.tiny_model is not None:
        return testing.tiny_causal_lm(**script_args.tiny_model)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **causal_lm_init_kwargs(model_args))


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = parse_args(make_parser, argv, HELP)
    from hf_immunize.methods.mlac import MLACTrainer

    check_model_source(script_args, model_args)
    task = training_args.task
    if task == "auto":
        raise ValueError(
            "`task` must be set for the mlac command ('classification' or 'causal_lm'): the model class to load "
            "depends on it."
        )
    peft_config = peft_config_from(model_args)
    desired, harmful, evaluation = load_mlac_data(script_args, task)
    num_labels = max(desired["label"]) + 1 if task == "classification" else None
    check_output_dir(training_args, "mlac", script_args, model_args)
    model = _load_model(script_args, model_args, task, num_labels)
    trainer = MLACTrainer(
        model=model,
        args=training_args,
        train_dataset=desired,
        eval_dataset=evaluation,
        harmful_dataset=harmful,
        processing_class=load_tokenizer(model_args, script_args),
        peft_config=peft_config,
    )
    finish_run(trainer, script_args, training_args, "mlac")


if __name__ == "__main__":
    main()
