"""Measure ranking quality on a labelled collection (BEIR layout) through the app's scoring core.

``python evaluate.py DATASET_DIR [--candidates RUN.trec] [--model ID_OR_PATH] [--run-out FILE]
[--limit N] [--plot FILE.png] [--json] [--scoring NAME] [--end-to-end]``

It reranks every judged query's first-stage candidates and reports nDCG@10, MRR@10 and Recall@10
(ir-measures, trec_eval conventions: graded gains; MRR counts label >= 2 on TREC DL, else >= 1)
for the first stage and the reranked run, with per-query wins, ties and losses. With ``--end-to-end``
it indexes the collection's whole corpus in the local index instead and runs every judged query
through the app's retrieve-then-rerank (:mod:`end_to_end`): nDCG@10, MRR@10 and Recall@100 for
lexical only, dense only, hybrid, and hybrid + rerank.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

from evaluation import end_to_end
from evaluation.harness import METRIC_NAMES, SCORINGS, evaluate, plot, write_run
from scoring.loading import packaged_scorer
from service import Service, assembly
from service.settings import Settings


def evaluation_service(model: str | None = None, *, backend: str | None = None,
                       settings: Settings | None = None) -> Service:
    """The service as ``python app.py`` would serve ``model`` (the one assembly: the configured backend, measured here
    first where it is ``auto``, fusion and limits), without the app's retriever: evaluation measures what serves."""
    settings = settings or Settings.from_env()
    if backend:
        settings = replace(settings, backend=backend)
    return assembly.build(settings, model=model, index=False)


def _print_report(report: dict) -> None:
    print(f"{report['dataset']}: {report['queries']} queries, model {report['model']} ({report['mode']}, "
          f"backend {report['backend']}), scoring {report['scoring']}: {report['fusion']}, {report['seconds']:.1f} s")
    print(f"{'metric':<10} {'first stage':>12} {'reranked':>10} {'difference':>11}")
    for name in METRIC_NAMES:
        print(f"{name:<10} {report['first_stage'][name]:>12.4f} {report['reranked'][name]:>10.4f} "
              f"{report['difference'][name]:>+11.4f}")
    pq = report["per_query"]
    print(f"per query (nDCG@10): {pq['wins']} wins, {pq['ties']} ties, {pq['losses']} losses")


def _json(summary: dict) -> str:
    return json.dumps(summary, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)


def _main_end_to_end(args, service: Service) -> int:
    """``--end-to-end``: the stages' table (or JSON), and the plot."""

    settings = Settings.from_env()
    embedder = service.embedder or packaged_scorer(cache_dir=settings.cache_dir, device=settings.device)

    def progress(done: int, total: int) -> None:
        if done == total or done % 25 == 0:
            print(f"\r{done}/{total} queries", end="" if done < total else "\n", file=sys.stderr)

    def indexing(done: int, total: int) -> None:
        print(f"\rindexing {done}/{total} passages", end="" if done < total else "\n", file=sys.stderr)

    try:
        report = end_to_end.evaluate_end_to_end(args.dataset_dir, service=service, embedder=embedder,
                                                cache_dir=settings.cache_dir, limit=args.limit, progress=progress,
                                                index_progress=indexing)
    except (FileNotFoundError, ValueError) as exc:
        print(f"evaluate.py: {exc}", file=sys.stderr)
        return 2
    if args.run_out:
        write_run(report["_runs"]["reranked"], args.run_out)
    if args.plot:
        end_to_end.plot_report(report, args.plot)
    if args.json:
        print(_json({k: v for k, v in report.items() if not k.startswith("_")}))
    else:
        end_to_end.print_report(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The CLI; see the module docstring."""
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset_dir")
    parser.add_argument("--candidates", help="first-stage run in TREC format (default candidates/bm25_top100.trec)")
    parser.add_argument("--model", help="model id or path (default RERANK_MODEL)")
    parser.add_argument("--backend", help="inference backend (default RERANK_BACKEND, as the app serves)")
    parser.add_argument("--scoring", choices=["default", *sorted(SCORINGS)], default="default",
                        help="scoring configuration (default: the app's, RERANK_FUSION / RERANK_FUSION_WEIGHT)")
    parser.add_argument("--run-out", help="write the reranked run (TREC format) here")
    parser.add_argument("--limit", type=int, help="only the first N judged queries")
    parser.add_argument("--plot", help="write a PNG of per-query nDCG@10 changes")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--end-to-end", action="store_true",
                        help="index the whole corpus and measure lexical, dense, hybrid and hybrid + rerank")
    args = parser.parse_args(argv)
    if not Path(args.dataset_dir).is_dir():
        print(f"evaluate.py: {args.dataset_dir} is not a BEIR-layout folder (no such folder)", file=sys.stderr)
        return 2
    service = evaluation_service(args.model, backend=args.backend)
    if args.end_to_end:
        return _main_end_to_end(args, service)

    def progress(done: int, total: int, rate: float) -> None:
        if done == total or done % 10 == 0:
            print(f"\r{done}/{total} queries, {rate:.0f} pairs/s", end="" if done < total else "\n", file=sys.stderr)

    try:
        report = evaluate(args.dataset_dir, candidates=args.candidates, service=service,
                          policy=None if args.scoring == "default" else SCORINGS[args.scoring], limit=args.limit,
                          progress=progress)
    except FileNotFoundError as exc:
        print(f"evaluate.py: {exc}", file=sys.stderr)
        return 2
    if args.run_out:
        write_run(report["_runs"]["reranked"], args.run_out)
    if args.plot:
        plot(report, args.plot)
    summary = {k: v for k, v in report.items() if not k.startswith("_")}
    if args.json:
        print(_json(summary))
    else:
        _print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
