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
- **Model card.** `create_model_card` renders `model_cards/base.md` through :mod:`hf_immunize.model_card`.
"""

from __future__ import annotations

import os
from collections import defaultdict

import torch

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


class ImmunizeTrainerMixin:
    """Shared behaviour of the hf_immunize trainers; see the module docstring. Put it first in the bases."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Our own trainers are checked when they are defined; user subclasses may inherit everything.
        if cls.__module__.startswith("hf_immunize.methods."):
            check_trainer_declarations(cls)

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

    def _card_hyperparameters(self) -> dict:
        """Method hyperparameters shown on the card; override to list the method's own config fields."""
        return {}

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        **kwargs,
    ) -> None:
        """Writes `output_dir/README.md` from our card template (TRL's template lookup cannot reach our files).

        Also takes `Trainer.create_model_card`'s `license` and `finetuned_from` (passed on by `push_to_hub`).
        """
        if not self.is_world_process_zero():
            return
        from hf_immunize.model_card import render_model_card

        name_or_path = getattr(getattr(self.model, "config", None), "_name_or_path", "") or ""
        base_model = kwargs.get("finetuned_from") or name_or_path
        base_model = base_model if base_model and not os.path.isdir(base_model) else None
        user_tags = [tags] if isinstance(tags, str) else list(tags or [])
        dataset_names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or [])
        card = render_model_card(
            model_name or os.path.basename(os.path.normpath(self.args.output_dir)),
            base_model=base_model,
            datasets=dataset_names or None,
            tags=list(dict.fromkeys([*self._tag_names, *user_tags])),
            method_title=self._name,
            paper=self._paper,
            license=kwargs.get("license"),
            hyperparameters=self._card_hyperparameters() or None,
        )
        os.makedirs(self.args.output_dir, exist_ok=True)
        card.save(os.path.join(self.args.output_dir, "README.md"))
