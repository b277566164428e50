"""`hf-immunize push DIR --repo_id ID`: upload a saved model folder to the Hugging Face Hub.

    hf-immunize evaluate --model outputs/booster-tiny --method booster --write_card
    hf-immunize push outputs/booster-tiny --repo_id you/booster-tiny

Uploaded: the safetensors weights (or adapter), config, tokenizer, `README.md` (the hf_immunize card), the report's
JSON and plot, and `hf_immunize.json`. Never uploaded: pickles (`*.bin`, `*.pt`, `*.pth`, `*.pkl`, e.g.
`training_args.bin`), `checkpoint-*` and `_*`. Before anything is sent, the folder is checked: weights present, an
hf_immunize card (not a template another library wrote over it), no token and no local path in the card.
The token comes from `--token`, else `HF_TOKEN` or the stored login.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "make_parser"]


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hf-immunize push",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="folder of the saved model (as `trainer.save_model()` and `evaluate` leave it)")
    p.add_argument("--repo_id", required=True, help="Hub repository, `namespace/name`")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to push to (default: main)")
    p.add_argument("--commit_message", default="Upload defended model (hf_immunize)", help="commit message")
    p.add_argument("--require_report", action="store_true", help="refuse a card without an immunization report")
    p.add_argument(
        "--base_model",
        help="Hub id of the base model, published in an adapter's adapter_config.json when it names a local folder "
        "(default: the id recorded at save time)",
    )
    return p


def main(argv: list[str] | None = None):
    from hf_immunize.core.card_text import PLOT_NAME, REPORT_NAME
    from hf_immunize.core.hub import check_model_dir, check_publishable, push_folder

    args = make_parser().parse_args(argv)
    try:
        folder = check_model_dir(args.model, "model")
        files = check_publishable(folder, args.token, args.base_model)
        if args.require_report and not (folder / REPORT_NAME).is_file():
            raise ValueError(
                f"--require_report: {args.model!r} has no {REPORT_NAME}; measure it first with `hf-immunize evaluate "
                f"--model {args.model} --method <method> --write_card`."
            )
    except (ValueError, OSError) as err:
        print(f"hf-immunize push: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if not (folder / REPORT_NAME).is_file():
        print(f"hf-immunize push: note: {args.model} has no immunization report; its card shows no measured numbers.")
    try:
        commit = push_folder(
            folder,
            args.repo_id,
            token=args.token,
            private=args.private or None,
            revision=args.revision,
            commit_message=args.commit_message,
            base_model=args.base_model,
        )
    except ConnectionError as err:
        print(f"hf-immunize push: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    names = files
    print(f"pushed {len(names)} files to {args.repo_id}: {', '.join(names)}")
    if PLOT_NAME in names:
        print(f"the card links {PLOT_NAME}, uploaded beside it")
    print(f"commit: {getattr(commit, 'commit_url', commit)}")
    return commit


if __name__ == "__main__":
    main()
