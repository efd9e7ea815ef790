"""Images named in API requests, fetched and decoded under limits.

Accepted: `data:image/...;base64,...` URLs, and http(s) URLs only from hosts on an allow-list (empty by
default). Local paths, `file://` and every other scheme are refused: a request never makes the server
read its own files. Sizes are checked before decoding: the bytes against `max_bytes`, and the pixel count
from the header (which Pillow reads without decoding) against `max_pixels`, so a small file that claims a
huge canvas (a decompression bomb) is refused without being expanded.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
FETCH_TIMEOUT_S = 10.0


class ImageRefused(ValueError):
    """An image that is not accepted; the message says why."""


@dataclass
class ImageLimits:
    max_bytes: int = 10 * 2**20
    max_pixels: int = 4096 * 4096
    allowed_hosts: list[str] = field(default_factory=list)  # hosts http(s) image URLs may come from


def _fetch(url: str, limits: ImageLimits) -> bytes:
    """The body of an allowed http(s) URL, read no further than the byte limit; redirects are not followed
    because they could lead off the allow-list."""
    host = urlsplit(url).hostname or ""
    if host not in limits.allowed_hosts:
        allowed = ", ".join(limits.allowed_hosts) or "none"
        raise ImageRefused(f"images from {host or 'that URL'} are not allowed (allowed hosts: {allowed}; start the "
                           f"server with --allow_image_hosts to add some); send the image as a base64 data URL")
    body = bytearray()
    try:
        with httpx.stream("GET", url, timeout=FETCH_TIMEOUT_S, follow_redirects=False) as response:
            if response.status_code != 200:
                raise ImageRefused(f"fetching {url} answered HTTP {response.status_code}")
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > limits.max_bytes:
                    raise ImageRefused(f"the image at {url} is larger than the limit of {limits.max_bytes} bytes")
    except httpx.HTTPError as err:
        raise ImageRefused(f"could not fetch {url}: {err}") from err
    return bytes(body)


def _data_url_bytes(url: str, limits: ImageLimits) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise ImageRefused("a data URL must look like data:image/png;base64,<data>")
    # Base64 takes 4 characters per 3 bytes: refuse before decoding anything larger than the limit.
    if len(payload) * 3 // 4 > limits.max_bytes + 3:
        raise ImageRefused(f"the image is larger than the limit of {limits.max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageRefused(f"the data URL is not valid base64: {err}") from err
    if len(data) > limits.max_bytes:
        raise ImageRefused(f"the image is {len(data)} bytes, more than the limit of {limits.max_bytes}")
    return data


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """An RGB image from encoded bytes, refused when its header claims more pixels than the limit."""
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as err:
        raise ImageRefused(f"decompression bomb refused: {err}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ImageRefused(f"not a readable image (accepted formats: {', '.join(FORMATS)})") from err
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRefused(f"the image is {width}x{height} = {width * height} pixels, more than the limit of "
                           f"{limits.max_pixels} (a decompression bomb, or simply too large)")
    try:
        return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageRefused(f"the image could not be decoded: {err}") from err


def load_image_url(url: str, limits: ImageLimits) -> Image.Image:
    """The image an `image_url` names, under `limits`."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "data":
        return decode_image(_data_url_bytes(url, limits), limits)
    if scheme in ("http", "https"):
        return decode_image(_fetch(url, limits), limits)
    raise ImageRefused("only base64 data URLs (and http(s) URLs from allowed hosts) are accepted; the server never "
                       "reads local files (file:// or paths)")
