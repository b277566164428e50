"""`TrainerCallback`s that measure and document a defense while any `Trainer` trains (ours, TRL's, or a plain one).

- :class:`AttackProbeCallback`: every N steps (or at each evaluation) runs a short fine-tuning attack
  (:func:`hf_immunize.evaluation.attack.run_attack`) on a detached copy of the model and logs the harmful score after
  it. The training run itself is left exactly as it would be without the callback: same weights, same RNG streams.
- :class:`HarmfulLossGapCallback`: logs `h(w) − h(w')` on a fixed probe batch of harmful examples, with
  `w' = w − α·∇h(w)/‖∇h(w)‖`: how much one normalized harmful step lowers the harmful loss (the quantity Booster
  attenuates). The weights are restored bit-exactly and `.grad` is never touched.
- :class:`ImmunizationCardCallback`: writes the model card with an immunization report at every checkpoint save.

A callback sees no `Trainer` by default: its values go into `state.log_history` only. Bind it to reach the
`report_to` backends (and, for the card callback, `push_to_hub`):

```python
trainer = SFTTrainer(...)
AttackProbeCallback(harmful, benign, eval_harmful, every_n_steps=100).bind(trainer)  # also adds it
```
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Iterator

import torch
from transformers import TrainerCallback

from hf_immunize.core.perturbation import NORM_EPS, perturbed, preserved_rng

__all__ = ["AttackProbeCallback", "HarmfulLossGapCallback", "ImmunizationCardCallback"]


class _BindableCallback(TrainerCallback):
    """A callback that may hold its trainer, to log through `callback_handler.on_log` like `Trainer.log` does."""

    trainer = None

    def bind(self, trainer):
        """Remembers `trainer` and adds this callback to it (once); returns `self`."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def _emit(self, args, state, control, metrics: dict) -> None:
        """Appends `metrics` to `state.log_history` as its own entry and, when bound, sends them to every callback's
        `on_log` (the `report_to` integrations) without touching the trainer's metric buffers or its log schedule."""
        if not state.is_world_process_zero:
            return
        logs = {**metrics}
        if state.epoch is not None:
            logs["epoch"] = state.epoch
        state.log_history.append({**logs, "step": state.global_step})
        if self.trainer is not None:
            should_log = control.should_log  # `on_log` clears it; the regular log of this step must still happen
            self.trainer.callback_handler.on_log(args, state, control, logs)
            control.should_log = should_log

    @staticmethod
    def _due(state, every_n_steps: int | None) -> bool:
        return bool(every_n_steps) and state.global_step > 0 and state.global_step % every_n_steps == 0


@contextlib.contextmanager
def _isolated_global_state(device) -> Iterator[None]:
    """Runs a nested training run without leaving a trace: every global RNG (Python, NumPy, torch on CPU and on the
    device) and accelerate's process-wide `GradientState` / `AcceleratorState` are restored afterwards.

    A nested `Trainer` reseeds all RNGs in its constructor and shares accelerate's singletons with the outer run (its
    gradient-accumulation settings and active dataloaders would otherwise leak into the outer loop).
    """
    import numpy as np
    from accelerate.state import AcceleratorState, GradientState

    py_state, np_state = random.getstate(), np.random.get_state()
    shared = []
    for cls in (GradientState, AcceleratorState):
        storage = cls._shared_state
        shared.append((storage, dict(storage), {k: list(v) for k, v in storage.items() if isinstance(v, list)}))
    try:
        with preserved_rng(device):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        for storage, saved, lists in shared:
            for key, items in lists.items():
                saved[key][:] = items  # same list objects: live iterators keep their references
            storage.clear()
            storage.update(saved)


