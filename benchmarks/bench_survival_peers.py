"""Survival peers side by side (issue 13): ours against five classical / deep survival models, same folds,
same run, six cohorts.

Cohorts and folds (``survival_cohorts.py``): GSE7390 (4 clinical variables + 76 genes; peers get clinical +
10 gene PCs), and clinical only: GBSG2, WHAS500, veteran, actg320 (AIDS or death), flchain (without its
post-death ``chapter`` column). Folds: ``make_splits(cohort, 5, seed=0, repeats=3)`` (15 test folds) for
every model; flchain (7,874 subjects, test folds of 1,575 with ~430 deaths) uses its first repeat only (the
first 5 of those 15 folds, ``--repeats-flchain 1``) because its fits cost as much as the other five cohorts
together, for every model alike.

Models (settings fixed in advance, from the libraries' defaults or tutorials; nothing tuned on these
folds; early stopping and CoxNet's alpha use the training fold only; see ``survival_peers.SETTINGS``):
``ours`` = ``FusionModel(task="survival", verbose=False)``, nothing else (the library default;
``--ours-kwargs`` adds arguments), lifelines ``cox_ph`` (penalizer 0.1, the issue's reference),
scikit-survival ``coxnet`` (elastic net, l1_ratio 0.5, alpha by inner 5-fold CV) and ``rsf`` (random
survival forest), pycox ``deepsurv`` and ``deephit``.

Per cohort the table gives the mean Harrell c-index over the folds, its sd, the paired per-fold difference
peer minus ours with a 95% t-interval (folds of repeated k-fold share training samples, so these intervals
are optimistic), the folds where the peer beats ours, and the fit time as a ratio to ours on the same fold
(median over folds; every model fitted in this process, one after the other). The summary ranks the models
by mean c-index in each cohort and lists the cohorts where a peer is ahead of ours by more than its
interval (lower end > 0).

    python benchmarks/bench_survival_peers.py                 # -> benchmarks/out/survival_peers.json
    python benchmarks/bench_survival_peers.py --quick         # smoke: 2 folds, 2 epochs, 10 trees
    python benchmarks/bench_survival_peers.py --cohorts gbsg2 veteran --models ours cox_ph
    python benchmarks/bench_survival_peers.py --ours-kwargs '{"max_epochs": 50}' --out benchmarks/out/x.json
    python benchmarks/bench_survival_peers.py --markdown benchmarks/out/survival_peers_before.json
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from common import OUT_DIR, base_parser, fmt, markdown_table, provenance, setup, summarise, write_json
from survival_cohorts import COHORTS, DATA, load_cohort
from survival_cohorts import folds as cohort_folds
from survival_peers import FIT_SCORE, MODELS, SETTINGS, ours, run_fold

REFERENCE = "ours"
LARGE = "flchain"


def cohort_summary(folds: dict[str, list[dict]]) -> dict[str, dict]:
    """``summarise`` (spread, paired difference vs ours) plus the median per-fold fit-time ratio to ours."""
    out = summarise(folds, metric="c_index", reference=REFERENCE)
    ref = {r["split"]: r.get("fit_seconds", math.nan) for r in folds.get(REFERENCE, [])}
    for name, rows in folds.items():
        ratios = [r["fit_seconds"] / ref[r["split"]] for r in rows if r["split"] in ref
                  and ref[r["split"]] > 0 and np.isfinite(r.get("fit_seconds", math.nan))]
        out[name]["fit_ratio_vs_ours"] = float(np.median(ratios)) if ratios else math.nan
        out[name]["fit_seconds_median"] = float(np.nanmedian([r.get("fit_seconds", math.nan) for r in rows]))
        out[name]["errors"] = [f"split {r['split']}: {r['error']}" for r in rows if "error" in r]
    return out


def overall(cohorts: dict[str, dict]) -> dict:
    """Mean rank of each model over the cohorts (rank 1 = highest mean c-index in a cohort; ties share the
    mean rank) and the cohorts where a peer's interval vs ours lies above 0."""
    from scipy.stats import rankdata

    ranks: dict[str, list[float]] = {}
    ahead = []
    for cname, block in cohorts.items():
        s = block["summary"]
        names = [n for n in s if np.isfinite(s[n]["c_index"]["mean"])]
        for n, r in zip(names, rankdata([-s[n]["c_index"]["mean"] for n in names]), strict=True):
            ranks.setdefault(n, []).append(float(r))
        for n in names:
            d = s[n].get("diff_vs_" + REFERENCE)
            if d and np.isfinite(d.get("ci_low", math.nan)) and d["ci_low"] > 0:
                ahead.append({"cohort": cname, "model": n, "diff": d["mean"], "ci_low": d["ci_low"],
                              "ci_high": d["ci_high"]})
    return {"mean_rank": {n: {"mean_rank": float(np.mean(r)), "n_cohorts": len(r)}
                          for n, r in sorted(ranks.items(), key=lambda kv: np.mean(kv[1]))},
            "peer_ahead_beyond_interval": ahead}


