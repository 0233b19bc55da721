"""How results are shown in the browser: tables that read well at 1280 px and on a phone, and two pictures.

Pure functions from results to display tables and matplotlib figures; ``app.py`` wires them to
components. The API keeps its own shapes (the seed's table, the Cohere/TEI JSON): these views are
for people. Rows are numbered from 0 everywhere, as the API's ``index`` is.
"""

from __future__ import annotations

import pandas as pd

from retrieval.retrievers import BackgroundRetriever
from scoring.media import ImageDocument
from scoring.scorer import Scorer
from scoring.table import IMAGE_COLUMN, SCORE_COLUMN, TEXT_COLUMN, RerankResult
from service import Service

SCORE = "score"
POSITION = "#"


def ranked_view(result: RerankResult) -> pd.DataFrame:
    """The reranked table for reading: position and score first, then the text (an image document named in words;
    its picture is in :func:`ranked_images`), then every other column."""
    table = result.table
    others = [c for c in table.columns if c not in (SCORE_COLUMN, TEXT_COLUMN, IMAGE_COLUMN)]
    named = [str(r.text) if isinstance(r.text, ImageDocument) else r.text for r in result.ranking] if result.ranking \
        else table[TEXT_COLUMN].tolist()
    view = pd.DataFrame({POSITION: range(1, len(table) + 1), SCORE: table[SCORE_COLUMN].round(3).tolist(),
                         "row": list(table.index), TEXT_COLUMN: named})
    for column in others:
        view[str(column)] = table[column].tolist()
    return view


def ranked_images(result: RerankResult) -> list[tuple]:
    """The ranked image documents as thumbnails, best first, each captioned with its position, score and input row."""
    ranking = result.ranking or []
    return [(r.text.image(), f"#{position} · {r.score:.3f} · row {label}")
            for position, (r, label) in enumerate(zip(ranking, result.table.index, strict=True), 1)
            if isinstance(r.text, ImageDocument)]


def summary(result: RerankResult, rows_in: int) -> str:
    """One line under the results: rows in, rows returned, which duplicates were dropped (rows from 0), how many
    scored below the threshold."""
    dropped = [(d.index, d.same_as) for d in result.ranking.duplicates] if result.ranking else []
    use = result.ranking.instruction if result.ranking else None
    cut = result.ranking.threshold if result.ranking else None
    told = f" Instruction {use.note}." if use else ""
    below = f" {cut.dropped} below min_score {cut.min_score:g} dropped." if cut else ""
    if not dropped:
        return f"{rows_in} documents in, {len(result.table)} ranked; no duplicates.{below}{told}"
    shown = ", ".join(f"row {i} (same text as row {j})" for i, j in dropped[:10]) + (" …" if len(dropped) > 10 else "")
    return f"{rows_in} documents in, {len(result.table)} ranked; {len(dropped)} duplicate(s) dropped: {shown}.{below}{told}"


def movement(before: int, after: int) -> str:
    """A document's move from its retrieved position to its reranked one, as an arrow and a count."""
    if after < before:
        return f"▲ {before - after}"
    if after > before:
        return f"▼ {after - before}"
    return "="


def moves_view(reranked: pd.DataFrame) -> pd.DataFrame:
    """The reranked passages as one list: new position, where retrieval had it, the move, the score, the text."""
    return pd.DataFrame({
        POSITION: range(1, len(reranked) + 1),
        "was": reranked["retrieved_position"].tolist(),
        "move": [movement(int(b), a) for a, b in enumerate(reranked["retrieved_position"], start=1)],
        SCORE: reranked[SCORE_COLUMN].round(3).tolist(),
        TEXT_COLUMN: reranked[TEXT_COLUMN].tolist(),
        "url": reranked["url"].tolist() if "url" in reranked.columns else [""] * len(reranked),
    })


def _label(text: str, chars: int = 38) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


