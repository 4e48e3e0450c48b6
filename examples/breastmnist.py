"""Image classification on BreastMNIST (28x28 ultrasound, malignant vs normal/benign), official split.

    python examples/breastmnist.py [--data breastmnist.npz] [--encoder vit|cnn] [--tiny]

Each sample is one image: a bag of one image whose sub-patches the pixel encoder turns into tokens.
Trains on the official train split with early stopping on the official validation split, reports the
test AUC.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from clinfuse.datasets import load_breastmnist
from clinfuse.fusion import FusionModel

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "breastmnist" / "breastmnist.npz"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT), help="breastmnist.npz")
    parser.add_argument("--encoder", default="cnn", choices=["cnn", "vit"])
    parser.add_argument("--tiny", action="store_true", default=bool(os.environ.get("CLINFUSE_TINY")))
    args = parser.parse_args(argv)

    train, val, test = (load_breastmnist(args.data, split=s) for s in ("train", "val", "test"))
    if args.tiny:  # a few dozen images, one epoch: a smoke run
        train, val, test = (c.subset(c.sample_ids[:n]) for c, n in ((train, 60), (val, 30), (test, 30)))
    print(train.summary())
    model = FusionModel(task="classification", aggregator="abmil", encoders={"images": args.encoder},
                        d_model=16 if args.tiny else 64, n_heads=2 if args.tiny else 4,
                        max_epochs=1 if args.tiny else 30, batch_size=32, verbose=False, seed=0)
    model.fit(train, validation=val)
    print(f"{args.encoder}: test AUC {model.score(test):.3f}")
    print({k: v for k, v in model.evaluate(test).items() if k != "by_pattern"})


if __name__ == "__main__":
    main()
