"""MLAC (self-destructing models); runs as `python scripts/mlac.py --config recipes/mlac_tiny.yaml` or under
`accelerate launch`. Same as `hf-immunize mlac`: see hf_immunize/commands/mlac.py."""

import sys

from hf_immunize.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("mlac"))  # a user error: one line, exit code 2