def pictures(reranked: pd.DataFrame, relevance: list[float] | None = None):
    """Two figures side by side: the model's own relevance scores on a 0-1 axis (not rescaled per query, so
    queries compare), and each document's shift from its retrieved position to its reranked one (up is better)."""
    import matplotlib  # lazy: matplotlib loads only on this path

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib loads only on this path

    labels = [_label(t) for t in reranked[TEXT_COLUMN]]
    scores = [float(v) for v in relevance] if relevance is not None else reranked[SCORE_COLUMN].astype(float).tolist()
    before = reranked["retrieved_position"].astype(int).tolist()
    after = list(range(1, len(reranked) + 1))
    fig, (bars, shift) = plt.subplots(1, 2, figsize=(11, 0.5 * len(labels) + 1.6),
                                      gridspec_kw={"width_ratios": [1.3, 1]})
    bars.barh(range(len(labels)), scores, color="#4c6ef5")
    bars.set(xlim=(0, 1), yticks=range(len(labels)), yticklabels=[f"{i}. {t}" for i, t in zip(after, labels, strict=True)],
             title="Model relevance (0 to 1)")
    bars.invert_yaxis()
    for y, value in enumerate(scores):
        bars.text(min(value, 0.98), y, f" {value:.3f}", va="center", ha="right" if value > 0.85 else "left", fontsize=8)
    top = max(before + after)
    for b, a in zip(before, after, strict=True):
        colour = "#2b8a3e" if a < b else "#c92a2a" if a > b else "#868e96"
        shift.plot([0, 1], [b, a], marker="o", color=colour)
        shift.text(-0.04, b, str(b), ha="right", va="center", fontsize=8)
        shift.text(1.04, a, str(a), ha="left", va="center", fontsize=8)
    shift.set(xlim=(-0.3, 1.3), ylim=(top + 0.5, 0.5), xticks=[0, 1], xticklabels=["retrieved", "reranked"],
              yticks=[], title="Rank shift (up is better)")
    for side in ("top", "right", "left"):
        shift.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def index_status(service: Service, private=None) -> tuple[str, bool]:
    """The line saying which index answers this session's searches, and whether it is still being built."""
    if private is not None:
        return f"**Index:** ready: {private.description}", False
    retriever = service.retriever
    if isinstance(retriever, BackgroundRetriever) and not retriever.finished(timeout=0):
        total = f"{retriever.total:,}" if retriever.total else "?"
        return f"**Index:** building: {retriever.done:,} of {total} passages embedded …", True
    return f"**Index:** ready: {retriever.description}", False


def header_line(service: Service, scorer: Scorer) -> str:
    """What ranks, in one plain line: the model, how it scores, where it runs."""
    info, backend = scorer.info, scorer.backend
    kind = {"cross-encoder": "cross-encoder", "late-interaction": "late interaction, MaxSim"}.get(info.mode,
                                                                                            "embedding similarity")
    fell_back = " · fallback model (see details)" if info.fallback_reason else ""
    kind += "; text and image documents" if info.images else ""
    return (f"**Model:** `{info.name}` ({kind}) · **Runs on:** {backend.backend} on {backend.device}, "
            f"{backend.precision}{fell_back}")


def details_text(service: Service, scorer: Scorer) -> str:
    """The details a user may want after the header: the scoring rule, the backend choice, any fallback."""
    info, backend = scorer.info, scorer.backend
    lines = [f"- **Scoring:** {info.mode_description}; final score: {service.policy.describe(info.mode)}.",
             f"- **Detected:** {info.detected or info.kind}"
             + (f"; {info.window_note}" if info.window_note else f"; window {info.max_length:,} tokens")
             + ("; takes a task instruction" if info.takes_instruction else "; takes no instruction") + ".",
             f"- **Inference backend:** {backend.describe()}, {scorer.workers} worker thread(s); {scorer.engine}."]
    measured = [m for m in backend.measurements if m.seconds is not None]
    if measured:
        lines.append("- **Measured on this machine** (probe seconds; nDCG@10 against fp32's ranking, admitted or not): "
                     + ", ".join(f"{m.backend} {m.seconds:.2f} s / "
                                 + (f"{m.ndcg:.3f} {'admitted' if m.faithful else 'turned away'}" if m.ndcg is not None
                                    else "not compared") for m in measured) + ".")
    cal = service.calibration
    lines.append(f"- **Calibration:** scores are P(relevant) by {cal.method} fitted on {cal.report.get('dataset', '?')} "
                 f"({cal.source})." if cal else "- **Calibration:** none; scores are the model's own (see the scoring "
                 "rule), not probabilities.")
    if info.fallback_reason:
        lines.append(f"- **Fallback:** `{info.requested}` could not be loaded ({info.fallback_reason}); serving the "
                     "packaged all-MiniLM-L6-v2 instead.")
    return "\n".join(lines)