class AttackProbeCallback(_BindableCallback):
    """Runs a short fine-tuning attack on a detached copy of the model during training and logs its harmful score.

    Args:
        harmful_dataset, benign_dataset (`datasets.Dataset`): the attacker's `prompt, completion` pools.
        eval_harmful (`datasets.Dataset`): held-out harmful `prompt`s to score (see :func:`run_attack`).
        attack_config (`AttackConfig`, *optional*): the probe attack; defaults to a short one (100 samples, 10 %
            harmful, 20 steps at learning rate 1e-4, batch 10). It is a probe, not the standard attack of a report.
        every_n_steps (`int`, *optional*): run after every N-th optimizer step.
        at_evaluate (`bool`, *optional*): run after each evaluation; defaults to True when `every_n_steps` is None.
        tokenizer (*optional*): defaults to the trainer's `processing_class`.
        eval_benign, scorer, task_scorer: passed to :func:`run_attack`.
        prefix (`str`): prefix of the logged keys.

    Logged (one `log_history` entry per probe): `<prefix>/harmful_score_before`, `<prefix>/harmful_score_after`,
    `<prefix>/harmful_score_increase`, and `<prefix>/task_accuracy_after` / `<prefix>/harmful_content_after` when
    measured. `results` keeps `(global_step, AttackResult)` of every probe.

    The weights, optimizer, RNG streams (Python, NumPy, torch) and accelerate's shared state of the training run are
    exactly as without it. Single-process training only: with several processes it warns once and does nothing (the
    attack's nested Trainer would join the process group from one process alone).
    """

    def __init__(
        self,
        harmful_dataset,
        benign_dataset,
        eval_harmful,
        *,
        attack_config=None,
        every_n_steps: int | None = None,
        at_evaluate: bool | None = None,
        tokenizer=None,
        eval_benign=None,
        scorer=None,
        task_scorer=None,
        prefix: str = "attack_probe",
    ):
        from hf_immunize.evaluation.attack import AttackConfig

        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"`every_n_steps` must be a positive int or None, got {every_n_steps!r}.")
        if at_evaluate is None:
            at_evaluate = every_n_steps is None
        if not every_n_steps and not at_evaluate:
            raise ValueError("AttackProbeCallback never runs: set `every_n_steps` or `at_evaluate=True`.")
        if attack_config is None:
            attack_config = AttackConfig(n_samples=100, max_steps=20, learning_rate=1e-4, batch_size=10)
        if not isinstance(attack_config, AttackConfig):
            raise TypeError(f"`attack_config` must be an AttackConfig, got {type(attack_config).__name__}.")
        self.harmful_dataset, self.benign_dataset, self.eval_harmful = harmful_dataset, benign_dataset, eval_harmful
        self.attack_config = attack_config
        self.every_n_steps, self.at_evaluate = every_n_steps, at_evaluate
        self.tokenizer, self.eval_benign = tokenizer, eval_benign
        self.scorer, self.task_scorer, self.prefix = scorer, task_scorer, prefix
        self.results: list[tuple[int, object]] = []

    def on_step_end(self, args, state, control, **kwargs):
        if self._due(state, self.every_n_steps):
            self._probe(args, state, control, **kwargs)
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        if self.at_evaluate:
            self._probe(args, state, control, **kwargs)
        return control

    def _probe(self, args, state, control, model=None, processing_class=None, **kwargs) -> None:
        if getattr(args, "world_size", 1) > 1:
            # The attack trains a nested Trainer, whose accelerator would join the outer run's process group from
            # the main process alone and wait forever for the others.
            if not getattr(self, "_warned_distributed", False):
                warnings.warn(
                    f"AttackProbeCallback is skipped: it runs in single-process training only (world_size="
                    f"{args.world_size}). Attack the saved checkpoints with `hf-immunize attack` instead.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._warned_distributed = True
            return
        if not state.is_world_process_zero:
            return
        if any(step == state.global_step for step, _ in self.results):  # e.g. a step probe and an evaluation
            return
        from hf_immunize.evaluation.attack import run_attack

        tokenizer = self.tokenizer or processing_class
        if tokenizer is None:
            raise ValueError(
                "AttackProbeCallback needs a tokenizer: pass `tokenizer=` or train with `processing_class`."
            )
        with _isolated_global_state(args.device):
            result = run_attack(  # attacks a detached copy (hf_immunize.utils.detached_copy); `model` is untouched
                model,
                tokenizer,
                self.attack_config,
                self.harmful_dataset,
                self.benign_dataset,
                self.eval_harmful,
                self.eval_benign,
                self.scorer,
                task_scorer=self.task_scorer,
            )
        self.results.append((state.global_step, result))
        p = self.prefix
        metrics = {
            f"{p}/harmful_score_before": result.harmful_score_before,
            f"{p}/harmful_score_after": result.harmful_score_after,
            f"{p}/harmful_score_increase": result.harmful_score_after - result.harmful_score_before,
        }
        for key in ("task_accuracy", "harmful_content"):
            if result.after.get(key) is not None:
                metrics[f"{p}/{key}_after"] = result.after[key]
        self._emit(args, state, control, metrics)


class HarmfulLossGapCallback(_BindableCallback):
    """Logs `h(w) − h(w − α·g/‖g‖)` with `g = ∇h(w)` on a fixed probe batch of harmful examples.

    `h` is the token-mean next-token loss on the completion (labelled) tokens; `‖g‖` one global L2 norm over the
    trainable tensors (LoRA adapters only, under PEFT). A large gap means one harmful fine-tuning step would lower the
    harmful loss a lot: Booster trains this gap down.

    Args:
        probe_data: a batch dict with `input_ids`, `labels` (−100 = no loss) and optional `attention_mask`; or rows
            (a `datasets.Dataset` or a list of dicts) with `prompt` and `completion` (loss on the completion), or
            `text` (loss on every token).
        step_size (`float`, defaults to `0.1`): α.
        every_n_steps (`int`, *optional*): defaults to the trainer's `logging_steps`.
        tokenizer (*optional*): to tokenize rows; defaults to the trainer's `processing_class`.
        max_length (`int`, defaults to `256`): truncation of tokenized rows.
        prefix (`str`): prefix of the logged keys.

    Logged: `<prefix>/harmful_loss` (h(w)), `<prefix>/harmful_loss_perturbed` (h(w')), `<prefix>/harmful_loss_gap`,
    `<prefix>/harmful_grad_norm`. The probe runs in eval mode (no dropout) under a forked RNG; the weights are
    restored bit-exactly from a copy and `.grad` is not touched, so training is unchanged.
    """

    def __init__(
        self,
        probe_data,
        *,
        step_size: float = 0.1,
        eps: float = NORM_EPS,
        every_n_steps: int | None = None,
        tokenizer=None,
        max_length: int = 256,
        prefix: str = "harmful_gap",
    ):
        if not step_size > 0:
            raise ValueError(f"`step_size` must be > 0, got {step_size!r}.")
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"`every_n_steps` must be a positive int or None, got {every_n_steps!r}.")
        self.probe_data, self.step_size, self.eps = probe_data, step_size, eps
        self.every_n_steps, self.tokenizer, self.max_length, self.prefix = every_n_steps, tokenizer, max_length, prefix
        self._batch: dict | None = None
        self.history: list[dict] = []

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        every = self.every_n_steps or max(1, int(args.logging_steps))  # a fractional `logging_steps`: every step
        if getattr(args, "fsdp", None) or getattr(args, "deepspeed", None):
            # Sharded parameters: a local gradient norm and per-tensor edits would be wrong (see Booster's guard).
            if not getattr(self, "_warned_sharded", False):
                warnings.warn(
                    "HarmfulLossGapCallback is skipped under FSDP/DeepSpeed (sharded parameters).",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._warned_sharded = True
            return control
        if self._due(state, every) and state.is_world_process_zero:
            metrics = self.measure(model, processing_class)
            self.history.append({"step": state.global_step, **metrics})
            self._emit(args, state, control, metrics)
        return control

    def measure(self, model, tokenizer=None) -> dict:
        """The gap and its parts at the model's current weights (which it leaves bit-identical)."""
        batch = self._probe_batch(tokenizer)
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("HarmfulLossGapCallback: the model has no trainable parameter to perturb.")
        was_training = model.training
        model.eval()
        try:
            with preserved_rng(device):
                with torch.enable_grad():
                    loss = self._loss(model, batch)
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                direction = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
                with perturbed(params, direction, self.step_size, self.eps) as norm, torch.no_grad():
                    perturbed_loss = self._loss(model, batch)
        finally:
            model.train(was_training)
        p = self.prefix
        h, h_prime = float(loss.detach()), float(perturbed_loss)
        return {
            f"{p}/harmful_loss": h,
            f"{p}/harmful_loss_perturbed": h_prime,
            f"{p}/harmful_loss_gap": h - h_prime,
            f"{p}/harmful_grad_norm": float(norm),
        }

    @staticmethod
    def _loss(model, batch) -> torch.Tensor:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs, use_cache=False).logits  # (B, T, V)
        targets = labels[:, 1:]  # (B, T - 1)
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T - 1, V)
        picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T - 1)
        mask = targets.ne(-100)
        return -(picked * mask).sum() / mask.sum().clamp(min=1)

    def _probe_batch(self, tokenizer) -> dict:
        if self._batch is not None:
            return self._batch
        data = self.probe_data
        if isinstance(data, dict) and "input_ids" in data:
            if "labels" not in data:
                raise ValueError(f"`probe_data`: a batch needs `labels`; found keys {sorted(data)}.")
            batch = {k: torch.as_tensor(v) for k, v in data.items() if k in ("input_ids", "attention_mask", "labels")}
        else:
            tokenizer = self.tokenizer or tokenizer
            if tokenizer is None:
                raise ValueError("HarmfulLossGapCallback needs a tokenizer to tokenize `probe_data` rows.")
            batch = _tokenize_rows(list(data), tokenizer, self.max_length)
        self._batch = batch
        return batch


