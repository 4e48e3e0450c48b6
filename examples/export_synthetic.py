"""Write the synthetic cohort as plain files (clinical.csv, expression.h5ad, features/, events.csv) so that
``clinfuse train --config examples/run.yaml`` has data to read.

    python examples/export_synthetic.py examples/data [--tiny]
"""

from __future__ import annotations

import argparse
import os

from clinfuse.datasets import make_synthetic_cohort
from clinfuse.fusion.config import write_cohort_files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="where to write the files (examples/run.yaml expects examples/data)")
    parser.add_argument("--tiny", action="store_true", default=bool(os.environ.get("CLINFUSE_TINY")))
    args = parser.parse_args(argv)
    cohort, _ = make_synthetic_cohort(30 if args.tiny else 200,
                                      n_patches=(6, 12) if args.tiny else (20, 60), seed=0)
    spec = write_cohort_files(cohort, args.folder)
    print(f"wrote {len(cohort)} samples to {args.folder}: " + ", ".join(
        str(v) for k, v in spec.items() if k in ("clinical", "genomics", "images", "events")))


if __name__ == "__main__":
    main()
