"""Image documents: how long 10 page images take to rerank, with the tiny vision reranker, over HTTP and in process.

``python bench/images.py [--pages 10] [--requests 12] [--image-size 28] [--json]``

The model is ``scoring.synthetic.build_vision_reranker`` (a LLaVA-layout model with random weights: what the tests
score, not a trained reranker), so the figure is the service's own cost per image document (decoding and checking
the data URI, the processor's resize, the forward pass), not a trained model's. Pages are rendered here: white
850 x 1100 pixel pages of text lines, sent as PNG data URIs in Jina's shape to ``/v1/rerank`` of ``python app.py``
(``RERANK_MODEL`` the built checkpoint, ``RERANK_BACKEND=torch``); the in-process figure is ``rerank.rank`` on the
same images decoded beforehand. Requests alternate between the two and each asks a new question (no score is
cached); the table gives the median of ``--requests``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

import rerank
from evaluation import load
from scoring.media import from_data_uri
from scoring.synthetic import build_vision_reranker

WORDS = "the service ranks page images by their relevance to a question asked in plain words".split()


def page(n: int, size: tuple[int, int] = (850, 1100)) -> str:
    """A rendered page of text lines (a PNG data URI), different for every ``n``."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for line in range(40):
        words = [WORDS[(n * 7 + line * 3 + k) % len(WORDS)] for k in range(12)]
        draw.text((60, 60 + line * 24), f"{n}.{line} " + " ".join(words), fill=(20, 20, 20))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def measure(folder: Path, pages: list[str], requests: int, tmp: Path) -> dict:
    """Median seconds per request of ``pages`` over HTTP and in process, alternating."""
    scorer = rerank.load_scorer(str(folder), allow_fallback=False)
    decoded = [from_data_uri(p, field="page") for p in pages]
    proc, url = load.start_app(tmp, RERANK_MODEL=str(folder), RERANK_BACKEND="torch")
    http, local = [], []
    try:
        for n in range(requests + 1):  # the first of each warms up
            question = f"which page talks about question {n}"
            start = time.perf_counter()
            answer = httpx.post(f"{url}/v1/rerank", json={"query": question, "documents": [{"image": p} for p in pages]},
                                timeout=600)
            answer.raise_for_status()
            http.append(time.perf_counter() - start)
            start = time.perf_counter()
            rerank.rank(question, decoded, scorer=scorer)
            local.append(time.perf_counter() - start)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"http_p50_s": statistics.median(http[1:]), "in_process_p50_s": statistics.median(local[1:]),
            "pages": len(pages), "page_bytes_mean": int(statistics.mean(len(p) * 3 // 4 for p in pages)),
            "requests": requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=28, help="the vision tower's input side, in pixels")
    parser.add_argument("--json", action="store_true", help="print JSON only on stdout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_vision_reranker(Path(tmp) / "tiny-vision", image_size=args.image_size)
        print(f"rendering {args.pages} pages ...", file=sys.stderr)
        pages = [page(n) for n in range(args.pages)]
        result = {"image_size": args.image_size, **measure(folder, pages, args.requests, Path(tmp))}
    if args.json:
        print(json.dumps(result))
        return
    print(f"| pages | bytes a page | vision input | over HTTP p50 s | in process p50 s |\n|---|---|---|---|---|\n"
          f"| {result['pages']} | {result['page_bytes_mean']:,} | {args.image_size} px | {result['http_p50_s']:.3f} | "
          f"{result['in_process_p50_s']:.3f} |")


if __name__ == "__main__":
    main()
