"""Merge a run's trained LoRA into its policy and save the result as a model folder.

The folder is a model reference like any other (`policy.model=/path/to/folder`), so a later run can
start from a policy that already knows what an earlier run taught it. docs/signal.md uses it for a
warm start: the oracle measurements begin from a policy that already answers count_bits with a digit,
so that what is left for GRPO to learn is what only C can tell.

    python launch/merge_lora.py RUN --out FOLDER [--checkpoint final|checkpoint-N]

RUN is a run directory; the checkpoint defaults to final/, else the last checkpoint-N/. Only the
policy is merged: the run's g_phi (context_adapter.safetensors) reads its own team and is not carried.
FOLDER gets the merged weights, the model config and the tokenizer, written to a temporary folder
beside it and renamed at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experts.models import load_model  # noqa: E402
from musketeers.rundir import (checkpoint_problem, final_or_last_checkpoint, is_checkpoint, is_run_dir,  # noqa: E402
                               read_config)


def merge(run_dir: Path, checkpoint: Path, out: Path) -> str:
    """Load the run's base policy, merge the checkpoint's LoRA into it and save model and tokenizer to out;
    returns the base policy's reference."""
    from peft import PeftModel

    cfg = read_config(run_dir)
    model, tokenizer = load_model(cfg.policy.model, dtype=cfg.policy.dtype, device="cpu",
                                  trust_remote_code=cfg.policy.trust_remote_code)
    merged = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return cfg.policy.model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory (musketeers train or sweep)")
    parser.add_argument("--out", type=Path, required=True, help="the model folder to write (must not exist)")
    parser.add_argument("--checkpoint", default=None, help="final or checkpoint-N (default: final/, else the last checkpoint-N/)")
    args = parser.parse_args(argv)
    if not is_run_dir(args.run):
        parser.error(f"{args.run}: not a run directory (no config.yaml); give the folder `musketeers train` made")
    if args.out.exists():
        parser.error(f"--out {args.out}: already exists; give a new folder")
    checkpoint = args.run / args.checkpoint if args.checkpoint else final_or_last_checkpoint(args.run)
    if checkpoint is None:
        parser.error(f"{args.run}: no final/ and no complete checkpoint-N/ to merge")
    if not checkpoint.is_dir():
        parser.error(f"{checkpoint}: no such folder; valid: final or checkpoint-N of {args.run}")
    if not is_checkpoint(checkpoint):
        problem = checkpoint_problem(checkpoint) or "it holds no LoRA adapter"
        parser.error(f"{checkpoint}: {problem}; valid: final or checkpoint-N of {args.run}")
    base = merge(args.run, checkpoint, args.out)
    print(f"merged {checkpoint} into {base}: wrote {args.out} (use it as policy.model={args.out})")


if __name__ == "__main__":
    main()
