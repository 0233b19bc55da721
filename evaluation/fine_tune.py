"""Fine-tuning the served model on your labels: ``python evaluate.py DATASET --fine-tune OUT_DIR``.

The judged queries are split by query (or the collection's own ``qrels/train.tsv`` trains and ``qrels/test.tsv``
judges); with ``validation_fraction``, part of the training queries first chooses among candidate recipes
(:mod:`evaluation.recipes`), so the held-out queries judge one model, once. For each training query, hard negatives
are mined from the local hybrid index over the collection's corpus (the best-ranked passages not judged relevant, and
scored by the base model clearly below the relevant passage: an unjudged relevant passage is not taught as a
negative). The model is trained in its own family with sentence-transformers'
trainers: a cross-encoder as a cross-encoder (binary cross-entropy on relevant and mined pairs), an embedding model as
an embedding model (multiple-negatives ranking loss with the mined negatives, gradients cached so activations are held
for a bounded number of tokens at a time), so a fine-tuned embedding default also
improves the app's own first stage. Base and fine-tuned are judged on the held-out queries (reranking their candidates:
nDCG@10, MRR@10; an embedding model also end to end: nDCG@10, MRR@10, Recall@100 of the app's pipeline), and the
checkpoint is written only when it beats the base there (an embedding model on the pipeline's nDCG@10, a cross-encoder
on reranking nDCG@10; ``keep_worse`` writes it anyway).
Training state is kept beside the output (``OUT_DIR.training``) after each epoch, so a stopped run resumes there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from evaluation import end_to_end, recipes
from evaluation.calibrate import MIN_QUERIES_PER_SIDE, SplitError, split_queries
from evaluation.harness import Dataset, build_run, load_dataset, measure, read_qrels, read_run, score_candidates
from evaluation.mining import NEGATIVE_MARGIN, mine
from evaluation.pairs import is_pairs_file, read_pairs
from evaluation.recipes import Recipe
from scoring.loading import load_scorer, packaged_scorer
from scoring.scorer import Scorer
from service import Service

RERANK_METRICS = ("ndcg@10", "mrr@10")
TRAIN_TOKEN_BUDGET = 2048  # padded tokens one training forward pass holds activations for (an embedding model)


class FineTuneError(ValueError):
    """An input fine-tuning cannot use (named in the message): an output folder in the way, a model family it does not
    train, too few judged queries."""


@dataclass(frozen=True)
class Options:
    """How to fine-tune: the split, the training and where the state goes."""

    out: Path
    test_fraction: float = 0.5
    seed: int = 0
    epochs: int = 1
    negatives: int = 4
    batch_size: int = 16
    learning_rate: float = 2e-5
    keep_worse: bool = False
    margin: float = NEGATIVE_MARGIN  # a mined negative scored within this share of the positive's score is dropped
    depth: int = 100  # candidates per held-out query where the collection brings none
    validation_fraction: float = 0.0  # training queries that choose among recipes (0: train the options' own recipe)
    recipes: tuple[Recipe, ...] = ()  # what validation chooses among (empty: recipes.candidates of these options)
    work_dir: Path | None = None  # the trainer's state (default: beside the output)

    def check(self) -> None:
        """Refuse settings that cannot train, naming the option and its bound."""
        for name, value, least in (("--epochs", self.epochs, 1), ("--negatives", self.negatives, 0),
                                   ("--batch-size", self.batch_size, 2)):
            if value < least:
                raise FineTuneError(f"{name} must be at least {least}, got {value}")
        if not self.learning_rate > 0:
            raise FineTuneError(f"--learning-rate must be above 0, got {self.learning_rate}")
        if not 0 <= self.margin < 1:
            raise FineTuneError(f"--negative-margin must be at least 0 and below 1, got {self.margin}")
        if not 0 <= self.validation_fraction < 1:
            raise FineTuneError(f"--validation-fraction must be at least 0 and below 1, got {self.validation_fraction}")

    @property
    def work(self) -> Path:
        """Where the trainer's per-epoch state lives until the run ends (a stopped run resumes from it)."""
        return self.work_dir or self.out.with_name(self.out.name + ".training")

    def candidates(self, embedding: bool) -> tuple[Recipe, ...]:
        """The recipes validation chooses among."""
        return self.recipes or recipes.candidates(self.learning_rate, self.epochs, self.negatives, embedding=embedding)


