"""`CardMixin`: the model-card side of every hf_immunize trainer (mixed into :class:`~hf_immunize.core.trainer_mixin.
ImmunizeTrainerMixin`): the report attached to its cards, `measure_immunization`, the `_card_*` hooks a trainer may
override, the card and run record written on `save_model`, at every checkpoint and on `push_to_hub`, and the push."""

from __future__ import annotations

import os
from pathlib import Path

from hf_immunize.core.hub import hub_errors, push_folder

__all__ = ["CardMixin"]


class CardMixin:
    # ---- model card -----------------------------------------------------------------------------------------

    def set_immunization_report(self, report) -> None:
        """Attaches an immunization report to every card this trainer writes (`save_model`, checkpoints,
        `push_to_hub`).

        `report`: an :class:`~hf_immunize.evaluation.report.ImmunizationReport`, its dict, its JSON file, or the
        folder `ImmunizationReport.save` wrote (its PNG is then copied, not redrawn); None detaches it. The card gets
        how it was measured and the tables, and the plot is written next to it as `immunization_report.png`.
        :meth:`measure_immunization` measures the saved model and attaches the result itself.
        """
        from hf_immunize.core.card import load_report

        if report is not None:
            load_report(report)  # a bad path or dict fails here, not at the next checkpoint
        self._immunization_report = report

    @property
    def immunization_report(self):
        """The report attached by :meth:`set_immunization_report` (as given), or None."""
        return getattr(self, "_immunization_report", None)

    def measure_immunization(
        self, data=None, *, baseline=None, output_dir: str | None = None, write_card: bool = True, **options
    ):
        """Saves the model, measures the saved model the way the method's claim is stated, attaches the report and
        rewrites the card: train → measure → card in one script. Returns the
        :class:`~hf_immunize.evaluation.report.ImmunizationReport`.

        `data`: the protocol's evaluation data (:class:`~hf_immunize.evaluation.protocols.SafetyEvalData` for
        Booster and MistakeSFT, `BlockedTaskData` for MLAC, `UnlearningEvalData` for unlearning); None uses the
        method's offline toy world. `baseline`: a saved undefended model, measured the same way. `options` go to
        :func:`~hf_immunize.evaluation.protocols.measure_saved_model` (`attack_config`, `seeds`, `relearn`,
        `max_eval_samples`, `progress`, ...). Only the main process measures; call it after `train()`.
        """
        from hf_immunize.core.card_text import canonical_method
        from hf_immunize.evaluation.protocols import measure_saved_model

        output_dir = output_dir or self.args.output_dir
        self.save_model(output_dir)
        if not self.is_world_process_zero():
            return None
        method = canonical_method(self._card_method())
        if method is None:
            raise ValueError(f"{type(self).__name__} declares no hf_immunize method among its tags {self._tag_names}.")
        report = measure_saved_model(
            output_dir, method, data, baseline=baseline, **{**self._measure_options(), **options}
        )
        self.set_immunization_report(report)
        if write_card:
            self._write_card(output_dir)
        return report

    def _measure_options(self) -> dict:
        """Method-specific arguments of the measurement protocol (e.g. MistakeSFT's prompt builders)."""
        return {}

    def _card_method(self) -> str | None:
        """Key of the method's section template in `model_cards/` (default: the first tag that has one)."""
        from hf_immunize.core.card_text import section_template

        return next((t for t in self._tag_names if t != "hf-immunize" and section_template(t)), None)

    def _card_hyperparameters(self) -> dict:
        """Method hyperparameters shown on the card; override to list the method's own config fields.

        By default: the fields the trainer's config adds to its TRL/transformers base class, where they differ from
        their defaults.
        """
        return _non_default_fields(self.args, _method_fields(type(self.args)))

    def _card_training_hyperparameters(self) -> dict:
        """Trainer settings (learning rate, steps, batch size, ...) that differ from the config class's defaults (as
        the class resolves them on this device: `bf16: False` on a CPU run is the default, not a change)."""
        return _non_default_fields(self.args, _TRAINING_FIELDS)

    def _card_training_data(self, dataset_names: list[str]) -> list[str]:
        """Lines of the card's training-data section; override to add the method's extra datasets."""
        from hf_immunize.core.card_text import is_local_path

        lines = [f"`{name}`" for name in dataset_names if not is_local_path(name)]
        for attr, label in (("train_dataset", "training set"), ("eval_dataset", "evaluation set")):
            dataset = getattr(self, attr, None)
            if dataset is not None and not isinstance(dataset, dict) and hasattr(dataset, "__len__"):
                lines.append(f"{label}: {len(dataset)} rows")
        for attr, label in (("harmful_stream", "harmful set"), ("retain_stream", "retain set")):
            dataset = getattr(getattr(self, attr, None), "dataset", None)  # the second stream of core/paired.py
            if dataset is not None and hasattr(dataset, "__len__"):
                lines.append(f"{label}: {len(dataset)} rows")
        if getattr(self, "_hf_immunize_prompt_format", None):
            shown = {"chat": "conversational, rendered with the tokenizer's chat template", "raw": "plain text"}
            lines.append(f"prompt format: {shown[self._hf_immunize_prompt_format]}")
        return lines

    def _card_method_description(self) -> str | None:
        """What the method does; None uses the method's section template."""
        return None

    def _card_limitations(self) -> str | None:
        """Known limitations; None uses the method's section template."""
        return None

    def _card_template_context(self) -> dict:
        """Variables for the method's section template (e.g. `alpha`, `dictionary_size` for unlearning)."""
        return {}

    def _card_model_name(self) -> str:
        hub_id = self.args.hub_model_id
        return hub_id.split("/")[-1] if hub_id else Path(self.args.output_dir).name

    def _card_base_model(self, finetuned_from: str | None = None) -> tuple[str | None, str | None]:
        """`(Hub id of the base model or None, PEFT type such as "lora" or None)`.

        Under PEFT the base is the adapter's `base_model_name_or_path`. A local base model counts as known when it is
        a Hub cache snapshot or was itself saved by hf_immunize with a known base; otherwise it is left out.
        """
        from hf_immunize.core.card_text import hub_model_id
        from hf_immunize.evaluation.formatting import read_run_record

        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        peft_config = getattr(model, "peft_config", None)
        adapter = None
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or None
        if isinstance(peft_config, dict) and peft_config:
            active = getattr(model, "active_adapter", None)
            config = peft_config.get(active) if isinstance(active, str) else next(iter(peft_config.values()))
            config = config or next(iter(peft_config.values()))
            adapter = str(getattr(config.peft_type, "value", config.peft_type)).lower()
            name = config.base_model_name_or_path or name
        name = finetuned_from or name
        found = hub_model_id(name)
        if found is None and name and os.path.isdir(name):
            found = hub_model_id(((read_run_record(name) or {}).get("card") or {}).get("base_model"))
        return found, adapter

    def _card_pipeline_tag(self) -> str | None:
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        base = getattr(model, "get_base_model", lambda: model)()
        name = type(base).__name__
        if name.endswith("ForCausalLM"):
            return "text-generation"
        if name.endswith("ForSequenceClassification"):
            return "text-classification"
        return None

    def _card_kwargs(self, model_name=None, dataset_name=None, tags=None, **kwargs) -> dict:
        """Everything the card is rendered from except the report: the inputs of
        :func:`hf_immunize.core.card.write_model_card`, also saved in the run record for re-rendering."""
        user_tags = [tags] if isinstance(tags, str) else list(tags or [])
        dataset_names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
        base_model, adapter = self._card_base_model(kwargs.get("finetuned_from"))
        return {
            "model_name": model_name or self._card_model_name(),
            "base_model": base_model,
            "adapter": adapter,
            "pipeline_tag": self._card_pipeline_tag(),
            "datasets": dataset_names or None,
            "tags": list(dict.fromkeys([*self._tag_names, *user_tags])),
            "method": self._card_method(),
            "method_title": self._name,
            "method_description": self._card_method_description(),
            "paper": self._paper,
            "license": kwargs.get("license"),
            "training_data": self._card_training_data(dataset_names) or None,
            "hyperparameters": self._card_hyperparameters() or None,
            "training_hyperparameters": self._card_training_hyperparameters() or None,
            "config_class": type(self.args).__name__,
            "limitations": self._card_limitations(),
            "section_context": self._card_template_context(),
        }

    def _card_secrets(self) -> list[str]:
        return [self.args.hub_token] if self.args.hub_token else []

    def _write_card(self, directory) -> None:
        """Writes the card (with the attached report) and the run record into `directory`."""
        from hf_immunize.core.card import write_model_card

        card_kwargs = self._card_kwargs(**getattr(self, "_card_options", {}))
        from hf_immunize.core.card import write_run_record

        write_run_record(directory, self._run_record(card_kwargs), secrets=self._card_secrets())
        write_model_card(directory, report=self.immunization_report, secrets=self._card_secrets(), **card_kwargs)

    def _run_record(self, card_kwargs: dict) -> dict:
        """What `hf_immunize.json` holds: the method, the prompt format of the training data, the card's inputs and
        the method's evaluation settings, so the saved model can be measured and its card re-rendered later."""
        import hf_immunize
        from hf_immunize.core.card_text import canonical_method

        pipeline = card_kwargs.get("pipeline_tag")
        return {
            "hf_immunize_version": hf_immunize.__version__,
            "method": canonical_method(self._card_method()),
            "trainer": type(self).__name__,
            "task": pipeline,
            "prompt_format": getattr(self, "_hf_immunize_prompt_format", None),
            "card": card_kwargs,
            "evaluation": self._run_record_evaluation(),
        }

    def _run_record_evaluation(self) -> dict:
        """Method settings the measurement needs later (e.g. MistakeSFT's prompt templates); override to add."""
        return {}

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        **kwargs,
    ) -> None:
        """Writes `output_dir/README.md` from our card template (TRL's template lookup cannot reach our files).

        Also takes `Trainer.create_model_card`'s `license` and `finetuned_from` (passed on by `push_to_hub`), and
        `report` (see :meth:`set_immunization_report`). The options are remembered: later saves render the same
        card. With a report attached, its plot and JSON are written beside the card.
        """
        if not self.is_world_process_zero() or getattr(self, "_card_written_by_checkpoint_hook", False):
            return
        report = kwargs.pop("report", kwargs.pop("immunization_report", None))
        if report is not None:
            self.set_immunization_report(report)
        options = {k: v for k, v in kwargs.items() if k in ("license", "finetuned_from")}
        self._card_options = {"model_name": model_name, "dataset_name": dataset_name, "tags": tags, **options}
        self._write_card(self.args.output_dir)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`, then our card and run record in the same folder, written after PEFT has written
        its own `README.md` (whose metadata would name a local base path), with or without LoRA."""
        super().save_model(output_dir, _internal_call=True)
        directory = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save and self.is_world_process_zero() and os.path.isdir(directory):
            self._write_card(directory)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save_checkpoint(self, model, trial) -> None:
        # The card (with the attached report) is written at every checkpoint, before the checkpoint may be pushed;
        # TRL's own hook in `SFTTrainer._save_checkpoint` is muted so the card is rendered once.
        self.create_model_card(**getattr(self, "_card_options", {"model_name": self._card_model_name()}))
        self._card_written_by_checkpoint_hook = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._card_written_by_checkpoint_hook = False

    # ---- push to the Hub --------------------------------------------------------------------------------------

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """`Trainer.push_to_hub` (save, card, upload `output_dir`) that uploads no pickle and explains network errors.

        Uploaded (:func:`hf_immunize.core.hub.push_folder`): the safetensors weights, config, tokenizer, `README.md`,
        the report's plot and JSON and `hf_immunize.json`. Left out, besides the Trainer's `_*` and `checkpoint-*`:
        `*.bin`, `*.pt`, `*.pth`, `*.pkl` (e.g. `training_args.bin`, a pickle that holds `hub_token` when one was
        given). An adapter on a local base model is published with the base's Hub id (`finetuned_from`, or the one
        known at save time). `kwargs` go to :meth:`create_model_card` (`model_name`, `dataset_name`, `tags`,
        `license`, `finetuned_from`, `report`).
        """
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        model_name = kwargs.pop("model_name", None)
        if model_name is None and self.args.should_save:
            model_name = self._card_model_name()
        token = token if token is not None else self.args.hub_token
        with hub_errors(self.args.hub_model_id or Path(self.args.output_dir).name):
            if self.hub_model_id is None:
                self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        tags = kwargs.pop("tags", None)
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags += [t for t in (getattr(self.model, "model_tags", None) or []) if t not in tags]
        self.create_model_card(model_name=model_name, tags=tags or None, **kwargs)
        self._finish_current_push()
        return push_folder(
            self.args.output_dir,
            self.hub_model_id,
            token=token,
            private=private,
            revision=revision if revision is not None else self.args.hub_revision,
            commit_message=commit_message,
            base_model=kwargs.get("finetuned_from"),
            run_as_future=not blocking,
        )


# TrainingArguments / SFTConfig fields that shape the optimisation and so belong on a card when not at their default.
_TRAINING_FIELDS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "label_smoothing_factor",
    "seed",
    "bf16",
    "fp16",
    "max_length",
    "packing",
    "completion_only_loss",
    "assistant_only_loss",
    "loss_type",
)


def _training_prompt_format(dataset) -> str | None:
    """`"chat"` when the training rows are conversational (as `SFTTrainer` renders them through the chat template),
    `"raw"` for plain-text rows, None when unknown (pre-tokenized rows, classification data, no data)."""
    from hf_immunize.evaluation.formatting import is_conversational_value

    columns = getattr(dataset, "column_names", None)
    if not columns or not hasattr(dataset, "__len__") or len(dataset) == 0:
        return None
    row = dataset[0]
    if "conversations" in columns or any(is_conversational_value(row.get(c)) for c in ("prompt", "messages")):
        return "chat"
    if any(isinstance(row.get(c), str) for c in ("prompt", "text", "completion")) and "label" not in columns:
        return "raw"
    return None


def _method_fields(config_class: type) -> tuple[str, ...]:
    """Fields a config adds to the first TRL or transformers class among its bases."""
    import dataclasses

    base = next(
        (c for c in config_class.__mro__ if c.__module__.split(".")[0] in ("trl", "transformers")),
        None,
    )
    if base is None or not dataclasses.is_dataclass(config_class):
        return ()
    inherited = {f.name for f in dataclasses.fields(base)}
    return tuple(f.name for f in dataclasses.fields(config_class) if f.name not in inherited)


def _device_default(args, name: str, declared):
    """The default a config resolves on this device: `bf16` left at None (or at TRL's True) is switched on only where
    a CUDA device supports it, so `bf16: False` on a CPU run is no change worth listing."""
    if name == "bf16" and declared in (None, True):
        from hf_immunize.utils import bf16_supported

        return bf16_supported() and not getattr(args, "use_cpu", False)
    return declared


def _non_default_fields(args, names) -> dict:
    """`{name: value}` of the dataclass fields `names` of `args` whose value differs from the default (the value a
    field's declared default, as the config resolves it on this device: see :func:`_device_default`)."""
    import dataclasses
    import enum

    def plain(value):
        return value.value if isinstance(value, enum.Enum) else value

    declared = {f.name: f for f in dataclasses.fields(args)} if dataclasses.is_dataclass(args) else {}
    out = {}
    for name in names:
        field = declared.get(name)
        if field is None or not field.init:
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        if default is not dataclasses.MISSING:
            default = _device_default(args, name, default)
        value = plain(getattr(args, name))
        if default is dataclasses.MISSING or value != plain(default):
            out[name] = value
    return out
