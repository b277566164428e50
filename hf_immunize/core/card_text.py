"""What a model card may show: the names of the card's files and method sections, Hub ids for model names, and the
redaction of local paths and tokens. Pure helpers: no template rendering, no report (those are :mod:`.card`), so the
evaluation room can use them too."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

__all__ = [
    "PLOT_NAME",
    "REPORT_NAME",
    "canonical_method",
    "hub_model_id",
    "is_local_path",
    "redact",
    "section_template",
    "template_path",
]

PLOT_NAME = "immunization_report.png"
REPORT_NAME = "immunization_report.json"

# Method keys (a trainer's tag or name, lower case) -> section template.
_SECTIONS = {
    "booster": "booster.md",
    "mlac": "mlac.md",
    "self-destructing-models": "mlac.md",
    "unlearn": "unlearn.md",
    "unlearning": "unlearn.md",
    "whp": "unlearn.md",
    "who-is-harry-potter": "unlearn.md",
    "mistake-analysis": "mistake_sft.md",
    "mistake-sft": "mistake_sft.md",
    "mistake_sft": "mistake_sft.md",
    "mistakesft": "mistake_sft.md",
}
_TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HF_API_TOKEN")
_REDACTED_PATH = "(local path)"
_REDACTED_SECRET = "(redacted)"
# An absolute POSIX path of two or more parts, `~/...`, or a Windows drive path; not the path part of a URL (the
# look-behind rejects `host/...` and `://`) nor a fraction such as `g/‖g‖`.
_PATH_RE = re.compile(
    r"(?<![\w.:/~\-])(?:~/|/)(?:[^\s/`'\"()\[\]{}<>|,;]+/)+[^\s/`'\"()\[\]{}<>|,;]*"
    r"|(?<![\w])[A-Za-z]:\\[^\s`'\"()\[\]{}<>|,;]*"
)


def template_path(name: str = "base.md") -> Path:
    """Path of a card template inside the installed package (works from a wheel as well as from the repo).

    >>> template_path().name
    'base.md'
    """
    path = Path(str(resources.files("hf_immunize.model_cards").joinpath(name)))
    if not path.is_file():
        available = sorted(p.name for p in path.parent.iterdir() if p.suffix == ".md")
        raise ValueError(f"model card template {name!r} not found; available templates: {available}.")
    return path


def section_template(method: str | None) -> str | None:
    """File name of the section template of `method` (a tag such as `"booster"` or a trainer name), or None."""
    if not method:
        return None
    return _SECTIONS.get(method.strip().lower().replace(" ", "-"))


_CANONICAL = {"booster.md": "booster", "mlac.md": "mlac", "unlearn.md": "unlearn", "mistake_sft.md": "mistake-sft"}


def canonical_method(method: str | None) -> str | None:
    """The method's name as `hf-immunize evaluate --method` takes it (`booster`, `mlac`, `unlearn`, `mistake-sft`)
    for any of its tags or names, or None.

    >>> canonical_method("mistake-analysis"), canonical_method("whp"), canonical_method("sft")
    ('mistake-sft', 'unlearn', None)
    """
    return _CANONICAL.get(section_template(method) or "")


def _known_secrets(extra=()) -> list[str]:
    secrets = [os.environ.get(name) for name in _TOKEN_ENV_VARS]
    try:
        from huggingface_hub import get_token

        secrets.append(get_token())
    except Exception:  # no token file, or an unreadable one: nothing to hide
        pass
    secrets.extend(extra)
    # Very short strings would redact ordinary words; real tokens are long.
    return sorted({s for s in secrets if isinstance(s, str) and len(s) >= 8}, key=len, reverse=True)


def redact(text: str, secrets=(), paths=()) -> str:
    """`text` without tokens (the `HF_TOKEN`-style variables, the stored Hub token, `secrets`) and without local
    paths (`paths`, the home and working directories, and anything shaped like an absolute path).

    >>> redact("saved to /home/me/run/model and https://arxiv.org/abs/2409.01586")
    'saved to (local path) and https://arxiv.org/abs/2409.01586'
    """
    for secret in _known_secrets(secrets):
        text = text.replace(secret, _REDACTED_SECRET)
    known = {str(p) for p in paths if p} | {str(Path.home()), os.getcwd()}
    for path in sorted((p for p in known if len(p) > 1), key=len, reverse=True):
        text = re.sub(re.escape(path) + r"[^\s`'\"()\[\]{}<>|,;]*", _REDACTED_PATH, text)
    return _PATH_RE.sub(_REDACTED_PATH, text)


def is_local_path(name: str) -> bool:
    """Whether `name` (a model or dataset name) points at the local file system rather than the Hub."""
    return os.path.isabs(name) or name.startswith(("~", ".")) or os.path.exists(name) or "\\" in name


# A Hub repo id: `name` or `namespace/name`, each part of letters, digits, `-`, `_`, `.` (not starting with `.`/`-`).
_HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][\w.\-]{0,95}/)?[A-Za-z0-9][\w.\-]{0,95}$")
# A snapshot in the Hub cache: `.../models--<namespace>--<name>/snapshots/<revision>`.
_CACHE_RE = re.compile(r"models--(?P<id>[^/\\]+?)(?:/|\\)snapshots(?:/|\\)")


def hub_model_id(name: str | None) -> str | None:
    """The Hub id of a model name or path when one is known, else None (a card never shows a local path).

    A Hub id is kept; a path into the Hub cache (`.../models--org--name/snapshots/...`) gives back `org/name`; any
    other local path gives None.

    >>> hub_model_id("meta-llama/Llama-2-7b-hf"), hub_model_id("/tmp/run/model")
    ('meta-llama/Llama-2-7b-hf', None)
    >>> hub_model_id("/root/.cache/huggingface/hub/models--org--tiny/snapshots/abc123")
    'org/tiny'
    """
    if not name:
        return None
    name = str(name)
    cached = _CACHE_RE.search(name)
    if cached:
        return cached.group("id").replace("--", "/", 1)
    if is_local_path(name) or not _HUB_ID_RE.match(name):
        return None
    return name
