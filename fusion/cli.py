"""The ``clinfuse`` command line: demo, train, tune, predict, explain."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("clinfuse")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


def _table_and_figure_options(parser: argparse.ArgumentParser, *, figures: bool = True) -> None:
    parser.add_argument("--csv", action="store_true",
                        help="also write the tables as CSV (default: Parquet only; attention CSV is large)")
    if figures:
        parser.add_argument("--figure-format", choices=("png", "pdf", "svg"), default="png",
                            help="file format of the figures (default: png)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clinfuse",
        description="Multimodal clinical prediction with per-patient attention export.",
    )
    parser.add_argument("--version", action="version", version=f"clinfuse {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="train PersAM on the embedded synthetic cohort and write its outputs")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--tiny", action="store_true", help="a very small, fast run (seconds; for tests)")
    _table_and_figure_options(demo)
    train = sub.add_parser("train", help="train a model from a YAML run config")
    train.add_argument("--config", required=True, help="run.yaml: data, task and model keywords")
    train.add_argument("--out", required=True, help="folder to save the model into")
    train.add_argument("--checkpoint-dir", default=None,
                       help="checkpoint folder (default: run.yaml's model.checkpoint_dir, else "
                            "<out>.checkpoints next to --out)")
    train.add_argument("--resume", action="store_true",
                       help="continue the interrupted run whose checkpoints are in the checkpoint folder")
    train.add_argument("--fold", type=int, default=None,
                       help="fold of run.yaml's split: (overrides split.fold; {fold} in split.file)")
    tune = sub.add_parser("tune", help="tune a model's hyperparameters by inner cross-validation (Optuna)")
    tune.add_argument("--config", required=True, help="run.yaml: data, task, model keywords, tune section")
    tune.add_argument("--out", required=True,
                      help="output folder: best_params.json, trials.csv, model/ (refitted on all samples)")
    tune.add_argument("--n-trials", type=int, default=None, help="trials (default: run.yaml's, else 20)")
    tune.add_argument("--folds", type=int, default=None, help="inner folds (default: run.yaml's, else 3)")
    tune.add_argument("--seed", type=int, default=None, help="seed (default: run.yaml's, else 0)")
    for name, what in (("predict", "predictions"), ("explain", "attention tables and figures")):
        p = sub.add_parser(name, help=f"write {what} for new data with a saved model")
        p.add_argument("--model", required=True, help="folder of a saved model")
        p.add_argument("--data", required=True, help="data.yaml naming the data to score")
        p.add_argument("--out", required=True, help="output folder")
        _table_and_figure_options(p, figures=name == "explain")
        if name == "explain":
            p.add_argument("--no-contributions", action="store_true",
                           help="skip the exact modality contributions (2^M masked passes per sample)")
            p.add_argument("--no-null", action="store_true",
                           help="judge the attention spread by the 0.95 rule, without the untrained copies")
        if name == "predict":
            p.add_argument("--times", type=float, nargs="+", default=None, metavar="T",
                           help="survival models, data with targets: report the time-dependent AUC, Brier "
                                "score and calibration at these times (default: the quartiles of the event "
                                "times inside the evaluable follow-up)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns its exit status: 0, 2 for bad input, 130 / 143 when SIGINT / SIGTERM stopped
    it (with one line on stderr saying what was kept)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from . import commands  # heavy imports (torch, lightning) only when a command runs
    from .interrupts import Interrupted, raise_on_signals

    try:
        with raise_on_signals():
            return int(getattr(commands, f"run_{args.command}")(args) or 0)
    except Interrupted as exc:
        print(f"clinfuse {args.command}: {commands.interruption_message(args, exc)}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, TypeError, FileNotFoundError) as exc:
        # Bad input (config, data, paths): a one-line message naming what to fix, not a traceback.
        # CLINFUSE_DEBUG=1 shows the traceback.
        if os.environ.get("CLINFUSE_DEBUG"):
            raise
        print(f"clinfuse {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