def check_output(out: Path) -> None:
    """Refuse an output folder that exists and holds anything (nothing is overwritten)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FineTuneError(f"the output folder {out} exists and is not empty; name a new or empty folder")


def load_collection(source: str | Path) -> tuple[Dataset, dict[str, dict[str, int]] | None]:
    """A BEIR-layout folder or a pairs file (JSONL or CSV of query, passage, label), and the collection's own training
    judgments where it has them (``qrels/train.tsv``)."""
    source = Path(source)
    if is_pairs_file(source):
        return read_pairs(source), None
    train = source / "qrels" / "train.tsv"
    return load_dataset(source), read_qrels(train) if train.is_file() else None


def split(dataset: Dataset, own_train: dict | None, options: Options) -> tuple[Dataset, Dataset]:
    """(training, held-out) views of the collection: its own train/test judgments, else a query-level split."""
    judged = [q for q in dataset.qrels if q in dataset.queries and any(v > 0 for v in dataset.qrels[q].values())]
    if own_train:
        train_ids = [q for q in own_train if q in dataset.queries]
        train = replace(dataset, qrels={q: own_train[q] for q in train_ids})
        return train, replace(dataset, qrels={q: dataset.qrels[q] for q in judged})
    train_ids, test_ids = split_queries(judged, options.test_fraction, options.seed)
    return (replace(dataset, qrels={q: dataset.qrels[q] for q in train_ids}),
            replace(dataset, qrels={q: dataset.qrels[q] for q in test_ids}))


def trainable(base: Scorer) -> None:
    """Refuse a model of a family fine-tuning here does not train."""
    if base.info.family in ("causal-lm", "late-interaction"):
        kind = "a causal-LM reranker" if base.info.family == "causal-lm" else "a late-interaction model"
        raise FineTuneError(f"{base.info.name} is {kind}: fine-tuning here trains cross-encoders and embedding models")


def train_model(base: Scorer, rows: list[dict], options: Options, *, progress: bool = True,
                callbacks: list | None = None) -> Path:
    """Train ``base`` in its own family on the mined rows; returns the folder the trained model is saved in
    (``OUT_DIR.training/model``). Resumes from the last epoch saved there by a run with the same settings
    (``callbacks``: the trainer's, e.g. to stop it)."""
    trainable(base)
    settings = {"base": base.fingerprint, "rows": len(rows), "epochs": options.epochs, "seed": options.seed,
                "batch_size": options.batch_size, "learning_rate": options.learning_rate}
    work = options.work
    recorded = work / "settings.json"
    if work.exists() and (not recorded.is_file() or json.loads(recorded.read_text()) != settings):
        raise FineTuneError(f"{work} holds training state from a run with other settings; remove it to start afresh")
    work.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(settings))
    resume = any(work.glob("checkpoint-*"))
    trainer = (_embedding_trainer if base.info.mode == "embedding" else _cross_encoder_trainer)(base, rows, options,
                                                                                               progress)
    for callback in [*(callbacks or []), _estimate_callback()]:
        trainer.add_callback(callback)
    with _every_core():
        trainer.train(resume_from_checkpoint=True if resume else None)
    saved = work / "model"
    trainer.model.save_pretrained(str(saved))
    return saved


