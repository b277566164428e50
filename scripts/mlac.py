"""MLAC (self-destructing models); runs as `python scripts/mlac.py --config recipes/mlac_tiny.yaml` or under
`accelerate launch`. Same as `hf-immunize mlac`: see hf_immunize/commands/mlac.py."""

from hf_immunize.commands.mlac import main

if __name__ == "__main__":
    main()
