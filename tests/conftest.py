"""Test hygiene: offline Hub, one CPU thread, session-scoped tiny models.

The environment variables must be set before any Hugging Face library is imported, so they come first.
"""

import os

from hf_immunize.utils import set_offline_env  # imports nothing heavy: safe before any HF library

set_offline_env()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HF_IMMUNIZE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of small real data sets beside the repo; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (set HF_IMMUNIZE_SHARED_DATA to its location)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from hf_immunize.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm_path(tmp_path_factory):
    """Directory of a saved tiny Llama (eager attention); load a fresh copy per test with `from_pretrained`."""
    from hf_immunize.testing import tiny_causal_lm

    model = tiny_causal_lm(save_dir=tmp_path_factory.mktemp("tiny_llama"))
    return Path(model.name_or_path)


@pytest.fixture
def tiny_lm(tiny_lm_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_lm_path)


@pytest.fixture(scope="session")
def tiny_classifier_path(tmp_path_factory):
    from hf_immunize.testing import tiny_encoder_classifier

    model = tiny_encoder_classifier(num_labels=4, save_dir=tmp_path_factory.mktemp("tiny_bert"))
    return Path(model.name_or_path)
