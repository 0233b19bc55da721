"""The DuckDB index: build, search, persistence without re-embedding, rebuilds, faults."""

from __future__ import annotations

import os

import numpy as np
import pytest

import retrieval_client as rc
from retrieval import corpus
from retrieval.index import LocalIndex, LocalIndexError
from tests.support import CountingEmbedder


def test_build_search_and_reuse_without_reembedding(tmp_path, packaged_scorer, small_corpus):
    path = tmp_path / "index.duckdb"
    first = CountingEmbedder(packaged_scorer)
    index = LocalIndex.open(small_corpus, first, path=path, name="small")
    assert first.document_texts == len(small_corpus) and not index.stats.reused
    assert index.stats.passages_per_second > 0 and index.stats.dim == 384
    hits = index.search("serialize a Python object to a JSON formatted string", 5)
    assert list(hits.columns) == ["url", "text", "distance"]
    assert hits["distance"].is_monotonic_increasing
    assert "json.html" in hits["url"].iloc[0]
    assert ((hits["distance"] >= 0) & (hits["distance"] <= 1)).all()  # hybrid: 1 - fused score in [0, 1]
    # dense: distance is the cosine distance of the stored embeddings
    dense = index.search("serialize a Python object to a JSON formatted string", 5, mode="dense")
    q = packaged_scorer.embed(["serialize a Python object to a JSON formatted string"], query=True)[0]
    d = packaged_scorer.embed([dense["text"].iloc[0]])[0]
    assert dense["distance"].iloc[0] == pytest.approx(1 - float(np.dot(q, d)), abs=1e-4)
    assert dense["distance"].is_monotonic_increasing
    index.close()

    second = CountingEmbedder(packaged_scorer)
    again = LocalIndex.open(small_corpus, second, path=path, name="small")
    assert second.document_texts == 0 and again.stats.reused  # nothing re-embedded
    assert again.search("serialize a Python object to a JSON formatted string", 5)["url"].tolist() == hits["url"].tolist()
    again.close()


def test_modes_find_what_words_or_meaning_alone_find(tmp_path, packaged_scorer):
    passages = [corpus.Passage(url=f"p{i}", text=t) for i, t in enumerate([
        "Error code XK-47b means the coolant pump has overheated; let it cool before restarting.",
        "A sloop is a sailing boat with a single mast.",
        "Tomatoes need full sun and regular watering.",
        "Automobiles require periodic maintenance such as changing engine oil.",
        "The kettle switched itself off because it got too hot."])]
    index = LocalIndex.open(passages, packaged_scorer, path=tmp_path / "modes.duckdb")
    code = "what does XK-47b mean"
    assert index.search(code, 1, "lexical")["url"].tolist() == ["p0"]  # a rare code: words find it
    assert index.search("car upkeep", 1, "dense")["url"].tolist() == ["p3"]  # no shared word: meaning finds it
    assert not index.scores("car upkeep", "lexical")[1].any()
    for query, wanted in ((code, "p0"), ("car upkeep", "p3")):
        assert index.search(query, 2)["url"].iloc[0] == wanted  # hybrid finds both
    lexical = index.search("boat with one mast", 3, "lexical")
    assert lexical["distance"].tolist() == sorted(lexical["distance"]) and lexical["url"].iloc[0] == "p1"
    index.close()
    again = LocalIndex.open(passages, packaged_scorer, path=tmp_path / "modes.duckdb")  # BM25 comes back from the file
    assert again.stats.reused and again.search(code, 1, "lexical")["url"].tolist() == ["p0"]
    again.close()


def test_failed_build_leaves_nothing_in_the_cache(tmp_path, packaged_scorer, small_corpus):
    class Failing(CountingEmbedder):
        def embed(self, texts, *, query=False, background=False):
            if self.document_texts >= 8:
                raise RuntimeError("embedding failed half way")
            return super().embed(texts, query=query, background=background)

    with pytest.raises(RuntimeError, match="half way"):
        LocalIndex.open(small_corpus[:20], Failing(packaged_scorer), path=tmp_path / "c" / "index.duckdb", batch_size=8)
    assert list((tmp_path / "c").iterdir()) == []


