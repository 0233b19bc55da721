"""The scoring core, one concern a module; ``rerank.py`` at the top level is its face.

- ``checkpoint``: find a model's files, decide how it must score (cross-encoder or embedding), its layout
- ``tokenizer``: the checkpoint's fast tokenizer, producing model inputs
- ``engines``: one replica of a model's forward pass on a runtime (torch, ONNX Runtime, OpenVINO,
  sentence-transformers)
- ``choice``: which engine serves here, measured on a fixed probe behind a fidelity gate
- ``pool``: the worker threads that run every request's batches, fairly interleaved and cancellable
- ``cache``: bounded caches of scores and embeddings
- ``scorer``: a loaded model: windows, batches, cost and scores; loading with fallback
- ``ranking``: the one ranking operation (duplicates, fusion, typed results) every face calls
- ``table``: the DataFrame adapter on it (the Gradio ``/rerank`` table)

Nothing here imports a web framework.
"""
