"""One patient's attention report from a `clinfuse demo` output folder (the README's figures).

    clinfuse demo --out demo_out
    python examples/patient_report.py --demo demo_out --sample S0069 --out examples/figures

Prints the patient's modality weights, top clinical variables, genes and events, and PersAM's phi, and
writes the PersAM trio, the top-token bars and the cohort's modality weights as PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from clinfuse.datasets.safe_names import file_stem
from clinfuse.fusion import AttentionReport


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="demo_out", help="a `clinfuse demo` output folder")
    parser.add_argument("--sample", default=None, help="sample id (default: the first with every kind)")
    parser.add_argument("--out", default="patient_report", help="folder for the PNG files")
    args = parser.parse_args(argv)

    report = AttentionReport(path=Path(args.demo) / "attention.parquet")
    frame = report.to_frame()
    if args.sample is None:
        kinds = frame.groupby("sample_id")["kind"].nunique()
        args.sample = kinds[kinds == kinds.max()].index[0]
    sample = str(args.sample)
    rows = frame[frame["sample_id"] == sample]
    if rows.empty:
        raise SystemExit(f"sample {sample!r} is not in {args.demo}/attention.parquet")
    pd.set_option("display.width", 120)
    weights = report.modality_weights().loc[sample].round(3)
    print(f"sample {sample}\n\nmodality weights:\n{weights.to_string()}")
    for kind in ("feature", "gene", "event"):
        if kind in report.kinds and not rows[rows["kind"] == kind].empty:
            top = report.top_tokens(sample, k=5, kind=kind)[["token", "target_class", "value"]]
            print(f"\ntop {kind}s:\n{top.round(3).to_string(index=False)}")
    if "phi" in report.kinds:
        phi = rows[rows["kind"] == "phi"][["target_class", "value", "raw_value"]]
        print(f"\nphi (class relevance to the clinical record):\n{phi.round(3).to_string(index=False)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = file_stem(sample)  # a sample id is data: never a path
    report.plot_persam(sample, path=out / f"persam_{stem}.png")
    report.plot_top_tokens(sample, path=out / f"top_tokens_{stem}.png")
    report.plot_modality_weights(path=out / "modality_weights.png")
    print(f"\nwrote {out}/: persam_{sample}.png, top_tokens_{sample}.png, modality_weights.png")


if __name__ == "__main__":
    main()
