"""The dev collections the quality benchmarks run on (``../shared/eval``: research-only licences, read in place)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS = ("scifact", "trec-dl-2019-passage", "cranfield")


def parse(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[Path], list[int]] | None:
    """The script's arguments with ``--collections`` (default: the three dev collections) and ``--seeds`` (the query
    splits' seeds): (arguments, collections, seeds), or None having said which collections are missing."""
    parser.add_argument("--collections", nargs="*", default=[str(ROOT.parent / "shared" / "eval" / c) for c in COLLECTIONS])
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    folders = [Path(c) for c in args.collections]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        print(f"collections not found: {', '.join(missing)} (they live in ../shared/eval)", file=sys.stderr)
        return None
    return args, folders, [int(s) for s in args.seeds.split(",")]
