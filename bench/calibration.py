"""Calibration on the dev collections: expected calibration error and Brier score of the served model's scores and of
the fitted map, on held-out queries, per collection and seed (``python evaluate.py DATASET --calibrate`` for each).

``python bench/calibration.py [--model ID_OR_PATH] [--seeds 0,1,2] [--method isotonic] [--collections DIR ...]``

One service (the assembly's, as ``evaluate.py`` builds it), so each pair is scored once however many seeds. The shared
collections are read from ``../shared/eval``; where they are absent the script says so and stops.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import dev_sets

from evaluate import evaluation_service
from evaluation.calibrate import calibrate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--method", default="isotonic", choices=["isotonic", "platt"])
    asked = dev_sets.parse(parser)
    if asked is None:
        return 2
    args, folders, seeds = asked
    service = evaluation_service(args.model)
    print(f"model {service.models.default.info.name}, {args.method}, 50/50 query splits")
    print("collection | seed | held-out pairs | relevant | ECE served | ECE calibrated | Brier served | Brier calibrated")
    after = []
    with tempfile.TemporaryDirectory() as folder:
        for collection in folders:
            for seed in seeds:
                r = calibrate(collection, service=service, out=Path(folder) / "c.json", method=args.method, seed=seed)
                after.append(r["after"]["ece"])
                print(f"{r['dataset']} | {seed} | {r['pairs']['test']:,} | {r['relevant_share']['test']:.2%} | "
                      f"{r['before']['ece']:.4f} | {r['after']['ece']:.4f} | {r['before']['brier']:.4f} | "
                      f"{r['after']['brier']:.4f}", flush=True)
    print(f"calibrated ECE: mean {statistics.mean(after):.4f}, worst {max(after):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
