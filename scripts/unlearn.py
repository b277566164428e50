"""Unlearning (WHP pipeline or a baseline loss); runs as `python scripts/unlearn.py --config recipes/unlearn_tiny.yaml`
or under `accelerate launch`. Same as `hf-immunize unlearn`: see hf_immunize/commands/unlearn.py."""

from hf_immunize.commands.unlearn import main

if __name__ == "__main__":
    main()