@contextlib.contextmanager
def _every_core():
    """torch's intra-op threads on every core while training, as before after: a CPU engine sets one thread a worker for
    the whole process, and nothing else is scored while the trainer runs."""
    import torch  # lazy: torch loads only on this path

    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _estimate_callback():
    """A trainer callback that states, on stderr, what the run will take once its first step is timed: steps an epoch,
    seconds a step, and the estimate for the whole training (the trainer's own bar shows progress)."""
    import sys

    from transformers import TrainerCallback  # lazy: transformers loads only on this path

    class Estimate(TrainerCallback):
        def __init__(self) -> None:
            self.started: float | None = None
            self.told = False

        def on_step_begin(self, args, state, control, **kwargs):
            if self.started is None:
                self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.told or self.started is None:
                return
            self.told = True
            step = time.perf_counter() - self.started
            per_epoch = max(1, state.max_steps // max(1, int(args.num_train_epochs)))
            print(f"training: {state.max_steps} steps ({per_epoch} an epoch); the first took {step:.1f} s, so about "
                  f"{step * per_epoch:.0f} s an epoch and {step * (state.max_steps - state.global_step):.0f} s more",
                  file=sys.stderr)

    return Estimate()


def _arguments(cls, options: Options, progress: bool, **extra):
    """The trainer's arguments: a checkpoint each epoch (the last kept), the GPU where there is one."""
    import torch  # lazy: torch loads only on this path

    return cls(output_dir=str(options.work), num_train_epochs=options.epochs, seed=options.seed,
               per_device_train_batch_size=options.batch_size, learning_rate=options.learning_rate,
               warmup_steps=0.1, save_strategy="epoch", save_total_limit=1, logging_strategy="epoch",
               report_to="none", disable_tqdm=not progress, dataloader_pin_memory=torch.cuda.is_available(), **extra)


def _embedding_trainer(base: Scorer, rows: list[dict], options: Options, progress: bool):
    """Multiple-negatives ranking: each query against its relevant passage, its mined negatives and the batch's."""
    from datasets import Dataset as Table  # lazy: datasets loads only on this path
    from sentence_transformers import (  # lazy: sentence-transformers loads only on this path
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    model = SentenceTransformer(base.info.path, local_files_only=True)
    width = min(len(r["negatives"]) for r in rows)
    columns = {"anchor": [r["query"] for r in rows], "positive": [r["positive"] for r in rows]}
    columns |= {f"negative_{k + 1}": [r["negatives"][k] for r in rows] for k in range(width)}
    args = _arguments(SentenceTransformerTrainingArguments, options, progress, batch_sampler="no_duplicates")
    # the same loss as MultipleNegativesRankingLoss, with gradients cached (GradCache): activations are held for at
    # most TRAIN_TOKEN_BUDGET tokens at a time, not for the whole batch's (queries, positives and negatives)
    per_pass = max(1, TRAIN_TOKEN_BUDGET // max(1, model.max_seq_length or 512))
    return SentenceTransformerTrainer(model=model, args=args, train_dataset=Table.from_dict(columns),
                                      loss=CachedMultipleNegativesRankingLoss(model, mini_batch_size=per_pass))


def _cross_encoder_trainer(base: Scorer, rows: list[dict], options: Options, progress: bool):
    """Binary cross-entropy on (query, relevant passage, 1) and (query, mined negative, 0)."""
    from datasets import Dataset as Table  # lazy: datasets loads only on this path
    from sentence_transformers.cross_encoder import (  # lazy: sentence-transformers loads only on this path
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    model = CrossEncoder(base.info.path, num_labels=1, local_files_only=True)
    pairs = [(r["query"], r["positive"], 1.0) for r in rows] + [(r["query"], n, 0.0) for r in rows for n in r["negatives"]]
    table = Table.from_dict({"query": [p[0] for p in pairs], "passage": [p[1] for p in pairs],
                             "label": [p[2] for p in pairs]})
    args = _arguments(CrossEncoderTrainingArguments, options, progress)
    return CrossEncoderTrainer(model=model, args=args, train_dataset=table, loss=BinaryCrossEntropyLoss(model))


def judge(scorer: Scorer, held: Dataset, pools: dict, service_for: Callable[[Scorer], Service],
          progress=None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Held-out reranking metrics of a model over the same candidate pools (means and per query)."""
    scored = score_candidates(held, {q: pools[q] for q in held.qrels if q in pools}, service_for(scorer),
                              progress=progress)
    return measure({q: held.qrels[q] for q in scored}, build_run(scored), mrr_threshold=held.mrr_threshold,
                   names=RERANK_METRICS)


def candidate_pools(source: Path, held: Dataset, index, depth: int) -> dict:
    """Each held-out query's candidates: the collection's first-stage run where it has one, else the hybrid index's."""
    run = source / "candidates" / "bm25_top100.trec" if source.is_dir() else None
    if run is not None and run.is_file():
        return read_run(run)
    pools = {}
    for qid in held.qrels:
        found = index.search(held.queries[qid], depth, "hybrid")
        pools[qid] = [(str(u), -float(d)) for u, d in zip(found["url"], found["distance"], strict=True)]
    return pools


def fine_tune(source: str | Path, *, base: Scorer, options: Options, service_for: Callable[[Scorer], Service],
              cache_dir: Path, progress: bool = True, report_progress=None) -> dict:
    """Mine, train, judge base and fine-tuned on the held-out queries, and write the checkpoint only if it is better;
    a JSON-ready report (``written``: where, or None and by how much it fell short)."""
    check_output(options.out)
    options.check()
    trainable(base)
    started = time.perf_counter()
    dataset, own_train = load_collection(source)
    train, held = split(dataset, own_train, options)
    folder = Path(source)
    embedder = base if base.info.mode == "embedding" else packaged_scorer()  # the app's own first stage
    index = end_to_end.open_collection_index(folder, dataset, embedder, cache_dir)
    fit, validation = split_validation(train, options)
    width = max([options.negatives, *(r.negatives for r in options.candidates(base.info.mode == "embedding"))])
    try:
        rows, mined = mine(train, index, width if validation else options.negatives, progress=progress, scorer=base,
                           margin=options.margin)
        if not rows:
            raise FineTuneError("no training query has a passage judged relevant in the corpus: nothing to learn from")
        pools = candidate_pools(folder, held, index, options.depth)
        checks = candidate_pools(folder, validation, index, options.depth) if validation else {}
    finally:
        index.close()
    trained_at = time.perf_counter()
    chosen = None
    if validation:
        saved, chosen = _choose(base, [r for r in rows if r["qid"] in fit.qrels], validation, checks, options,
                                service_for, progress)
    else:
        saved = train_model(base, rows, options, progress=progress)
    trained = time.perf_counter() - trained_at
    report = {"dataset": dataset.name, "base": base.info.name, "mode": base.info.mode, "seed": options.seed,
              "queries": {"train": len(fit.qrels), "validation": len(validation.qrels) if validation else 0,
                          "held_out": len(held.qrels)},
              "training_rows": len(rows), "negatives": mined,
              "epochs": options.epochs, "seconds_per_epoch": trained / max(options.epochs, 1),
              "recipes": chosen, **_judged(base, saved, held, pools, folder, service_for, cache_dir, report_progress)}
    if base.info.mode == "embedding":  # judged where it serves: the app's pipeline (first stage and reranker)
        pair = {k: v["reranked"] for k, v in report["end_to_end"].items()}
        report["judged_on"] = "end-to-end hybrid + rerank nDCG@10"
    else:
        pair = report["reranking"]
        report["judged_on"] = "reranking nDCG@10"
    gain = pair["fine_tuned"]["ndcg@10"] - pair["base"]["ndcg@10"]
    report["gain"] = gain
    report["written"] = str(options.out) if writes(gain, chosen, keep_worse=options.keep_worse) else None
    if report["written"]:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        if options.out.exists():
            options.out.rmdir()  # empty (checked first)
        shutil.move(str(saved), str(options.out))
        (options.out / "fine_tune.json").write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(options.work, ignore_errors=True)
    report["seconds"] = time.perf_counter() - started
    return report


def _trained(saved: Path) -> contextlib.closing[Scorer]:
    """A trained model as it is judged (fp32 torch), closed when the block ends: judged models are not kept."""
    return contextlib.closing(load_scorer(str(saved), allow_fallback=False, backend="torch"))


def _judged(base: Scorer, saved: Path, held: Dataset, pools: dict, folder: Path, service_for, cache_dir: Path,
            report_progress) -> dict:
    """Base and fine-tuned on the held-out queries: reranking, and for an embedding model the app's pipeline end to
    end; the fine-tuned model is let go of once judged."""
    with _trained(saved) as tuned:
        pair = (("base", base), ("fine_tuned", tuned))
        judged = {"reranking": {name: judge(scorer, held, pools, service_for, report_progress)[0] for name, scorer in pair}}
        if base.info.mode == "embedding":
            judged["end_to_end"] = {name: _end_to_end(folder, held, scorer, service_for, cache_dir) for name, scorer in pair}
    return judged


def writes(gain: float, chosen: dict | None, *, keep_worse: bool = False) -> bool:
    """Whether the fine-tuned model is written: better than the base on the held-out queries and, where recipes were
    chosen on validation queries, the chosen one better than the base there too (else no gain was found)."""
    return keep_worse or (gain > 0 and (chosen is None or chosen["beats_base"]))


def split_validation(train: Dataset, options: Options) -> tuple[Dataset, Dataset | None]:
    """(fitting, validation) views of the training queries; no validation where ``validation_fraction`` is 0. Too
    few queries to spare for validation is refused, naming the option."""
    if not options.validation_fraction:
        return train, None
    try:
        return split(train, None, replace(options, test_fraction=options.validation_fraction))
    except SplitError:
        raise FineTuneError(f"--validation-fraction {options.validation_fraction} of {len(train.qrels)} training queries "
                            f"leaves fewer than {MIN_QUERIES_PER_SIDE} to train on or to validate on (use 0 to train "
                            "one recipe without validation)") from None


def _choose(base: Scorer, rows: list[dict], validation: Dataset, checks: dict, options: Options, service_for,
            progress: bool) -> tuple[Path, dict]:
    """Train each candidate recipe on the fitting queries' rows and keep the best on the validation queries: its
    saved folder, and every candidate's validation figures beside the base's (the others' folders are removed)."""
    def train(position: int, recipe: Recipe) -> Path:
        trimmed = [{**r, "negatives": r["negatives"][:recipe.negatives],
                    "negative_ids": r["negative_ids"][:recipe.negatives]} for r in rows]
        return train_model(base, trimmed, replace(options, learning_rate=recipe.learning_rate, epochs=recipe.epochs,
                                                  work_dir=options.work / f"recipe-{position}"), progress=progress)

    def validate(saved: Path) -> dict[str, float]:
        with _trained(saved) as candidate:
            return judge(candidate, validation, checks, service_for)[0]

    best, tried, made = recipes.choose(options.candidates(base.info.mode == "embedding"), train, validate)
    for position, folder in enumerate(made):
        if position != best:
            shutil.rmtree(folder.parent, ignore_errors=True)
    before = judge(base, validation, checks, service_for)[0]
    return made[best], {"chosen": tried[best].recipe.name, "chosen_by": f"validation {recipes.CHOSEN_BY}",
                        "base": before, "beats_base": recipes.beats_base(tried[best], before),
                        "candidates": [t.as_dict() for t in tried]}


def _end_to_end(folder: Path, held: Dataset, scorer: Scorer, service_for, cache_dir: Path) -> dict:
    """The app's pipeline with this model as embedder and reranker, on the held-out queries."""
    report = end_to_end.evaluate_end_to_end(folder, service=service_for(scorer), embedder=scorer, cache_dir=cache_dir,
                                            dataset=held)
    return {stage: report[stage] for stage in end_to_end.STAGES}


def print_fine_tune(report: dict) -> None:
    """The held-out comparison, and what was written (or by how much it fell short)."""
    q = report["queries"]
    print(f"{report['dataset']}: {report['base']} ({report['mode']}) fine-tuned on {q['train']} queries "
          f"({report['training_rows']} rows, {report['epochs']} epoch(s), {report['seconds_per_epoch']:.0f} s an epoch); "
          f"judged on {q['held_out']} held-out queries")
    chosen = report.get("recipes")
    if chosen:
        print(f"recipes on {q['validation']} validation queries (reranking nDCG@10; base "
              f"{chosen['base']['ndcg@10']:.4f}): " + "; ".join(f"{c['recipe']} {c['validation']['ndcg@10']:.4f} "
                                                              f"({c['seconds']:.0f} s)" for c in chosen["candidates"])
              + f"; chosen: {chosen['chosen']}")
    rows = [("reranking", report["reranking"])]
    if "end_to_end" in report:
        rows.append(("end to end (hybrid + rerank)", {k: v["reranked"] for k, v in report["end_to_end"].items()}))
    for title, pair in rows:
        print(f"{title}: " + "; ".join(f"{m} {pair['base'][m]:.4f} -> {pair['fine_tuned'][m]:.4f}"
                                        for m in pair["base"]))
    if report["written"]:
        print(f"written to {report['written']} ({report['judged_on']} {report['gain']:+.4f}); serve it with "
              f"RERANK_MODEL={report['written']}")
    elif chosen and not chosen["beats_base"]:
        best = next(c for c in chosen["candidates"] if c["recipe"] == chosen["chosen"])["validation"]["ndcg@10"]
        print(f"not written: no recipe beat the base on the {q['validation']} validation queries (best {best:.4f}, "
              f"base {chosen['base']['ndcg@10']:.4f}), so no gain was found whatever the held-out queries say "
              f"({report['judged_on']} {report['gain']:+.4f}); --keep-worse writes it anyway")
    else:
        print(f"not written: it did not beat the base on the held-out queries ({report['judged_on']} short by "
              f"{max(0.0, -report['gain']):.4f}); --keep-worse writes it anyway")
