"""Image documents: an image a multimodal reranker reads as a document, checked before any model sees it.

An image arrives as encoded bytes (a data URI on the HTTP face, a PIL image from Python); it is identified by the
digest of those bytes (duplicates, the score cache), bounded in bytes and pixels, and its pixels are counted in the
request's cost like tokens: one token for every 28 x 28 pixels, as Qwen2-VL-style processors cut an image into
patches. A URL is never fetched: the server makes no request to an address a client chooses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass
from functools import cached_property

from scoring.errors import LimitExceeded, RerankError

PIXELS_PER_TOKEN = 28 * 28
NEVER_FETCHED = ("a URL is never fetched (the server makes no request to an address a client chooses); "
                 "send the image itself as a data URI, data:image/png;base64,...")


@dataclass(frozen=True)
class ImageLimits:
    """How large one image document may be: its encoded bytes and its pixels (width x height)."""

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096


@dataclass(frozen=True, eq=False)
class ImageDocument:
    """An image document: its encoded bytes, as checked, and what identifies it."""

    data: bytes
    width: int
    height: int
    format: str

    @cached_property
    def digest(self) -> str:
        """The SHA-256 of the encoded bytes: equal images sent twice are one document."""
        return hashlib.sha256(self.data).hexdigest()

    @property
    def key(self) -> str:
        """What identifies the image among texts (duplicates, the score cache): no text can equal it."""
        return f"\x00image sha256:{self.digest}"

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def cost(self) -> int:
        """Tokens the image is counted as in a request's cost (a 28 x 28 patch a token)."""
        return max(1, -(-self.pixels // PIXELS_PER_TOKEN))

    def image(self):
        """The decoded image, in RGB, as sentence-transformers' processors take it."""
        from PIL import Image  # lazy: Pillow loads only for image documents

        with Image.open(io.BytesIO(self.data)) as opened:
            return opened.convert("RGB")

    def data_uri(self) -> str:
        """The image as a data URI (how the HTTP and Gradio faces give it back)."""
        return f"data:image/{self.format.lower()};base64,{base64.b64encode(self.data).decode()}"

    def __str__(self) -> str:
        return f"[image {self.width}x{self.height} {self.format} sha256:{self.digest[:12]}]"


def read_image(data: bytes, *, field: str, limits: ImageLimits = ImageLimits()) -> ImageDocument:
    """Check encoded image bytes: within ``limits`` (the size is read from the header before any pixel is decoded, so
    a small file that would decode to a huge image is refused unread) and a format Pillow can decode."""
    from PIL import Image, UnidentifiedImageError  # lazy: Pillow loads only for image documents

    if len(data) > limits.max_bytes:
        raise LimitExceeded(f"{field} is an image of {len(data):,} bytes; the limit is {limits.max_bytes:,} "
                            "(RERANK_MAX_IMAGE_BYTES)")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height, kind = opened.width, opened.height, opened.format or "PNG"
            if width * height > limits.max_pixels:
                raise LimitExceeded(f"{field} is an image of {width} x {height} = {width * height:,} pixels; the limit "
                                    f"is {limits.max_pixels:,} (RERANK_MAX_IMAGE_PIXELS)")
            opened.verify()
    except LimitExceeded:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise RerankError(f"{field} is not an image Pillow can read ({str(exc).splitlines()[0][:120]})") from None
    return ImageDocument(data, width, height, kind)


def from_data_uri(value: object, *, field: str, limits: ImageLimits = ImageLimits()) -> ImageDocument:
    """An image document from a ``data:image/...;base64,...`` URI, or bare base64 of the image's bytes (as Jina's API
    also takes it); a URL is refused, never fetched."""
    if not isinstance(value, str):
        raise RerankError(f"{field} must be a data URI (data:image/png;base64,...), got {type(value).__name__}")
    if "://" in value[:16]:
        raise RerankError(f"{field} is a URL: {NEVER_FETCHED}")
    head, comma, body = value.partition(",")
    if not comma or not head.lower().startswith("data:"):
        head, body = "data:image/*;base64", value  # bare base64
    if not head.lower().startswith("data:image/") or not head.lower().endswith(";base64"):
        raise RerankError(f"{field} must be a base64 image data URI (data:image/...;base64,...), got {head[:40]!r}")
    if len(body) > limits.max_bytes * 4 // 3 + 4:  # refused before decoding what cannot fit
        raise LimitExceeded(f"{field} is an image of more than {limits.max_bytes:,} bytes; the limit is "
                            f"{limits.max_bytes:,} (RERANK_MAX_IMAGE_BYTES)")
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise RerankError(f"{field} is not valid base64: send a data URI (data:image/png;base64,...) or the image's "
                          "bytes in base64") from None
    return read_image(data, field=field, limits=limits)


def from_pil(image, *, field: str, limits: ImageLimits = ImageLimits()) -> ImageDocument:
    """An image document from a PIL image (Python callers), encoded once as PNG: what identifies it."""
    if image.width * image.height > limits.max_pixels:
        raise LimitExceeded(f"{field} is an image of {image.width} x {image.height} = {image.width * image.height:,} "
                            f"pixels; the limit is {limits.max_pixels:,} (RERANK_MAX_IMAGE_PIXELS)")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return read_image(buffer.getvalue(), field=field, limits=ImageLimits(max(limits.max_bytes, buffer.tell()),
                                                                         limits.max_pixels))


def is_image(value: object) -> bool:
    """Whether a document is an image: an :class:`ImageDocument` or a PIL image."""
    return isinstance(value, ImageDocument) or is_pil(value)


def identity(document: str | ImageDocument) -> str:
    """What identifies a document (duplicates, caches): a text itself, an image its :attr:`ImageDocument.key`."""
    return document.key if isinstance(document, ImageDocument) else document


def is_pil(value: object) -> bool:
    """Whether ``value`` is a PIL image (without importing Pillow where nobody sent one)."""
    import sys

    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(value, pil.Image)
