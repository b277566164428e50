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
  :mod:`hf_immunize.model_card`, at every checkpoint and on `push_to_hub`, with the report attached by
  `set_immunization_report`. A trainer may override the `_card_*` hooks: `_card_method`, `_card_hyperparameters`,
  `_card_training_hyperparameters`, `_card_training_data`, `_card_method_description`, `_card_limitations`,
  `_card_template_context`.
- **Push.** `push_to_hub` uploads `output_dir` without pickles and turns network failures into a `ConnectionError`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import defaultdict
from pathlib import Path

import torch
from transformers.utils import logging

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
        super().__init__(*args, **kwargs)
        self._immunize_metrics: dict[str, defaultdict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

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

    def _refuse_sharded_training(self, method: str) -> None:
        """Raises when FSDP or DeepSpeed manage the parameters: their shards make per-tensor weight edits and
        local gradient norms wrong, and nothing in this package has been verified under them."""
        if getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False):
            backend = "FSDP" if getattr(self, "is_fsdp_enabled", False) else "DeepSpeed"
            raise ValueError(
                f"{method} does not support {backend}: it edits and restores the trainable weights between passes "
                f"and takes one global gradient norm, which {backend}'s sharded/flattened parameters break. Use "
                "single-device or DDP training (e.g. `accelerate launch --multi_gpu`), with LoRA/QLoRA for large "
                "models."
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
        every process skips the same steps."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
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

    # ---- model card -------------------------------------------------------------------------------------------

    def set_immunization_report(self, report) -> None:
        """Attaches an immunization report to every card this trainer writes (checkpoints, `push_to_hub`).

        `report`: an :class:`~hf_immunize.evaluation.report.ImmunizationReport`, its dict, its JSON file, or the
        folder `ImmunizationReport.save` wrote (its PNG is then copied, not redrawn); None detaches it. The card gets
        the attack settings and the before/after table, and the plot is written next to it as
        `immunization_report.png`.
        """
        from hf_immunize.model_card import load_report

        if report is not None:
            load_report(report)  # a bad path or dict fails here, not at the next checkpoint
        self._immunization_report = report

    @property
    def immunization_report(self):
        """The report attached by :meth:`set_immunization_report` (as given), or None."""
        return getattr(self, "_immunization_report", None)

    def _card_method(self) -> str | None:
        """Key of the method's section template in `model_cards/` (default: the first tag that has one)."""
        from hf_immunize.model_card import section_template

        return next((t for t in self._tag_names if t != "hf-immunize" and section_template(t)), None)

    def _card_hyperparameters(self) -> dict:
        """Method hyperparameters shown on the card; override to list the method's own config fields.

        By default: the fields the trainer's config adds to its TRL/transformers base class, where they differ from
        their defaults.
        """
        return _non_default_fields(self.args, _method_fields(type(self.args)))

    def _card_training_hyperparameters(self) -> dict:
        """Trainer settings (learning rate, steps, batch size, ...) that differ from the config class's defaults."""
        return _non_default_fields(self.args, _TRAINING_FIELDS)

    def _card_training_data(self, dataset_names: list[str]) -> list[str]:
        """Lines of the card's training-data section; override to add the method's extra datasets."""
        from hf_immunize.model_card import is_local_path

        lines = [f"`{name}`" for name in dataset_names if not is_local_path(name)]
        for attr, label in (("train_dataset", "training set"), ("eval_dataset", "evaluation set")):
            dataset = getattr(self, attr, None)
            if dataset is not None and not isinstance(dataset, dict) and hasattr(dataset, "__len__"):
                lines.append(f"{label}: {len(dataset)} rows")
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

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        **kwargs,
    ) -> None:
        """Writes `output_dir/README.md` from our card template (TRL's template lookup cannot reach our files).

        Also takes `Trainer.create_model_card`'s `license` and `finetuned_from` (passed on by `push_to_hub`), and
        `report` (see :meth:`set_immunization_report`). With a report attached, its plot and JSON are written beside
        the card.
        """
        if not self.is_world_process_zero() or getattr(self, "_card_written_by_checkpoint_hook", False):
            return
        from hf_immunize.model_card import write_model_card

        report = kwargs.get("report", kwargs.get("immunization_report"))
        if report is not None:
            self.set_immunization_report(report)
        name_or_path = getattr(getattr(self.model, "config", None), "_name_or_path", "") or ""
        base_model = kwargs.get("finetuned_from") or name_or_path or None
        user_tags = [tags] if isinstance(tags, str) else list(tags or [])
        dataset_names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
        write_model_card(
            self.args.output_dir,
            model_name or self._card_model_name(),
            report=self.immunization_report,
            base_model=base_model,
            datasets=dataset_names or None,
            tags=list(dict.fromkeys([*self._tag_names, *user_tags])),
            method=self._card_method(),
            method_title=self._name,
            method_description=self._card_method_description(),
            paper=self._paper,
            license=kwargs.get("license"),
            training_data=self._card_training_data(dataset_names) or None,
            hyperparameters=self._card_hyperparameters() or None,
            training_hyperparameters=self._card_training_hyperparameters() or None,
            config_class=type(self.args).__name__,
            limitations=self._card_limitations(),
            section_context=self._card_template_context(),
            secrets=[self.args.hub_token] if self.args.hub_token else (),
        )

    def _save_checkpoint(self, model, trial) -> None:
        # The card (with the attached report) is written at every checkpoint, before the checkpoint may be pushed;
        # TRL's own hook in `SFTTrainer._save_checkpoint` is muted so the card is rendered once.
        self.create_model_card(model_name=self._card_model_name())
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

        Uploaded: the safetensors weights, config, tokenizer, `README.md` and the report's plot and JSON. Left out,
        besides the Trainer's `_*` and `checkpoint-*`: `*.bin`, `*.pt`, `*.pth`, `*.pkl` (e.g. `training_args.bin`,
        a pickle that holds `hub_token` when one was given). `kwargs` go to :meth:`create_model_card` (`model_name`,
        `dataset_name`, `tags`, `license`, `finetuned_from`, `report`).
        """
        from transformers.utils.hub import hf_api

        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        model_name = kwargs.pop("model_name", None)
        if model_name is None and self.args.should_save:
            model_name = self._card_model_name()
        token = token if token is not None else self.args.hub_token
        with _hub_errors(self.args.hub_model_id or Path(self.args.output_dir).name):
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
        with _hub_errors(self.hub_model_id):
            return hf_api().upload_folder(
                repo_id=self.hub_model_id,
                folder_path=self.args.output_dir,
                commit_message=commit_message,
                token=token,
                run_as_future=not blocking,
                ignore_patterns=list(_PUSH_IGNORE),
                revision=revision if revision is not None else self.args.hub_revision,
            )


# Never uploaded by `push_to_hub`: the Trainer's own exclusions, then pickles (weights go as safetensors).
_PUSH_IGNORE = ("_*", "checkpoint-*", "*.bin", "*.pt", "*.pth", "*.pkl")

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


def _non_default_fields(args, names) -> dict:
    """`{name: value}` of the dataclass fields `names` of `args` whose value differs from the field's default."""
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
        value = plain(getattr(args, name))
        if default is dataclasses.MISSING or value != plain(default):
            out[name] = value
    return out


@contextlib.contextmanager
def _hub_errors(repo_id: str | None):
    """Turns a connection failure or offline mode during a Hub call into one clear `ConnectionError`."""
    try:
        yield
    except Exception as err:
        from huggingface_hub import constants
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        chain, cause = [], err
        while cause is not None and len(chain) < 8:
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        names = {type(e).__name__ for e in chain}
        if any(isinstance(e, OfflineModeIsEnabled) for e in chain):
            raise ConnectionError(
                f"push_to_hub({repo_id!r}): the Hugging Face Hub is disabled by HF_HUB_OFFLINE=1; unset it to push."
            ) from err
        unreachable = any(isinstance(e, ConnectionError | TimeoutError | socket.gaierror) for e in chain) or bool(
            names & {"ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "NetworkError"}
        )
        if unreachable and not isinstance(err, HfHubHTTPError):  # an HTTP error means the server did answer
            raise ConnectionError(
                f"push_to_hub({repo_id!r}): cannot reach the Hugging Face Hub at {constants.ENDPOINT} "
                f"({type(err).__name__}: {err}). Check the network, `HF_ENDPOINT`, or push later with "
                "`trainer.push_to_hub()`."
            ) from err
        raise
