"""Skimming: every document read at its first tokens, the best read whole and ranked first, nothing lost."""

from __future__ import annotations

import numpy as np
import pytest

from scoring import ranking
from scoring.errors import RerankError
from scoring.skim import Skim, capped, head, merge, order
from service import assembly
from service.settings import Settings

QUERY = "which committee approved the harbour budget"
TOPICS = ["harbour budget", "river bridge", "school roof", "library hours", "tram timetable", "park benches"]


def documents(count: int = 24) -> list[str]:
    """Documents of many lengths whose openings and later parts differ, so a skim and a full read disagree."""
    out = []
    for i in range(count):
        opening = f"Item {i}: the council noted the {TOPICS[i % len(TOPICS)]} in session {i}."
        later = " ".join(f"Clause {j} of the {TOPICS[(i + j) % len(TOPICS)]} report was approved by committee {i}."
                         for j in range(2 + 3 * (i % 5)))
        out.append(f"{opening} {later}")
    return out


def test_the_pure_steps_keep_the_full_reads_first_and_the_scores_falling():
    final = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    assert head(final, 2).tolist() == [1, 3]  # ties in input order
    scores, whole = merge(final, np.array([0.3, 0.4]), np.array([1, 3]))
    assert scores.tolist() == [0.2, 0.3, 0.5, 0.4, 0.1] and whole.tolist() == [False, True, False, True, False]
    assert order(scores, whole).tolist() == [3, 1, 2, 0, 4]  # read whole first, though the skim of 2 scored higher
    assert capped(scores, whole).tolist() == [0.2, 0.3, 0.3, 0.4, 0.1]  # never above the last full read


@pytest.mark.parametrize(("tokens", "keep", "field"), [(8, 20, "tokens"), (64, 0, "keep"), (64.5, 20, "tokens"),
                                                        (True, 20, "tokens")])
def test_a_bad_skim_names_its_field_and_limit(tokens, keep, field):
    with pytest.raises(RerankError, match=f"skim {field} must be an integer of at least"):
        Skim(tokens, keep)


def test_a_skimmed_ranking_reads_the_best_whole_and_keeps_every_document(tiny_scorer):
    texts = documents()
    texts.append(texts[3])  # a duplicate is still reported once
    skim = Skim(16, 5)
    skimmed = ranking.rank(tiny_scorer, QUERY, texts, skim=skim, long_documents="truncate", raw=True)
    plain = ranking.rank(tiny_scorer, QUERY, texts, long_documents="truncate", raw=True)
    opening = ranking.rank(tiny_scorer, QUERY, texts, long_documents="truncate", max_tokens_per_doc=16, raw=True)
    assert sorted(r.index for r in skimmed) == list(range(len(texts) - 1))
    assert skimmed.duplicates == [ranking.Duplicate(len(texts) - 1, 3)]
    best = [r.index for r in opening][:5]
    assert sorted(r.index for r in skimmed[:5]) == sorted(best)  # the skim's best five are the ones read whole
    full, short = plain.scores(len(texts)), opening.scores(len(texts))
    assert max(abs(full[i] - short[i]) for i in best) > 1e-5  # (the full read scores them otherwise than the skim)
    for r in skimmed[:5]:
        assert r.model_score == pytest.approx(full[r.index], abs=1e-6)  # and scored as the plain read scores them
    rest = [r.index for r in skimmed[5:]]
    assert rest == [i for i in (r.index for r in opening) if i not in best]  # the rest in the skim's order
    reported = [r.score for r in skimmed]
    assert all(a >= b for a, b in zip(reported, reported[1:], strict=False))
    assert opening.cost < skimmed.cost < plain.cost


def test_skimming_is_left_out_where_it_would_not_read_less(tiny_scorer):
    texts = documents(6)
    plain = ranking.rank(tiny_scorer, QUERY, texts)
    assert ranking.rank(tiny_scorer, QUERY, texts, skim=Skim(16, 6)).cost == plain.cost  # keeps every document
    cut = ranking.rank(tiny_scorer, QUERY, texts, max_tokens_per_doc=16)
    assert ranking.rank(tiny_scorer, QUERY, texts, skim=Skim(32, 2), max_tokens_per_doc=16).cost == cut.cost


def test_the_skim_settings_reach_every_face_and_refuse_what_is_malformed(tiny_scorer, packaged_scorer):
    settings = Settings.from_env({"RERANK_SKIM_TOKENS": "16", "RERANK_SKIM_KEEP": "4"})
    assert assembly.skim_of(settings).for_model(tiny_scorer.info) == Skim(16, 4)
    auto = assembly.skim_of(Settings.from_env({}))  # the measured default: cross-encoders skim, embedding models not
    assert auto.for_model(tiny_scorer.info) == Skim(128, 10) and auto.for_model(packaged_scorer.info) is None
    assert assembly.skim_of(Settings.from_env({"RERANK_SKIM_TOKENS": "off"})).for_model(tiny_scorer.info) is None
    for bad in ("8", "many"):
        with pytest.raises(ValueError, match="RERANK_SKIM_TOKENS must be auto, off or a number of tokens >= 16"):
            Settings.from_env({"RERANK_SKIM_TOKENS": bad})
    texts = documents()
    service = assembly.build(settings, scorer=tiny_scorer)
    assert service.info()["reading"]["skim"] == "every document's first 16 tokens, then the best 4 read whole"
    skimmed = service.rank(QUERY, texts)
    direct = ranking.rank(tiny_scorer, QUERY, texts, skim=Skim(16, 4))
    assert [r.index for r in skimmed] == [r.index for r in direct] and skimmed.cost == direct.cost
    assert skimmed.cost < assembly.build(Settings(skim_tokens=None), scorer=tiny_scorer).rank(QUERY, texts).cost


def test_every_document_a_request_shows_is_read_whole(tiny_scorer):
    texts = documents()
    plain = ranking.rank(tiny_scorer, QUERY, texts, long_documents="truncate", raw=True).scores(len(texts))
    shown = ranking.rank(tiny_scorer, QUERY, texts, skim=Skim(16, 3), top_n=8, long_documents="truncate", raw=True)
    assert len(shown) == 8
    for r in shown:
        assert r.model_score == pytest.approx(plain[r.index], abs=1e-6)