def overview(payload: dict) -> str:
    """Markdown: one row per cohort, the mean c-index of every model, and ours minus the penalised Cox."""
    models = list(next(iter(payload["cohorts"].values()))["summary"])
    rows = []
    for cname, block in payload["cohorts"].items():
        s = block["summary"]
        best = max(s[n]["c_index"]["mean"] for n in s)
        cells = [(f"**{fmt(s[n]['c_index']['mean'])}**" if s[n]["c_index"]["mean"] == best
                  else fmt(s[n]["c_index"]["mean"])) if n in s else "" for n in models]
        d = s.get("cox_ph", {}).get("diff_vs_" + REFERENCE)
        vs_cox = ("" if d is None else f"{-d['mean']:+.3f} [{-d['ci_high']:+.3f}, {-d['ci_low']:+.3f}]"
                  f" ({d['n'] - d['wins']}/{d['n']})")
        rows.append([f"{cname} ({block['n_splits']} folds)", *cells, vs_cox])
    ranks = payload.get("overall", {}).get("mean_rank", {})
    rows.append(["mean rank", *[f"{ranks[n]['mean_rank']:.2f}" if n in ranks else "" for n in models], ""])
    return markdown_table(["cohort", *models, "ours - cox_ph [95% t-CI] (folds ours better or tied)"], rows)