def _tokenize_rows(rows: list[dict], tokenizer, max_length: int) -> dict:
    """Right-padded `input_ids`, `attention_mask`, `labels` (B, T); loss on completions, or on all of `text`."""
    if not rows:
        raise ValueError("`probe_data` is empty.")
    ids, labels = [], []
    for i, row in enumerate(rows):
        if "prompt" in row and "completion" in row:
            prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            full = tokenizer(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"]
            row_labels = [-100] * len(prompt) + full[len(prompt) :]
        elif "text" in row:
            full = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
            row_labels = list(full)
        else:
            raise ValueError(f"`probe_data` row {i}: needs `prompt` and `completion`, or `text`; found {sorted(row)}.")
        ids.append(full[:max_length])
        labels.append(row_labels[:max_length])
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in ids]),  # (B, T)
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids]),  # (B, T)
        "labels": torch.tensor([r + [-100] * (width - len(r)) for r in labels]),  # (B, T)
    }


class ImmunizationCardCallback(_BindableCallback):
    """Writes the model card, with an immunization report, into `output_dir` at every checkpoint save.

    With an hf_immunize trainer, binding it is the same as `trainer.set_immunization_report(report)`. With any other
    trainer the card is rendered from `model_cards/base.md` (plus the `method` section when given); when bound, the
    trainer's own `create_model_card` is replaced by ours, so `trainer.push_to_hub()` uploads this card and its plot.

    Args:
        report: an `ImmunizationReport`, its dict, its JSON file or folder (see `set_immunization_report`); may be set
            later with :meth:`set_report` (e.g. after an attack run finishes).
        method (`str`, *optional*): method key for the card's section and tag (`"booster"`, `"mlac"`, `"unlearn"`,
            `"mistake-analysis"`).
        model_name, base_model, datasets, tags, license: card metadata (the base model defaults to the model's
            `_name_or_path` when that is a Hub id).
    """

    def __init__(
        self,
        report=None,
        *,
        method: str | None = None,
        model_name: str | None = None,
        base_model: str | None = None,
        datasets: list[str] | None = None,
        tags: list[str] | None = None,
        license: str | None = None,
    ):
        self.set_report(report)
        self.method, self.model_name, self.base_model = method, model_name, base_model
        self.datasets, self.tags, self.license = datasets, tags, license
        self.written: list = []

    def set_report(self, report) -> None:
        from hf_immunize.core.card import load_report

        if report is not None:
            load_report(report)  # fail now on a bad path, not at the first checkpoint
        self.report = report
        if self.trainer is not None and hasattr(self.trainer, "set_immunization_report"):
            self.trainer.set_immunization_report(report)

    def bind(self, trainer):
        super().bind(trainer)
        if hasattr(trainer, "set_immunization_report"):  # an hf_immunize trainer writes the card itself
            trainer.set_immunization_report(self.report)
        else:
            trainer.create_model_card = self._create_model_card_for(trainer)
        return self

    def _create_model_card_for(self, trainer):
        def create_model_card(model_name=None, dataset_name=None, tags=None, **kwargs):
            if not trainer.is_world_process_zero():
                return
            extra = [tags] if isinstance(tags, str) else list(tags or [])
            names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
            self.write(
                trainer.args,
                trainer.model,
                model_name=model_name,
                extra_tags=extra,
                datasets=names or None,
                license=kwargs.get("license"),
                base_model=kwargs.get("finetuned_from"),
            )

        return create_model_card

    def on_save(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return control
        trainer = self.trainer
        if trainer is not None and hasattr(trainer, "set_immunization_report"):
            trainer.create_model_card()  # our trainers: their own card, with the report attached in `bind`
        else:
            self.write(args, model)
        self.written.append(state.global_step)
        return control

    def write(self, args, model, *, model_name=None, extra_tags=(), datasets=None, license=None, base_model=None):
        """Renders the card for a trainer that is not an hf_immunize one (see the class docstring)."""
        from pathlib import Path

        from hf_immunize.core.card import write_model_card
        from hf_immunize.core.card_hooks import _TRAINING_FIELDS, _non_default_fields

        config = getattr(model, "config", None)
        model_tags = list(getattr(model, "model_tags", None) or [])
        tags = list(dict.fromkeys([*model_tags, *(self.tags or []), *extra_tags]))
        hub_id = getattr(args, "hub_model_id", None)
        write_model_card(
            args.output_dir,
            model_name or self.model_name or (hub_id.split("/")[-1] if hub_id else Path(args.output_dir).name),
            report=self.report,
            base_model=base_model or self.base_model or getattr(config, "_name_or_path", None) or None,
            datasets=datasets or self.datasets,
            tags=tags,
            method=self.method,
            license=license or self.license,
            training_hyperparameters=_non_default_fields(args, _TRAINING_FIELDS) or None,
            config_class=type(args).__name__,
            secrets=[args.hub_token] if getattr(args, "hub_token", None) else (),
        )
