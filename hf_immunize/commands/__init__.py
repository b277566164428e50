"""Training commands: each module has `make_parser()` and `main(argv)`, run by `hf-immunize <command>` and by the
matching file under `scripts/` (for `accelerate launch`). Shared argument parsing and loading live in `common`."""
