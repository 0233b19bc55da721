"""Corpus readers: the built-in stdlib docs, user files in every format, splitting, and bad corpora."""

from __future__ import annotations

import json

import duckdb
import pytest

from retrieval import corpus


def test_builtin_corpus_is_real_python_documentation():
    passages = corpus.builtin_passages(modules={"json", "tempfile"})
    assert len(passages) > 20
    urls = {p.url for p in passages}
    assert any(u.startswith("https://docs.python.org/3.") and u.endswith("/library/json.html#json.dumps") for u in urls)
    dumps = next(p for p in passages if p.url.endswith("#json.dumps"))
    assert "JSON" in dumps.text and dumps.metadata["name"] == "json.dumps"
    assert all(len(p.text) <= corpus.MAX_PASSAGE_CHARS for p in passages)


def test_whole_builtin_corpus_has_a_few_thousand_passages():
    names = corpus.stdlib_sources()
    assert len(names) > 300 and not any(n.startswith(("test.", "idlelib")) for n, _ in names)


def test_split_passages_respects_limit_and_overlaps():
    sentences = [f"Sentence number {i} talks about topic {i}." for i in range(60)]
    text = " ".join(sentences) + "\n\nA second paragraph."
    parts = corpus.split_passages(text, max_chars=300)
    assert all(len(p) <= 300 for p in parts)
    assert parts[-1].endswith("A second paragraph.")
    first_end = parts[0].split(". ")[-1]
    assert first_end.rstrip(".") in parts[1]  # one sentence of overlap
    joined = " ".join(parts)
    assert all(s in joined for s in sentences)  # nothing lost
    assert corpus.split_passages("x" * 2500, max_chars=1000) == ["x" * 1000, "x" * 1000, "x" * 500]


def test_jsonl_csv_parquet_and_folder(tmp_path):
    rows = [{"url": "https://e.org/1", "text": "Cats purr when they are content.", "lang": "en"},
            {"url": "https://e.org/2", "text": "Rust has no garbage collector.", "lang": "en"},
            {"url": None, "text": "   ", "lang": "en"}]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    csv = tmp_path / "docs.csv"
    csv.write_text("url,text,lang\nhttps://e.org/1,Cats purr when they are content.,en\n,Untitled row text.,fr\n")
    parquet = tmp_path / "docs.parquet"
    duckdb.sql(f"COPY (SELECT * FROM read_json_auto('{jsonl}')) TO '{parquet}' (FORMAT PARQUET)")
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("# Title\n\nMarkdown notes about gardening.")
    (folder / "sub" / "b.txt").write_text("Plain text about sailing.")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")

    from_jsonl = corpus.load_corpus(jsonl)
    assert [(p.url, p.text, p.metadata) for p in from_jsonl] == [
        ("https://e.org/1", "Cats purr when they are content.", {"lang": "en"}),
        ("https://e.org/2", "Rust has no garbage collector.", {"lang": "en"})]
    assert [(p.url, p.text) for p in corpus.load_corpus(parquet)] == [(p.url, p.text) for p in from_jsonl]
    from_csv = corpus.load_corpus(csv)
    assert [p.url for p in from_csv] == ["https://e.org/1", "docs.csv#row=1"] and from_csv[1].metadata == {"lang": "fr"}
    from_folder = corpus.load_corpus(folder)
    assert {p.url for p in from_folder} == {"a.md", "sub/b.txt"}


def test_long_rows_are_split_with_part_urls(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"url": "doc", "text": " ".join(f"Sentence {i} here." for i in range(300))}))
    passages = corpus.load_corpus(path)
    assert len(passages) > 3 and passages[0].url == "doc#part=1"


@pytest.mark.parametrize(("name", "content", "message"), [
    ("missing.jsonl", None, "does not exist"),
    ("empty.jsonl", "", "is empty"),
    ("blank.jsonl", '{"text": "  "}', "holds no text"),
    ("notext.csv", "url,body\nu,b\n", "has no 'text' column; columns: ['url', 'body']"),
    ("broken.parquet", "this is not parquet", "unreadable as parquet"),
    ("data.xlsx", "x", "is not JSONL, CSV, Parquet"),
])
def test_bad_corpora(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(corpus.CorpusError, match=message.replace("[", r"\[").replace("]", r"\]")):
        corpus.load_corpus(path)


def test_empty_folder(tmp_path):
    with pytest.raises(corpus.CorpusError, match="no .txt or .md files"):
        corpus.load_corpus(tmp_path)
