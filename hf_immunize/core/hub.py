"""Publishing to the Hugging Face Hub: what is uploaded, and clear errors when the Hub cannot be reached.

Used by every trainer's `push_to_hub` and by `hf-immunize push`. Weights go as safetensors; pickles never leave the
machine (`training_args.bin` would hold `hub_token` when one was given), nor do checkpoints or `_*` files.
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

__all__ = [
    "PUSH_IGNORE",
    "check_model_dir",
    "check_publishable",
    "hub_errors",
    "publishable_files",
    "push_folder",
]

# Never uploaded: the Trainer's own exclusions, pickles (weights go as safetensors), and the command line's output-dir
# guard (`hf_immunize_run.json`: this machine's run settings, meaningless on the Hub).
PUSH_IGNORE = ("_*", "checkpoint-*", "*.bin", "*.pt", "*.pth", "*.pkl", "hf_immunize_run.json")


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin")


def check_model_dir(path, name: str = "model") -> Path:
    """Raises a clear `ValueError` unless `path` is a folder holding a saved model (full weights or a PEFT adapter)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"`{name}`: {str(path)!r} is not a folder (a saved model's directory is expected).")
    has_config = (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()
    has_weights = any((folder / f).is_file() for f in _WEIGHT_FILES)
    if not (has_config and has_weights):
        found = sorted(p.name for p in folder.iterdir())[:12]
        raise ValueError(
            f"`{name}`: {str(path)!r} holds no saved model (expected config.json or adapter_config.json with "
            f"safetensors weights, as `save_model()` writes them); found {found}."
        )
    return folder


def _uploaded_files(folder: Path) -> list[Path]:
    import fnmatch

    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(
            fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(part, pat) for pat in PUSH_IGNORE for part in rel.split("/")
        ):
            out.append(path)
    return out


def _adapter_base(folder: Path, base_model: str | None) -> str | None:
    """The Hub id to publish as the adapter's `base_model_name_or_path`: `base_model`, else the one recorded at save
    time, else the one its local path reveals (a Hub cache snapshot); None when unknown."""
    from hf_immunize.core.card_text import hub_model_id
    from hf_immunize.evaluation.formatting import read_run_record

    if base_model:
        return base_model
    recorded = ((read_run_record(folder) or {}).get("card") or {}).get("base_model")
    if recorded:
        return recorded
    config = json.loads((folder / "adapter_config.json").read_text())
    return hub_model_id(config.get("base_model_name_or_path"))


def publishable_files(
    folder, token: str | None = None, base_model: str | None = None, require_card: bool = True
) -> dict[str, bytes | Path]:
    """What a push uploads, `{path in the repo: file or content}`, after checking that the folder holds safetensors
    weights and an hf_immunize card, and that no uploaded text holds the token or a local path. A PEFT adapter whose
    `adapter_config.json` names a local base model is published with the base model's Hub id instead (`base_model`,
    else the one recorded at save time or read from a Hub cache path); the local folder is left as it is. Raises
    `ValueError` naming the file otherwise, before anything is sent."""
    from hf_immunize.core.card_text import redact

    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): p for p in _uploaded_files(folder)}
    if not set(files) & {"model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors"}:
        raise ValueError(
            f"{str(folder)!r} holds no safetensors weights (model.safetensors or adapter_model.safetensors); save the "
            "model with `trainer.save_model()` first."
        )
    if require_card:
        if "README.md" not in files:
            raise ValueError(f"{str(folder)!r} has no model card (README.md); `trainer.save_model()` writes one.")
        card = files["README.md"].read_text(encoding="utf-8", errors="replace")
        metadata = card.split("---")[1] if card.startswith("---") else ""
        if "hf-immunize" not in metadata:
            raise ValueError(
                f"{str(folder)!r}/README.md is not an hf_immunize card (another library's card, e.g. PEFT's template, "
                "overwrote it); re-render it with `hf-immunize evaluate --model ... --write_card`."
            )
    out: dict[str, bytes | Path] = dict(files)
    for name, path in files.items():
        if path.suffix not in (".md", ".json", ".txt", ".yaml", ".yml", ".jinja"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if token and token in text:
            raise ValueError(f"{name} contains the Hub token; refusing to upload it.")
        if redact(text, paths=[folder.resolve()]) == text:
            continue
        if name == "adapter_config.json":
            hub_id = _adapter_base(folder, base_model)
            config = json.loads(text)
            if hub_id is None:
                raise ValueError(
                    f"adapter_config.json names a local base model ({config.get('base_model_name_or_path')!r}) whose "
                    "Hub id is unknown; pass the base model's Hub id (`--base_model` / `finetuned_from`)."
                )
            config["base_model_name_or_path"] = hub_id
            fixed = json.dumps(config, indent=2, sort_keys=True) + "\n"
            if redact(fixed, paths=[folder.resolve()]) != fixed:
                raise ValueError(
                    f"adapter_config.json of {str(folder)!r} contains a local path; refusing to upload it."
                )
            out[name] = fixed.encode()
            continue
        hint = (
            "re-render it with `hf-immunize evaluate --model ... --write_card`" if name == "README.md" else "remove it"
        )
        raise ValueError(f"{name} of {str(folder)!r} contains a local path or a token; {hint}.")
    return out


def check_publishable(folder, token: str | None = None, base_model: str | None = None) -> list[str]:
    """The names of the files a push of `folder` uploads (see :func:`publishable_files`, which raises on problems)."""
    return sorted(publishable_files(folder, token, base_model))


def push_folder(
    folder,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload defended model (hf_immunize)",
    base_model: str | None = None,
    require_card: bool = True,
    run_as_future: bool = False,
):
    """Creates `repo_id` if needed and uploads `folder` in one commit (see :func:`publishable_files`); returns the
    commit info (a future with `run_as_future`)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    files = publishable_files(folder, token, base_model, require_card=require_card)
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=content if isinstance(content, bytes) else str(content))
        for name, content in sorted(files.items())
    ]
    api = HfApi(token=token)
    with hub_errors(repo_id):
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=commit_message,
            revision=revision,
            run_as_future=run_as_future,
        )


@contextlib.contextmanager
def hub_errors(repo_id: str | None):
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
