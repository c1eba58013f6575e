"""``mogen value sample`` and ``mogen value train``: value-model data and training from YAML configs
(:mod:`mogen.value.config`); both run under ``torchrun`` and ``accelerate launch``."""

from __future__ import annotations

import argparse
import os

# The command's subsystem (transformers and decoding, the merge engine, the sweep's plotting) is imported
# inside its command so that `mogen --help` and the other commands do not pay for it.


def _main_process() -> bool:
    """Rank 0 of a launcher (or no launcher): the one that prints."""
    return int(os.environ.get("RANK", 0)) == 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from ..value.config import run_sample
    from ..value.dataset import read_dataset

    folder = run_sample(args.config, progress=not args.quiet)
    if _main_process():
        try:
            data = read_dataset(folder)
            print(f"mogen value sample: {len(data.rows)} responses scored by {data.meta['objectives']} in {folder}")
        except ValueError:  # other ranks are still writing their shards
            print(f"mogen value sample: this rank's shards are in {folder}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ..value.config import run_train

    res = run_train(args.config, progress=not args.quiet)
    if _main_process():
        rho = "n/a" if res.heldout_spearman is None else f"{res.heldout_spearman:.3f}"
        loss = f"{res.losses[-1]:.4f}" if res.losses else "n/a"
        print(f"mogen value train: {res.train_examples} training rows, final epoch loss {loss}, held-out Spearman "
              f"{rho} ({res.heldout_examples} rows), {res.untrained_rows} of {res.head_rows} head rows never a "
              f"target; value model in {res.path}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Registers ``value`` with its ``sample`` and ``train`` subcommands."""
    p = sub.add_parser("value", help="sample value-training data (MAGE eq. 15) and train value models (eq. 16)",
                       description="Value models in two steps that may run on different machines: `sample` writes "
                                   "a resumable dataset of scored responses, `train` fits a value model on it with "
                                   "transformers' Trainer (torchrun / accelerate launch for several processes).")
    steps = p.add_subparsers(dest="step", required=True)
    s = steps.add_parser("sample", help="sample responses from pi_ref and score them (resumable)",
                         description="Writes (or finishes) the dataset folder of a sample config: meta.json and "
                                     "shards/NNNNN.jsonl|parquet with prompt, response, rewards and ended per row. "
                                     "Under torchrun each rank writes its share of the shards.")
    t = steps.add_parser("train", help="train a value model on a sampled dataset (transformers' Trainer)",
                         description="Trains on a dataset of `mogen value sample` with the config's training_args "
                                     "(any TrainingArguments field) and writes the value model to its output.")
    for q, func in ((s, _cmd_sample), (t, _cmd_train)):
        q.add_argument("--config", required=True, help="the YAML config (see mogen.value.config)")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        q.add_argument("--debug", action="store_true", help="on an error, show the Python traceback too")
        q.set_defaults(func=func)