def test_corpus_without_text_builds_nothing(tmp_path, packaged_scorer):
    (tmp_path / "notext.jsonl").write_text('{"url": "a", "body": "words"}\n')
    (tmp_path / "blank.jsonl").write_text('{"text": "   "}\n')
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    for name, message in (("notext.jsonl", "has no 'text' column"), ("blank.jsonl", "holds no text"),
                          ("broken.parquet", "unreadable as parquet")):
        with pytest.raises(rc.RetrievalError, match=message):
            rc.LocalRetriever.build(corpus_path=str(tmp_path / name), cache_dir=tmp_path / "cache", embedder=packaged_scorer)
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_rebuilds_when_corpus_or_model_changes(tmp_path, packaged_scorer, small_corpus):
    path = tmp_path / "index.duckdb"
    LocalIndex.open(small_corpus[:10], packaged_scorer, path=path).close()
    changed = CountingEmbedder(packaged_scorer)
    LocalIndex.open(small_corpus[:11], changed, path=path).close()
    assert changed.document_texts == 11
    other_model = CountingEmbedder(packaged_scorer, fingerprint="another-model")
    index = LocalIndex.open(small_corpus[:11], other_model, path=path)
    assert other_model.document_texts == 11 and index.stats.passages == 11
    index.close()


def test_corrupt_index_file_is_rebuilt(tmp_path, packaged_scorer, small_corpus):
    path = tmp_path / "index.duckdb"
    path.write_bytes(b"this is not a duckdb file" * 100)
    counting = CountingEmbedder(packaged_scorer)
    index = LocalIndex.open(small_corpus[:5], counting, path=path)
    assert counting.document_texts == 5 and len(index.search("json", 3)) == 3
    index.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; covered by a file-in-the-way case")
def test_unwritable_folder_builds_in_memory(tmp_path, packaged_scorer, small_corpus):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    index = LocalIndex.open(small_corpus[:5], packaged_scorer, path=folder / "index.duckdb")
    assert index.stats.path == ":memory:"


def test_unusable_cache_path_builds_in_memory(tmp_path, packaged_scorer, small_corpus):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    index = LocalIndex.open(small_corpus[:5], packaged_scorer, path=blocker / "index.duckdb")
    assert index.stats.path == ":memory:" and len(index.search("json", 2)) == 2


def test_empty_corpus_is_refused(packaged_scorer):
    with pytest.raises(LocalIndexError, match="no passages"):
        LocalIndex.open([], packaged_scorer, path=None)


def test_local_retriever_from_user_files(tmp_path, packaged_scorer):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "garden.md").write_text("Tomatoes need full sun and regular watering.")
    (tmp_path / "docs" / "boats.txt").write_text("A sloop is a sailing boat with a single mast.")
    retriever = rc.LocalRetriever.build(corpus_path=str(tmp_path / "docs"), cache_dir=tmp_path / "cache",
                                        embedder=packaged_scorer)
    hits = retriever.search("which boat has one mast?", 2)
    assert hits["url"].tolist()[0] == "boats.txt"
    assert len(list((tmp_path / "cache").glob("index-docs-*.duckdb"))) == 1
    with pytest.raises(rc.RetrievalError, match="does not exist"):
        rc.LocalRetriever.build(corpus_path=str(tmp_path / "nope.jsonl"), cache_dir=tmp_path / "cache",
                                embedder=packaged_scorer)


def test_background_retriever_reports_progress_and_failure(tmp_path, packaged_scorer, small_corpus):
    ok = rc.BackgroundRetriever(lambda progress: rc.LocalRetriever(
        LocalIndex.open(small_corpus[:20], packaged_scorer, path=None, batch_size=8, progress=progress)), name="bg")
    assert ok.first_stage() == "hybrid" and ok.first_stage("lexical") == "lexical"  # known once built (it waits)
    assert len(ok.search("json", 3)) == 3 and (ok.done, ok.total) == (20, 20)
    assert "20 passages" in ok.description

    def fail(progress):
        raise corpus.CorpusError("corpus file x.csv has no 'text' column")

    broken = rc.BackgroundRetriever(fail, name="bad index")
    assert broken.first_stage() is None  # the search says why
    with pytest.raises(rc.RetrievalError, match="could not be built: corpus file x.csv has no 'text' column"):
        broken.search("json", 3)
    assert "failed" in broken.description


def test_local_retriever_seeds_the_embedding_cache(tmp_path, packaged_scorer):
    (tmp_path / "notes.md").write_text("Sourdough needs a starter culture.\n\n" + "A sloop has a single mast. " * 30)
    retriever = rc.LocalRetriever.build(corpus_path=str(tmp_path / "notes.md"), cache_dir=tmp_path / "cache",
                                        embedder=packaged_scorer)
    texts, vectors = retriever.index.stored_vectors()
    misses, batches = packaged_scorer.cache.misses, packaged_scorer.pool.batches_run
    again = packaged_scorer.embed(texts)  # every passage comes from the seeded cache: no forward pass
    assert packaged_scorer.cache.misses == misses and packaged_scorer.pool.batches_run == batches
    np.testing.assert_allclose(again, vectors, atol=1e-6)
