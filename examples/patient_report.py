"""One patient's report from a `clinfuse demo` output folder (the README's figures).

    clinfuse demo --out demo_out
    python examples/patient_report.py --demo demo_out --sample S0069 --out examples/figures

Prints, for one held-out patient: what each modality does to the prediction (exact Shapley contributions,
in log-odds, beside the attention share of each modality), whether each attention kind says anything
(effective number of tokens against an untrained copy of the model), the top clinical variables, gene sets
and events by attention, the top inputs and patches by integrated-gradient attribution and how far the two
agree, and PersAM's phi. Writes the PersAM trio, the planted-evidence map, the top-token bars and the
cohort's modality contributions as PNG.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pandas as pd
import torch
from clinfuse.datasets.safe_names import file_stem
from clinfuse.fusion import AttentionReport, FusionModel
from clinfuse.fusion.commands import DEMO_SIZES, demo_cohort
from clinfuse.fusion.explain import attention_attribution_agreement
from clinfuse.fusion.explain.contribution_plot import plot_modality_contributions
from clinfuse.fusion.explain.planted_maps import write_planted_figures


def line(values: pd.Series, digits: int = 3) -> str:
    return "   ".join(f"{k} {v:.{digits}f}" for k, v in values.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="demo_out", help="a `clinfuse demo` output folder")
    parser.add_argument("--sample", default=None, help="a held-out sample id (default: the first drawn)")
    parser.add_argument("--out", default="patient_report", help="folder for the PNG files")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    demo = Path(args.demo)
    report = AttentionReport(path=demo / "attention.parquet")
    contributions = AttentionReport(path=demo / "modality_contributions.parquet")
    spread = pd.read_parquet(demo / "attention_spread.parquet")
    sample = str(args.sample or report.sample_ids[0])
    if sample not in report.sample_ids:
        raise SystemExit(f"sample {sample!r} is not a held-out sample of {demo}/attention.parquet")
    print(f"sample {sample}")

    print("\nwhat each modality does to the log-odds (exact Shapley; base = every modality masked):")
    phi = contributions.modality_contributions().loc[sample]
    for cls in phi.index.get_level_values("target_class").unique():
        print(f"  class {cls}:  {line(phi[cls])}")
    print(f"attention share of each modality:  {line(report.modality_weights().loc[sample])}")

    rows = spread[(spread["sample_id"] == sample) & spread["uniform"].notna()]
    print("\nattention spread (N_eff of N tokens; uniform = indistinguishable from an untrained model):")
    for _, r in rows.iterrows():
        cls = "" if pd.isna(r["target_class"]) else f"[{r['target_class']}]"
        flag = "  ≈ uniform" if r["uniform"] else ""
        print(f"  {r['kind']}{cls} ({r['modality']}): N_eff {r['effective_tokens']:.1f} of "
              f"{int(r['n_tokens'])}{flag}")

    frame = report.to_frame()
    for kind in ("feature", "gene", "event"):
        if kind in report.kinds and not frame[(frame["sample_id"] == sample) & (frame["kind"] == kind)].empty:
            top = report.top_tokens(sample, k=5, kind=kind)
            top = top.groupby("token", sort=False)["value"].mean().head(5)
            print(f"top {kind}s by attention (mean over classes):  {line(top)}")

    # integrated gradients of the held-out patient's inputs and patches, in class-1 probability
    model = FusionModel.load(demo / "model")
    # the demo folder's cohort, rebuilt: the DEMO_SIZES entry with as many patients as it trained and tested
    metrics = json.loads((demo / "metrics.json").read_text())
    size = next(v for v in DEMO_SIZES.values() if v["n_patients"] == metrics["n_train"] + metrics["n_test"])
    _, _, test, truth = demo_cohort(size)
    one = test.subset([sample])
    print("\ntop attributions (integrated gradients of p(class 1)) and their agreement with attention:")
    for modality in ("clinical", "images"):
        attribution = model.attributions(one, modality=modality, background=test)
        part = attribution.to_frame()
        if part.empty:
            continue
        part = part[part["target_class"] == "1"]
        # a confident patient's probability barely moves (saturation): print each value's share of the
        # total |attribution|, and the move of the probability they add up to
        share = part.set_index(part["token"] if modality == "clinical"
                               else "patch " + part["position"].astype(int).astype(str))["value"]
        share = (share / share.abs().sum()).reindex(share.abs().sort_values(ascending=False).index).head(5)
        gap = attribution.outputs[sample][1] - attribution.base_values[sample][1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the attention report holds every held-out sample, not just one
            rho = attention_attribution_agreement(report, attribution)["spearman"].iloc[0]
        print(f"  {modality} (shares of |attribution|; sum {gap:+.2g} in p(class 1)):  {line(share, 2)}"
              f"   (Spearman with attention {rho:.2f})")
        if modality == "images":
            planted = [int(i) for i in truth.relevant_patches[sample].nonzero()[0]]
            print(f"  planted evidence patches: {planted}")

    if "phi" in report.kinds:
        phi_rows = frame[(frame["sample_id"] == sample) & (frame["kind"] == "phi")]
        print(f"\nphi (class relevance to the clinical record):  "
              f"{line(phi_rows.set_index('target_class')['value'])}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = file_stem(sample)  # a sample id is data: never a path
    figures = [f"persam_{stem}.png", f"top_tokens_{stem}.png", "modality_contributions.png"]
    report.plot_persam(sample, path=out / figures[0], spread=spread)
    report.plot_top_tokens(sample, path=out / figures[1], spread=spread)
    plot_modality_contributions(contributions, attention=report, path=out / figures[2])
    figures += list(write_planted_figures(report, truth, [sample], out, ext="png"))
    print(f"\nwrote {out}/: {', '.join(figures)}")


if __name__ == "__main__":
    main()
