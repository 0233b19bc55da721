"""What the measured choice runs candidates on: a timing probe and a fidelity probe, both fixed and offline.

* The **timing probe** is one request of 32 varied passages of ~100 to ~420 tokens (retrievers' passages are of that
  size: SciFact's pairs have a median of 316 tokens), batched as a request is: what one request costs on a backend.
* The **fidelity probe** is what a reduced-precision engine must rank as fp32 ranks (:mod:`scoring.fidelity`): several
  questions, each with its candidates as a first stage returns them, passages on the question's topic ranked highest
  by shared words and unrelated ones mixed in. The passages are the standard library's docstrings
  (:mod:`scoring.texts`), real prose of realistic length that every installation has.
* The **calibration pairs** set a static quantization's activation ranges: other questions over the same passages,
  plus the timing probe, so the fidelity probe never judges the data a quantized graph was calibrated on.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

PROBE_QUERY = "how do transformers rank documents for a search query"
_PROBE_SENTENCES = (
    "A cross-encoder reads the query and the document together and outputs one relevance score.",
    "Bread dough rises when yeast ferments the sugars in the flour and releases carbon dioxide.",
    "Search engines first retrieve candidates with a fast index, then rerank them with a slower model.",
    "The football season ended with a close final decided by a penalty shoot-out.",
    "Transformer encoders use self-attention so that every token can look at every other token.",
    "Tulips bloom in spring and come in many colours, from deep purple to bright yellow.",
    "BM25 scores documents by term frequency, inverse document frequency and document length.",
    "The museum reopened after renovation with a new wing devoted to modern sculpture.",
    "Dense retrieval embeds queries and documents into vectors and compares them by cosine similarity.",
    "Interest rates rose again this quarter as the central bank tried to curb inflation.",
    "Ranking quality is measured with metrics such as nDCG and mean reciprocal rank on judged queries.",
    "The recipe calls for two eggs, a cup of milk and a pinch of salt.",
    "Glaciers carve deep valleys as they slide slowly downhill under their own weight.",
    "The committee approved the budget after a long debate about road maintenance.",
    "Vaccines train the immune system to recognise a pathogen before an infection happens.",
    "A violin's tone depends on the wood, the varnish and the shape of its body.",
    "Rerankers trade latency for precision: they read every candidate with the query.",
    "The train to the coast leaves every hour from the second platform.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Tokenizers split words into sub-word pieces so that rare words still get representations.",
    "The marathon route crosses five bridges and finishes in the old town square.",
    "Quantised models store weights in eight bits, which saves memory but can shift scores.",
    "Coral reefs shelter a quarter of marine species while covering a tiny share of the ocean floor.",
    "An index maps each term to the documents that contain it, so lookups avoid a full scan.",
)

# Questions as users ask them; the fidelity probe judges the first group, static quantization calibrates on the second.
FIDELITY_QUERIES = (
    "How do I parse a JSON document from a string into Python objects?",
    "run an external command and capture what it prints to standard output",
    "match a regular expression at the beginning of a string and get the groups",
    "format a date and time as an ISO 8601 string with a time zone",
    "write log messages to a file with the time of each message",
    "read the rows of a CSV file into dictionaries",
    "send an HTTP request and read the status and headers of the response",
    "create a temporary directory that is removed when I am done",
)
CALIBRATION_QUERIES = (
    "parse command-line options and positional arguments",
    "store rows in a SQLite database and query them",
    "compress a file with gzip and read it back",
    "wait for several coroutines at once with a timeout",
)
_MODULES = {"json", "subprocess", "re", "datetime", "logging", "csv", "http", "urllib", "tempfile", "argparse",
            "sqlite3", "gzip", "asyncio", "shutil", "pathlib", "email", "textwrap", "collections", "heapq", "functools",
            "threading", "socket", "zipfile", "calendar", "string", "decimal", "fractions", "statistics", "random"}
PER_QUERY = 20  # candidates per question: the best half by shared words, the rest unrelated
MIN_WORDS, MAX_WORDS = 80, 300  # passages of ~120 to ~450 tokens
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an and are as at be by do for from get how i in is it me my of on or that the to what when with "
                  "i'm am done into its".split())


@dataclass(frozen=True)
class ProbeQuery:
    """One question and its candidates, as a first stage hands them to the reranker."""

    query: str
    documents: tuple[str, ...]


def probe_documents(n: int = 32) -> list[str]:
    """The timing probe: a fixed set of varied documents of ~100 to ~420 tokens, some on :data:`PROBE_QUERY`'s topic,
    some not: each mixes its own selection of sentences, so scores spread out as they do on real candidates."""
    docs = []
    pool = len(_PROBE_SENTENCES)
    for i in range(n):
        count = 6 + (i * 7) % 19
        docs.append(" ".join(_PROBE_SENTENCES[(i * 5 + j * (1 + i % 7)) % pool] for j in range(count)))
    return docs


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


@lru_cache(maxsize=1)
def _passages() -> tuple[str, ...]:
    """Docstrings of a fixed set of standard-library modules, consecutive ones of a module joined into passages of
    :data:`MIN_WORDS` to :data:`MAX_WORDS` words, as a corpus is split for retrieval."""
    from scoring.texts import module_docstrings

    out: list[str] = []
    current: list[str] = []
    module = ""
    for name, doc in module_docstrings(_MODULES):
        if current and (name.split(".")[0] != module or len(current) >= MIN_WORDS):
            out.append(" ".join(current[:MAX_WORDS]))
            current = []
        module = name.split(".")[0]
        current.extend(f"{name}: {doc}".split())
    if len(current) >= MIN_WORDS:
        out.append(" ".join(current[:MAX_WORDS]))
    return tuple(p for p in out if len(p.split()) >= MIN_WORDS)


def _candidates(query: str, passages: tuple[str, ...], idf: dict[str, float], per_query: int) -> tuple[str, ...]:
    """The best half of ``per_query`` candidates by idf-weighted shared words, then unrelated passages spread evenly
    over the rest (a deterministic stride), interleaved as a first stage's list is not sorted by the reranker's view."""
    terms = set(_words(query))
    weight = [sum(idf.get(w, 0.0) for w in terms & set(_words(p))) for p in passages]
    order = sorted(range(len(passages)), key=lambda i: (-weight[i], i))
    near = order[: per_query // 2]
    rest = order[per_query // 2:]
    step = max(1, len(rest) // (per_query - len(near)))
    far = rest[::step][: per_query - len(near)]
    return tuple(passages[i] for pair in zip(near, far, strict=False) for i in pair)


@lru_cache(maxsize=4)
def _questions(queries: tuple[str, ...], per_query: int) -> tuple[ProbeQuery, ...]:
    passages = _passages()
    counts = Counter(w for p in passages for w in set(_words(p)))
    idf = {w: math.log(len(passages) / c) for w, c in counts.items()}
    return tuple(ProbeQuery(q, _candidates(q, passages, idf, per_query)) for q in queries)


def fidelity_probe(per_query: int = PER_QUERY) -> tuple[ProbeQuery, ...]:
    """The questions a reduced-precision engine must rank as fp32 does (:data:`FIDELITY_QUERIES`), with the timing
    probe's question as one more."""
    return (*_questions(FIDELITY_QUERIES, per_query), ProbeQuery(PROBE_QUERY, tuple(probe_documents(per_query))))


def calibration_pairs(per_query: int = PER_QUERY) -> list[tuple[str, str]]:
    """(query, passage) pairs a static quantization calibrates its activation ranges on: other questions than the
    fidelity probe's (:data:`CALIBRATION_QUERIES`) and the timing probe."""
    pairs = [(q.query, d) for q in _questions(CALIBRATION_QUERIES, per_query) for d in q.documents]
    return pairs + [(PROBE_QUERY, d) for d in probe_documents()]