def tables(payload: dict) -> str:
    """Markdown: the overview, one table per cohort, the mean ranks and the cohorts where a peer is ahead."""
    parts = [overview(payload), ""]
    for cname, block in payload["cohorts"].items():
        c = block["cohort"]
        parts.append(f"**{cname}** ({c['n']} samples, {c['events']} events, {block['n_splits']} folds: "
                     f"{block['splits']})\n")
        rows = []
        for name, s in block["summary"].items():
            d = s.get("diff_vs_" + REFERENCE)
            diff = ("(reference)" if d is None
                    else f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
            wins = "" if d is None else f"{d['wins']}/{d['n']}"
            nan = s["c_index"]["n_nan"]
            rows.append([name + (f" ({nan} failed)" if nan else ""), fmt(s["c_index"]["mean"]),
                         fmt(s["c_index"]["sd"]), diff, wins, f"{s['fit_ratio_vs_ours']:.2f}",
                         f"{s['fit_seconds_median']:.2f}"])
        parts.append(markdown_table(["model", "mean c-index", "sd", "peer - ours [95% t-CI]",
                                     "folds peer better", "fit time / ours", "fit s (median)"], rows))
        parts.append("")
    o = payload.get("overall", {})
    if o:
        parts.append(markdown_table(["model", "mean rank over cohorts", "cohorts"],
                                    [[n, f"{r['mean_rank']:.2f}", r["n_cohorts"]]
                                     for n, r in o["mean_rank"].items()]))
        ahead = o["peer_ahead_beyond_interval"]
        parts.append("\nPeer ahead of ours by more than its interval: "
                     + (", ".join(f"{a['cohort']}: {a['model']} {a['diff']:+.3f} [{a['ci_low']:+.3f}, "
                                  f"{a['ci_high']:+.3f}]" for a in ahead) if ahead else "none"))
    return "\n".join(parts)


def main() -> None:
    p = base_parser(__doc__, data_default=DATA)
    p.add_argument("--cohorts", nargs="+", default=list(COHORTS), choices=list(COHORTS))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--repeats", type=int, default=3, help="repeats of 5-fold CV (every cohort but flchain)")
    p.add_argument("--repeats-flchain", type=int, default=1, help="repeats of 5-fold CV for flchain")
    p.add_argument("--ours-kwargs", type=json.loads, default=None,
                   help="JSON keyword arguments added to FusionModel(task='survival', verbose=False)")
    p.add_argument("--markdown", type=Path, default=None, help="print the tables of this JSON and exit")
    args = p.parse_args()
    if args.markdown is not None:
        print(tables(json.loads(args.markdown.read_text())))
        return
    setup(args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)  # numpy / scikit-learn BLAS too: the machine is shared
    out = args.out or OUT_DIR / ("survival_peers_quick.json" if args.quick else "survival_peers.json")
    settings = dict(SETTINGS)
    if args.ours_kwargs:
        settings["ours"] += f"; --ours-kwargs {json.dumps(args.ours_kwargs)}"
    payload = {"benchmark": "survival peers, Harrell c-index, same folds, same run", **provenance(args),
               "protocol": {"folds": "make_splits(cohort, 5, seed=0, repeats=R) from survival_cohorts.folds; "
                                     f"R = {args.repeats}, flchain R = {args.repeats_flchain} (its first "
                                     "repeat = the first 5 folds of R = 3)" + ("; --quick: 2 folds" if
                                                                               args.quick else ""),
                            "models": {m: settings[m] for m in args.models},
                            "design": "peers: survival_cohorts.design (train-fold medians, one-hot with the "
                                      "training fold's levels, 10 gene PCs for GSE7390, standardised)",
                            "difference": "peer minus ours per fold, 95% t-interval over folds (optimistic: "
                                          "repeated k-fold folds share training samples)",
                            "fit_time": "fit seconds (peers: including the design) / ours' on the same fold, "
                                        "median over folds",
                            "chosen_on": "nothing is tuned on these folds; settings are library defaults or "
                                         "the peers' tutorial values, fixed in advance"},
               "cohorts": {}}
    fns = {"ours": lambda c, tr, te: ours(c, tr, te, args.quick, args.ours_kwargs),
           **{m: (lambda c, tr, te, f=f: f(c, tr, te, args.quick)) for m, f in FIT_SCORE.items()}}
    order = ([REFERENCE] if REFERENCE in args.models else []) + [m for m in args.models if m != REFERENCE]
    t_start = time.perf_counter()
    for cname in args.cohorts:
        cohort = load_cohort(cname, args.data)
        repeats = args.repeats_flchain if cname == LARGE else args.repeats
        splits = cohort_folds(cname, repeats=repeats, cohort=cohort)
        if args.quick:
            splits = splits[:2]
        block = {"cohort": {"n": len(cohort), "events": int(cohort.survival["event"].sum()),
                            "clinical": list(cohort.clinical.columns),
                            "genes": None if cohort.genomics is None else int(cohort.genomics.n_vars),
                            "excluded": cohort.excluded},
                 "n_splits": len(splits), "splits": f"make_splits(5, seed=0, repeats={repeats})"
                 + ("[:2]" if args.quick else ""), "folds": {}, "summary": {}}
        payload["cohorts"][cname] = block
        for m in order:
            rows = []
            for i, (tr, te) in enumerate(splits):
                row = run_fold(fns[m], cohort, list(tr), list(te), split=i)
                rows.append(row)
                err = f" ERROR {row['error']}" if "error" in row else ""
                print(f"  {cname:<8} {m:<9} split {i:>2}: c={fmt(row['c_index'])} "
                      f"fit {row['fit_seconds']:.1f} s{err}", flush=True)
            block["folds"][m] = rows
            block["summary"] = cohort_summary(block["folds"])
            payload["overall"] = overall(payload["cohorts"])
            payload["wall_seconds"] = round(time.perf_counter() - t_start, 1)
            write_json(out, payload)  # after every model: a stopped run keeps what it finished
    payload["tables_markdown"] = tables(payload)
    write_json(out, payload)
    print(payload["tables_markdown"])
    print(f"wrote {out} ({payload['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
