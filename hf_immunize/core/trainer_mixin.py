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

import torch
from transformers.utils import logging

from hf_immunize.core.card_hooks import CardMixin, _training_prompt_format

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


class ImmunizeTrainerMixin(CardMixin):
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


def _offloads_parameters(fsdp_plugin) -> bool:
    """Whether an accelerate FSDP plugin offloads the parameters to the CPU (FSDP2's `CPUOffloadPolicy`)."""
    try:
        from torch.distributed.fsdp import CPUOffloadPolicy
    except ImportError:
        return False
    return isinstance(getattr(fsdp_plugin, "cpu_offload", None), CPUOffloadPolicy)
