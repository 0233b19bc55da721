"""Retrieval: corpora, BM25, the hybrid fusion, the local embedded index and the retrievers (remote, local, background)."""
