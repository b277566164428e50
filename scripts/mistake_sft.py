"""Mistake analysis (MistakeSFT); runs as `python scripts/mistake_sft.py --config recipes/mistake_sft_tiny.yaml` or
under `accelerate launch`. Same as `hf-immunize mistake-sft`: see hf_immunize/commands/mistake_sft.py."""

import sys

from hf_immunize.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("mistake-sft"))  # a user error: one line, exit code 2
