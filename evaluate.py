"""Measure ranking quality on a labelled collection (BEIR layout) through the app's scoring core.

``python evaluate.py DATASET_DIR [--candidates RUN.trec] [--model ID_OR_PATH] [--run-out FILE]
[--limit N] [--plot FILE.png] [--json] [--scoring NAME] [--end-to-end]``
``python evaluate.py DATASET_DIR --calibrate OUT.json [--method isotonic|platt] [--test-fraction F] [--seed S]
[--plot FILE.png]``
``python evaluate.py DATASET --fine-tune OUT_DIR [--test-fraction F] [--validation-fraction F] [--seed S]
[--epochs N] [--base MODEL] [--keep-worse]`` (DATASET: a BEIR-layout folder, or a JSONL/CSV file of query, passage,
label rows)

It reranks every judged query's first-stage candidates and reports nDCG@10, MRR@10 and Recall@10
(ir-measures, trec_eval conventions: graded gains; MRR counts label >= 2 on TREC DL, else >= 1)
for the first stage and the reranked run, with per-query wins, ties and losses. With ``--end-to-end``
it indexes the collection's whole corpus in the local index instead and runs every judged query
through the app's retrieve-then-rerank (:mod:`end_to_end`): nDCG@10, MRR@10 and Recall@100 for
lexical only, dense only, hybrid, and hybrid + rerank. With ``--calibrate`` it fits a monotone map from the served
model's scores to P(relevant) on a query-level training split and reports expected calibration error and Brier score
on the held-out queries before and after (:mod:`evaluation.calibrate`); ``RERANK_CALIBRATION=OUT.json`` serves it.
With ``--fine-tune`` it trains the served model (or ``--base``) on the training queries with hard negatives mined from
the local hybrid index (candidate recipes compared on a validation part of them first), and writes the checkpoint only
if it beats the base on the held-out queries (:mod:`evaluation.fine_tune`); ``RERANK_MODEL=OUT_DIR`` serves it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

from evaluation import end_to_end
from evaluation.calibrate import calibrate
from evaluation.fine_tune import NEGATIVE_MARGIN, Options, check_output, fine_tune, print_fine_tune
from evaluation.harness import METRIC_NAMES, SCORINGS, check_layout, evaluate, plot, write_run
from scoring.errors import RerankError
from scoring.loading import packaged_scorer
from service import Service, assembly, memory
from service.memory import AllocatorPolicy
from service.settings import Settings


def evaluation_service(model: str | None = None, *, backend: str | None = None,
                       settings: Settings | None = None) -> Service:
    """The service as ``python app.py`` would serve ``model`` (the one assembly: the configured backend, measured here
    first where it is ``auto``, fusion and limits), without the app's retriever: evaluation measures what serves. The
    model's own scores, not RERANK_CALIBRATION's probabilities: a calibration never changes the order, and
    calibrating needs the scores it maps."""
    settings = replace(settings or Settings.from_env(), calibration=None)
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
        print(_json({k: v for k, v in report.items() if not k.startswith("_")}), file=args.report)
    else:
        end_to_end.print_report(report)
    return 0


def _progress(done: int, total: int, rate: float) -> None:
    if done == total or done % 10 == 0:
        print(f"\r{done}/{total} queries, {rate:.0f} pairs/s", end="" if done < total else "\n", file=sys.stderr)


def _main_calibrate(args, service: Service) -> int:
    """``--calibrate``: fit, write, and report on the held-out queries."""
    try:
        report = calibrate(args.dataset_dir, service=service, out=args.calibrate, method=args.method,
                           test_fraction=args.test_fraction, seed=args.seed, candidates=args.candidates,
                           plot_path=args.plot, progress=_progress)
    except (FileNotFoundError, ValueError, RerankError) as exc:
        print(f"evaluate.py: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(_json(report), file=args.report)
        return 0
    q, before, after = report["queries"], report["before"], report["after"]
    print(f"{report['dataset']}: {report['method']} calibration of {report['model']} fitted on {q['train']} queries "
          f"({report['pairs']['train']:,} pairs), judged on {q['test']} held-out queries ({report['pairs']['test']:,} "
          f"pairs, {report['relevant_share']['test']:.1%} relevant); written to {args.calibrate}")
    print(f"{'':<22}{'ECE':>8}{'Brier':>9}")
    print(f"{'served score':<22}{before['ece']:>8.4f}{before['brier']:>9.4f}")
    print(f"{'calibrated':<22}{after['ece']:>8.4f}{after['brier']:>9.4f}")
    print(f"serve it with RERANK_CALIBRATION={args.calibrate}")
    return 0


def _main_fine_tune(args) -> int:
    """``--fine-tune``: mine, train, judge, write or refuse."""
    settings = replace(Settings.from_env(), calibration=None)
    if not Path(args.dataset_dir).exists():
        print(f"evaluate.py: {args.dataset_dir} does not exist (a BEIR-layout folder or a JSONL/CSV file of query, "
              "passage, label)", file=sys.stderr)
        return 2
    options = Options(out=Path(args.fine_tune), test_fraction=args.test_fraction, seed=args.seed, epochs=args.epochs,
                      negatives=args.negatives, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      keep_worse=args.keep_worse, margin=args.negative_margin,
                      validation_fraction=args.validation_fraction)
    try:
        check_output(options.out)
        base = assembly.load_model(settings, args.base or args.model)
        report = fine_tune(args.dataset_dir, base=base, options=options, cache_dir=settings.cache_dir,
                           service_for=lambda scorer: assembly.build(settings, scorer=scorer), report_progress=_progress)
    except (FileNotFoundError, ValueError, RerankError) as exc:
        print(f"evaluate.py: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(_json(report), file=args.report)
    else:
        print_fine_tune(report)
    return 0 if report["written"] else 1


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
    parser.add_argument("--calibrate", metavar="OUT.json", help="fit scores -> P(relevant) and write it here")
    parser.add_argument("--method", choices=["isotonic", "platt"], default="isotonic", help="with --calibrate")
    parser.add_argument("--test-fraction", type=float, default=0.5, help="judged queries held out (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="the query split's seed")
    parser.add_argument("--fine-tune", metavar="OUT_DIR", help="train the model on the labels and write it here if it "
                                                               "beats the base on the held-out queries")
    parser.add_argument("--base", help="with --fine-tune: the model to start from (default: the served model)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--negatives", type=int, default=4, help="hard negatives mined per relevant passage")
    parser.add_argument("--negative-margin", type=float, default=NEGATIVE_MARGIN,
                        help="drop a mined negative the base model scores within this share of the relevant "
                             "passage's score (likely relevant, never judged; 0 drops only those above it)")
    parser.add_argument("--validation-fraction", type=float, default=0.25,
                        help="training queries that choose among candidate recipes (learning rate, negatives) before "
                             "the held-out queries judge the chosen one (0: train only the given recipe)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--keep-worse", action="store_true", help="write the fine-tuned model even if it is not better")
    args = parser.parse_args(argv)
    args.report = sys.stdout  # where the report goes; with --json nothing else goes there
    if not args.json:
        return _run(args)
    with contextlib.redirect_stdout(sys.stderr):  # trainers and libraries print logs and progress: not the report's
        return _run(args)


def _run(args) -> int:
    """The command ``args`` name (reports to ``args.report``)."""
    if args.fine_tune:
        return _main_fine_tune(args)
    if not Path(args.dataset_dir).is_dir():
        print(f"evaluate.py: {args.dataset_dir} is not a BEIR-layout folder (no such folder)", file=sys.stderr)
        return 2
    try:
        check_layout(args.dataset_dir)  # before any model loads (a first load may measure backends for minutes)
    except FileNotFoundError as exc:
        print(f"evaluate.py: {exc}", file=sys.stderr)
        return 2
    service = evaluation_service(args.model, backend=args.backend)
    if args.end_to_end:
        return _main_end_to_end(args, service)
    if args.calibrate:
        return _main_calibrate(args, service)

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
        print(_json(summary), file=args.report)
    else:
        _print_report(report)
    return 0


if __name__ == "__main__":
    # a fine-tuning run holds what it uses, as the server does: glibc's defaults grew RSS step by step
    # (bench/train_memory.py), the allocator policy kept it flat
    memory.keep_flat(AllocatorPolicy(interval=Settings.from_env().memory_release_s))
    sys.exit(main())
