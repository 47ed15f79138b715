"""A task's image URL -> grey pixels, with the checks that keep one bad task from hurting others.

Label Studio hands the backend the task's `data.image` as it stores it:

- local files, `/data/local-files/?d=images/<id>.png` (cxrkit.labelstudio.tasks.image_url): the
  path is relative to Label Studio's document root, the workspace data folder. We read the file
  straight from the workspace's image folder; a path that resolves anywhere else (`..`, an
  absolute path, a symlink out) is refused, so a task cannot make the backend read other files.
- uploads, `/data/upload/<project>/<file>`: fetched from Label Studio with the user token it
  handed over in /setup (or $LABEL_STUDIO_API_KEY), at most `max_bytes`.

Anything else (another host, s3://, data: URLs) is refused: the backend fetches from nowhere else.
Before decoding, the image's size is read from its header and anything over `max_pixels` is
refused: decoding a 30000 x 30000 PNG would take gigabytes, in a worker that serves everyone.
"""
from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import cv2
import numpy as np
import requests
from PIL import Image

LOCAL_FILES_PATH = "/data/local-files/"
UPLOAD_PREFIX = "/data/upload/"


class ImageError(ValueError):
    """This task's image cannot be used; the message says which and why."""


def load_image(url: str, images_dir: Path, ls_url: str | None, token: str | None,
               max_bytes: int, max_pixels: int, timeout: float = 30.0) -> np.ndarray:
    """The task image as a 2-D uint8 array."""
    data = read_image_bytes(url, images_dir, ls_url, token, max_bytes, timeout)
    return decode_image(data, url, max_pixels)


def read_image_bytes(url: str, images_dir: Path, ls_url: str | None, token: str | None,
                     max_bytes: int, timeout: float = 30.0) -> bytes:
    if not isinstance(url, str) or not url:
        raise ImageError("task has no image URL (data.image is missing or empty)")
    parsed = urlparse(url)
    if parsed.path.endswith(LOCAL_FILES_PATH) or parsed.path == LOCAL_FILES_PATH.rstrip("/"):
        return _read_local(url, parsed.query, Path(images_dir), max_bytes)
    if parsed.path.startswith(UPLOAD_PREFIX):
        return _fetch_upload(url, parsed, ls_url, token, max_bytes, timeout)
    raise ImageError(f"{url}: unsupported image URL (only Label Studio local files and uploads are read)")


def _read_local(url: str, query: str, images_dir: Path, max_bytes: int) -> bytes:
    values = parse_qs(query).get("d")
    if not values or not values[0]:
        raise ImageError(f"{url}: local-files URL without a ?d= path")
    relative = unquote(values[0])
    root = images_dir.resolve()
    # d is relative to Label Studio's document root, the data folder that holds images/.
    candidate = (root.parent / relative).resolve()
    if not candidate.is_relative_to(root):
        raise ImageError(f"{url}: refused, the path is outside the workspace image folder")
    try:
        size = candidate.stat().st_size
        if size > max_bytes:
            raise ImageError(f"{url}: image file is {size} bytes, over the limit of {max_bytes}")
        return candidate.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{url}: image file not found in the workspace image folder") from None
    except IsADirectoryError:
        raise ImageError(f"{url}: not an image file") from None
    except OSError as exc:
        raise ImageError(f"{url}: cannot read image file: {exc.strerror}") from None


def _fetch_upload(url: str, parsed, ls_url: str | None, token: str | None, max_bytes: int, timeout: float) -> bytes:
    if not ls_url:
        raise ImageError(f"{url}: an uploaded file, but the backend was started without LABEL_STUDIO_URL, the one "
                         "Label Studio it fetches uploads from (`cxr backend start` sets it when the workspace's "
                         "Label Studio runs)")
    if not token:
        raise ImageError(f"{url}: an uploaded file, but no token for Label Studio at {ls_url} "
                         "(none came in /setup and LABEL_STUDIO_API_KEY is unset)")
    base = urlparse(ls_url)
    if parsed.netloc and parsed.netloc != base.netloc:
        raise ImageError(f"{url}: refused, the upload is not on Label Studio at {ls_url}")
    target = ls_url.rstrip("/") + parsed.path + (f"?{parsed.query}" if parsed.query else "")
    try:
        with requests.get(target, headers={"Authorization": f"Token {token}"}, stream=True, timeout=timeout) as resp:
            if resp.status_code != 200:
                raise ImageError(f"{url}: Label Studio answered HTTP {resp.status_code} for the uploaded file")
            chunks, total = [], 0
            for chunk in resp.iter_content(1 << 16):
                total += len(chunk)
                if total > max_bytes:
                    raise ImageError(f"{url}: uploaded file is over the limit of {max_bytes} bytes")
                chunks.append(chunk)
    except requests.RequestException as exc:
        raise ImageError(f"{url}: cannot fetch from Label Studio at {ls_url}: {type(exc).__name__}") from None
    return b"".join(chunks)


def decode_image(data: bytes, url: str, max_pixels: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header only
            width, height = header.size
    except Exception:  # noqa: BLE001 - PIL raises many types for bad bytes; all mean the same here
        raise ImageError(f"{url}: cannot decode image ({len(data)} bytes; corrupt or not an image)") from None
    if width * height > max_pixels:
        raise ImageError(f"{url}: image is {width} x {height} pixels, over the limit of {max_pixels} pixels")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None or img.size == 0:
        raise ImageError(f"{url}: cannot decode image ({len(data)} bytes; corrupt or truncated)")
    return img
