"""Image documents checked before any model sees them: bytes and pixels bounded (read from the header, never
decoded past the limit), a URL refused and never fetched, what identifies an image and what it costs."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from scoring.errors import LimitExceeded, RerankError
from scoring.media import ImageLimits, from_data_uri, from_pil, read_image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(image)).decode()


def test_image_limits_refuse_naming_the_field_and_the_setting():
    data = _png(Image.new("RGB", (4100, 4100), (10, 10, 10)))  # a flat image: a small file, 16.8 megapixels decoded
    assert len(data) < 200_000
    with pytest.raises(LimitExceeded, match=r"documents.0.image is an image of 4100 x 4100 = 16,810,000 pixels; the limit "
                                            r"is 16,777,216 \(RERANK_MAX_IMAGE_PIXELS\)"):
        read_image(data, field="documents.0.image")
    with pytest.raises(LimitExceeded, match=r"is an image of [\d,]+ bytes; the limit is 1,000 \(RERANK_MAX_IMAGE_BYTES\)"):
        read_image(data, field="documents.0.image", limits=ImageLimits(max_bytes=1000))
    with pytest.raises(RerankError, match="documents.1.image is a URL: a URL is never fetched"):
        from_data_uri("https://example.org/cat.png", field="documents.1.image")
    with pytest.raises(RerankError, match="is not an image Pillow can read"):
        from_data_uri("data:image/png;base64," + base64.b64encode(b"not a png").decode(), field="documents.2.image")
    with pytest.raises(RerankError, match="must be a base64 image data URI"):
        from_data_uri("data:text/plain,hello", field="documents.3.image")



def test_an_image_is_identified_by_its_bytes_and_costs_a_token_per_784_pixels():
    red = from_pil(Image.new("RGB", (56, 28), (200, 0, 0)), field="documents[0]")
    again = from_data_uri(_uri(Image.new("RGB", (56, 28), (200, 0, 0))), field="documents.1.image")
    assert red.key == again.key and red.key.startswith("\x00image sha256:")  # no text can equal it
    assert (red.width, red.height, red.format, red.cost) == (56, 28, "PNG", 2)
    assert from_pil(Image.new("RGB", (29, 28)), field="x").cost == 2 and from_pil(Image.new("RGB", (1, 1)), field="x").cost == 1
    assert red.image().getpixel((0, 0)) == (200, 0, 0) and red.data_uri() == _uri(Image.new("RGB", (56, 28), (200, 0, 0)))
    bare = from_data_uri(_uri(Image.new("RGB", (56, 28), (200, 0, 0))).split(",", 1)[1], field="documents.2.image")
    assert bare.key == red.key  # bare base64, as Jina's API also takes an image
    with pytest.raises(RerankError, match="documents.3.image is not valid base64"):
        from_data_uri("not base64 at all!", field="documents.3.image")
    with pytest.raises(LimitExceeded, match=r"documents\[2\] is an image of 30 x 30 = 900 pixels; the limit is 800"):
        from_pil(Image.new("RGB", (30, 30)), field="documents[2]", limits=ImageLimits(max_pixels=800))
