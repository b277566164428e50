"""`ImmunizeTrainerMixin`: what every hf_immunize trainer shares, placed before the HF base class in the MRO.

```python
class MyTrainer(ImmunizeTrainerMixin, SFTTrainer):
    _tag_names = ["hf-immunize", "my-method"]
    _name = "MyMethod"
    _paper = {"title": "...", "id": "2400.00000", "citation": "@article{...}"}
    loss_is_scaled_for_ga = True
```

- **Card metadata.** Each trainer declares `_tag_names`, `_name` and `_paper` in its own class body; inheriting them
  from TRL (`["trl", "sft"]`, "SFT") would label a Booster model as plain SFT on the Hub. So does
  `loss_is_scaled_for_ga`: a custom loss has to say how it scales under gradient accumulation.
  :func:`check_trainer_declarations` enforces both, at class creation for the trainers under
  `hf_immunize.methods`, and in the tests for every exported trainer.
- **Method metrics.** `self._log_metric(name, value)` buffers a value; `log()` averages the buffer and merges it into
  the logs, so it reaches `state.log_history` and every `report_to` backend.
- **Gradient accumulation.** :meth:`_count_loss_tokens` counts label tokens over an accumulation window and over all
  processes, the normaliser that makes a token-sum loss independent of how the window is cut.
- **Checkpoints.** A method's extra state (e.g. the harmful stream of :mod:`hf_immunize.core.paired`) is saved beside
  the RNG state of every checkpoint (one file per process) and loaded again by `train(resume_from_checkpoint=...)`.
- **Model card.** `create_model_card` renders `model_cards/base.md` (plus the method's section) through
  :mod:`hf_immunize.core.card`, at every checkpoint and on `push_to_hub`, with the report attached by
  `set_immunization_report`. A trainer may override the `_card_*` hooks: `_card_method`, `_card_hyperparameters`,
  `_card_training_hyperparameters`, `_card_training_data`, `_card_method_description`, `_card_limitations`,
  `_card_template_context`.
- **Push.** `push_to_hub` uploads `output_dir` without pickles and turns network failures into a `ConnectionError`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import torch
from transformers.utils import logging

from hf_immunize.core.hub import hub_errors, push_folder

logger = logging.get_logger(__name__)

__all__ = ["IMMUNIZE_STATE_NAME", "ImmunizeTrainerMixin", "check_trainer_declarations"]

IMMUNIZE_STATE_NAME = "immunize_state"
_CARD_ATTRIBUTES = ("_tag_names", "_name", "_paper")


def check_trainer_declarations(cls: type) -> None:
    """Raises `TypeError` unless `cls` declares the card trio and `loss_is_scaled_for_ga` in its own class body.

    >>> class Inherits(ImmunizeTrainerMixin):
    ...     pass
    >>> check_trainer_declarations(Inherits)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: Inherits must declare `_tag_names`, `_name`, `_paper`, `loss_is_scaled_for_ga` in its own class body...
    """
    missing = [a for a in (*_CARD_ATTRIBUTES, "loss_is_scaled_for_ga") if a not in vars(cls)]
    if missing:
        raise TypeError(
            f"{cls.__name__} must declare {', '.join(f'`{a}`' for a in missing)} in its own class body (inherited "
            "values would put another method's name, tags and paper on its model cards, or scale its loss wrongly "
            "under gradient accumulation)."
        )
    tags, name, paper = (vars(cls)[a] for a in _CARD_ATTRIBUTES)
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
        raise TypeError(f"{cls.__name__}._tag_names must be a non-empty list of strings, got {tags!r}.")
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__}._name must be a non-empty string, got {name!r}.")
    if not isinstance(paper, dict) or not {"title", "id", "citation"} <= set(paper):
        raise TypeError(f"{cls.__name__}._paper must be a dict with 'title', 'id' and 'citation', got {paper!r}.")


def _removes_new_empty_output_dir_on_error(init):
    """Wraps a trainer's `__init__`: `Trainer.__init__` creates `args.output_dir` early, and a later check of the
    subclass (a bad harmful set, say) would leave that empty directory behind; remove it if this call created it."""
    import functools

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        out = getattr(training_args, "output_dir", None)
        existed = out is None or os.path.exists(out)
        try:
            init(self, *args, **kwargs)
        except BaseException:
            _remove_if_empty(out if not existed else None)
            raise
        if not existed:  # `train()` removes it too when its own checks fail before anything is written
            self._hf_immunize_new_output_dir = out

    return wrapped


def _remove_if_empty(path) -> None:
    if path is not None and os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)


class ImmunizeTrainerMixin:
    """Shared behaviour of the hf_immunize trainers; see the module docstring. Put it first in the bases."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Our own trainers are checked when they are defined; user subclasses may inherit everything.
        if cls.__module__.startswith("hf_immunize.methods."):
            check_trainer_declarations(cls)
        if "__init__" in vars(cls):
            cls.__init__ = _removes_new_empty_output_dir_on_error(vars(cls)["__init__"])

    def __init__(self, *args, **kwargs):
        # How the training rows are rendered, recorded at save time so the evaluation prompts match (chat or raw).
        train_dataset = kwargs.get("train_dataset", args[3] if len(args) > 3 else None)
        self._hf_immunize_prompt_format = _training_prompt_format(train_dataset)
        super().__init__(*args, **kwargs)
        self._immunize_metrics: dict[str, defaultdict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """`Trainer.init_hf_repo` (run by `__init__` under `push_to_hub=True`), with an error that says what to do
        instead of the Hub client's connection traceback."""
        try:
            super().init_hf_repo(token=token, private=private)
        except Exception as err:  # offline mode, no network, a bad token: all before any compute
            repo = self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
            raise ValueError(
                f"`push_to_hub=True` needs the Hugging Face Hub to create the repo {repo!r}, which failed "
                f"({type(err).__name__}: {err}). Check the network and `hub_token` (HF_HUB_OFFLINE=1 forbids any "
                "call), or train with push_to_hub=False and upload the saved folder later with `hf-immunize push`."
            ) from None

    # ---- metrics ----------------------------------------------------------------------------------------------

    def _log_metric(self, name: str, value: float | torch.Tensor, mode: str | None = None) -> None:
        """Buffers one value of a method metric; `log()` reports the mean of the buffer and clears it."""
        if mode is None:
            mode = "train" if self.model.training else "eval"
        if isinstance(value, torch.Tensor):
            value = value.detach().float().item()
        self._immunize_metrics[mode][name].append(float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        buffer = self._immunize_metrics[mode]
        metrics = {name: sum(values) / len(values) for name, values in buffer.items() if values}
        if mode == "eval":
            metrics = {f"eval_{name}": value for name, value in metrics.items()}
        logs.update(metrics)
        buffer.clear()
        super().log(logs, start_time)

    # ---- gradient accumulation and processes ------------------------------------------------------------------

    def _count_loss_tokens(self, batches: list[dict]) -> torch.Tensor:
        """Label tokens that carry loss in `batches`, summed over all processes (as `num_items_in_batch` counts).

        Causal LM losses shift labels, so position 0 never carries loss: `labels[..., 1:] != -100`, or
        `shift_labels` when the collator provides them.
        """
        count = torch.zeros((), dtype=torch.long, device=self.args.device)
        for batch in batches:
            labels = batch["shift_labels"] if "shift_labels" in batch else batch["labels"][..., 1:]
            count += labels.ne(-100).sum().to(count.device)
        return self._reduce_sum(count)

    def _summed_token_nll(self, model, inputs: dict) -> torch.Tensor:
        """Sum over label tokens of `-log p(label)` for a causal LM batch (labels shifted, `-100` ignored).

        Under `SFTTrainer` the model carries TRL's fused LM head, which scores only the labelled positions and never
        builds the `(B, T, V)` logits; other trainers fall back to the logits.
        """
        from trl import SFTTrainer

        if isinstance(self, SFTTrainer):
            outputs = model(**inputs, use_cache=False, fused_lm_head=True)
            return -outputs.log_probs.sum()  # log_probs: (B, T - 1), zero where the label is -100
        labels = inputs["labels"]
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits  # (B, T, V)
        targets = labels[..., 1:]  # (B, T - 1)
        mask = targets.ne(-100)
        log_probs = torch.log_softmax(logits[..., :-1, :].float(), dim=-1)  # (B, T - 1, V)
        picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T - 1)
        return -(picked * mask).sum()

    def _reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of `tensor` over all processes (a no-op with one process)."""
        if self.accelerator.num_processes > 1:
            return self.accelerator.reduce(tensor, reduction="sum")
        return tensor

    def _refuse_sharded_training(self, method: str, edits_weights: bool = True) -> None:
        """Refuses, before any compute, the sharded engines a method has not been verified under.

        FSDP2 (`fsdp_version: 2`) is supported by every method: Booster's and MLAC's weight edits, norms and extra
        gradients act on the local shards (:mod:`hf_immunize.core.sharding`). Refused: FSDP1 (flat parameters) for
        every method; for methods that edit the weights between passes (`edits_weights`), DeepSpeed (ZeRO flattens
        and partitions the parameters) and FSDP2 with parameters offloaded to the CPU.
        """
        engine = "recipes/accelerate/fsdp.yaml"
        if edits_weights and getattr(self, "is_deepspeed_enabled", False):
            raise ValueError(
                f"{method} does not support DeepSpeed: it edits and restores the trainable weights between passes and "
                "takes one global gradient norm, which ZeRO's flattened, partitioned parameters break. To shard a "
                f"model that does not fit one device use FSDP2 (`accelerate launch --config_file {engine}`, "
                "`fsdp_version: 2`); when it fits, use DDP (recipes/accelerate/ddp.yaml), with LoRA/QLoRA for large "
                "models."
            )
        if not getattr(self, "is_fsdp_enabled", False):
            return
        plugin = self.accelerator.state.fsdp_plugin
        version = getattr(plugin, "fsdp_version", 1)
        if version != 2:
            raise ValueError(
                f"{method} does not support FSDP{version} (`fsdp_version: {version}`): only FSDP2 is verified (FSDP1 "
                "flattens the parameters into one buffer per unit). Set `fsdp_version: 2` in the accelerate config, "
                f"as in {engine}, or `fsdp_config={{'version': 2}}` in the training arguments."
            )
        if edits_weights and _offloads_parameters(plugin):
            raise ValueError(
                f"{method} does not support FSDP2 with the parameters offloaded to the CPU (`fsdp_offload_params: "
                "true`): between its extra passes it moves the parameter shards in place, restores them and keeps "
                "gradient buffers beside them, which is not verified with offloaded shards. Set `fsdp_offload_params: "
                "false` and shard over more GPUs, or train LoRA/QLoRA adapters."
            )

    # ---- numerical guard -------------------------------------------------------------------------------------

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        # `create_optimizer` may run again (e.g. on resume); one hook per optimizer instance.
        if not getattr(optimizer, "_hf_immunize_guarded", False):
            optimizer.register_step_pre_hook(self._skip_non_finite_step)
            optimizer._hf_immunize_guarded = True
        return optimizer

    def _skip_non_finite_step(self, optimizer, args, kwargs) -> None:
        """Before every optimizer step: when any gradient is NaN or infinite (a NaN loss, an overflowing harmful
        gradient, ...), drop all gradients so that the step leaves every weight (and the optimizer's moments)
        untouched, count the skip as `nonfinite_steps_skipped` and warn. Gradients are already all-reduced here, so
        every process skips the same steps; under FSDP2 each process holds only its shards, so the verdict is
        reduced over the processes."""
        from hf_immunize.core.sharding import is_sharded, local_tensors

        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        sharded = is_sharded(grads)
        local = [g for g in local_tensors(grads) if g.numel()] if sharded else grads
        # One sum per tensor: NaN or inf anywhere makes it non-finite. Cheaper than `isfinite(g).all()`, which
        # writes a mask as large as the gradient (8 ms a step on a 2.5M-parameter model, 3 % of a Booster step).
        # A finite gradient whose sum overflows (entries near 1e32 in fp32) counts as non-finite too.
        sums = [g.sum(dtype=torch.promote_types(g.dtype, torch.float32)) for g in local]
        finite = torch.stack(sums).isfinite().all() if local else torch.tensor(True)
        if sharded:  # a NaN in one process's shard must skip the step everywhere
            finite = self._reduce_sum((~finite).to(device=self.args.device, dtype=torch.int32)) == 0
        if bool(finite):
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # torch optimizers skip parameters without a gradient
        self._nonfinite_steps_skipped = getattr(self, "_nonfinite_steps_skipped", 0) + 1
        self._log_metric("nonfinite_steps_skipped", float(self._nonfinite_steps_skipped), mode="train")
        logger.warning(
            "%s: non-finite gradient at global step %d (a NaN/inf loss or gradient); the optimizer step was skipped "
            "and the weights are unchanged (%d step(s) skipped so far).",
            type(self).__name__,
            self.state.global_step,
            self._nonfinite_steps_skipped,
        )

    # ---- checkpoints ------------------------------------------------------------------------------------------

    def _immunize_state_dict(self) -> dict:
        """This process's method state to save in a checkpoint; override to add to it."""
        return {}

    def _load_immunize_state_dict(self, state: dict) -> None:
        """Restores what `_immunize_state_dict` returned; override together with it."""

    def _immunize_state_path(self, checkpoint_dir: str) -> str:
        suffix = f"_{self.args.process_index}" if self.args.world_size > 1 else ""
        return os.path.join(checkpoint_dir, f"{IMMUNIZE_STATE_NAME}{suffix}.pt")

    def _save_rng_state(self, output_dir: str) -> None:
        # Called by `Trainer._save_checkpoint` on every process, next to the RNG state that resuming also needs.
        super()._save_rng_state(output_dir)
        state = self._immunize_state_dict()
        if state:
            path = self._immunize_state_path(output_dir)
            torch.save(state, path + ".tmp")
            os.replace(path + ".tmp", path)  # never a half-written state file

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kw):
        train_dataset = getattr(self, "train_dataset", None)
        if train_dataset is not None and hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
            max_length = getattr(self.args, "max_length", None)
            _remove_if_empty(getattr(self, "_hf_immunize_new_output_dir", None))
            raise ValueError(
                f"`train_dataset` has no example left after preparation (rows whose labels are all masked, e.g. a "
                f"completion cut off by `max_length`={max_length!r}, are dropped); nothing to train on."
            )
        if resume_from_checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        if resume_from_checkpoint:
            path = self._immunize_state_path(resume_from_checkpoint)
            if os.path.isfile(path):
                self._load_immunize_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
            elif self._immunize_state_dict():
                raise FileNotFoundError(
                    f"{path} is missing: the checkpoint {resume_from_checkpoint!r} was not written by "
                    f"{type(self).__name__} (or with this number of processes), so its method state (e.g. the "
                    "position of the second data stream) cannot be restored."
                )
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint or None,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kw,
        )

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


def _offloads_parameters(fsdp_plugin) -> bool:
    """Whether an accelerate FSDP plugin offloads the parameters to the CPU (FSDP2's `CPUOffloadPolicy`)."""
    try:
        from torch.distributed.fsdp import CPUOffloadPolicy
    except ImportError:
        return False
    return isinstance(getattr(fsdp_plugin, "cpu_offload", None), CPUOffloadPolicy)


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
