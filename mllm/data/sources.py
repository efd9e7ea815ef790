"""Where image-caption samples come from: webdataset tar shards, parquet tables, JSONL + image folder.

Every file is opened through fsspec, so a local path, `file://`, `s3://`, `gs://`, `https://` or `memory://`
URL all work (remote protocols need their fsspec back-end installed, e.g. s3fs). A reader turns one file
into `Record`s: a sample's fields by name plus the file and key that name it in logs and errors. A tar
sample's fields are its members by suffix (`KEY.jpg` -> `jpg`, as webdataset groups them); a table row's
fields are its columns (a JSONL line's keys).

Captions read the same way from every source (`read_caption`): a plain name reads that field as text (the
`.txt` member of a shard, the `txt` column of a table); `json:<key>` reads `key` of the sample's JSON, and
a table row *is* that JSON unless it has a `json` column of its own, so `json:re_caption` reads the
`re_caption` column of a Hugging Face export of ReCap-DataComp-1B. Images come from the field
`image_field` names, or by default the first present of `IMAGE_FIELDS`; a cell holds encoded bytes, a
`datasets` `Image` struct ({"bytes", "path"}) or a path relative to the image root (by default the table's
folder).

A problem a reader meets is not raised but carried by an error record (or a `SampleError` from the helpers),
with a kind from `KINDS`, so the caller can skip and count it or, in strict mode, stop naming it.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from braceexpand import braceexpand
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

KINDS = ("missing file", "unreadable file", "malformed record", "missing image", "unreadable image",
         "missing caption")
FORMATS = ("webdataset", "parquet", "jsonl")
SUFFIXES = {"webdataset": (".tar", ".tar.gz", ".tgz"), "parquet": (".parquet",), "jsonl": (".jsonl",)}
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "image")
KEY_FIELDS = ("key", "__key__", "id")  # img2dataset, `datasets` webdataset exports, LLaVA-style records


class SampleError(Exception):
    """A sample that cannot be used; `kind` is one of `KINDS`."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


@dataclass
class Record:
    """One raw sample, or (with `error` set) the reason a reader could not produce it."""

    url: str
    key: str
    fields: dict[str, Any] = field(default_factory=dict)
    error: SampleError | None = None

    @property
    def where(self) -> str:
        return f"{self.url}:{self.key}" if self.key else self.url


# --- finding the files --------------------------------------------------------------------------------


def resolve_shards(spec: str, fmt: str = "webdataset") -> list[str]:
    """Expand a source spec (path, folder, glob, brace pattern or fsspec URL) into the files it names.

    Local paths must exist (the error names the first missing one). A long brace list of remote URLs is
    trusted rather than checked one request at a time; a remote file that turns out missing is a bad
    sample when it is read.
    """
    specs = list(braceexpand(spec))
    found: list[str] = []
    for one in specs:
        fs, path = fsspec.core.url_to_fs(one)
        local = isinstance(fs, LocalFileSystem)
        if any(c in path for c in "*?["):
            paths = sorted(fs.glob(path))
            if not paths:
                raise FileNotFoundError(f"no files match {one}")
        elif (local or len(specs) == 1) and _listable(fs) and fs.isdir(path):
            paths = sorted(p for p in fs.ls(path, detail=False) if p.endswith(SUFFIXES[fmt]))
            if not paths:
                raise FileNotFoundError(f"no {' / '.join(SUFFIXES[fmt])} files in folder {one}")
        elif local and not fs.exists(path):
            raise FileNotFoundError(f"shard not found: {one}")  # the config calls every source file a shard
        else:
            paths = [path]
        found += [fs.unstrip_protocol(p) if "://" in one else p for p in paths]
    return found


def _listable(fs: fsspec.AbstractFileSystem) -> bool:
    # HTTP "folders" are HTML pages: isdir would fetch a shard's body to look for links in it.
    return not {"http", "https"} & set(fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


# --- readers --------------------------------------------------------------------------------------------


def reader(fmt: str, columns: set[str]) -> Callable[[str], Iterator[Record]]:
    """The record reader of a format; parquet reads only `columns` (those a table lacks are ignored)."""
    if fmt == "webdataset":
        return read_tar
    if fmt == "parquet":
        return partial(read_parquet, columns=columns)
    if fmt == "jsonl":
        return read_jsonl
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


class _CheckedTarInfo(tarfile.TarInfo):
    """Turns the header errors tarfile treats as a quiet end of archive into errors.

    tarfile stops without complaint at a partial or garbled header block, or at end of data where the
    end-of-archive zero blocks should be: exactly what a truncated download looks like.
    """

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.EOFHeaderError:
            raise  # the zero block that ends a complete archive
        except tarfile.HeaderError as err:
            raise tarfile.ReadError(f"truncated or corrupt archive ({err or type(err).__name__})") from err


def read_tar(url: str) -> Iterator[Record]:
    """Samples of a webdataset shard: consecutive members sharing a key (the name up to its first dot)."""
    key, fields = "", {}
    try:
        with (fsspec.open(url, "rb") as stream,
              tarfile.open(fileobj=stream, mode="r|*", tarinfo=_CheckedTarInfo) as tar):
            for member in tar:
                folder, _, name = member.name.rpartition("/")
                stem, dot, suffix = name.partition(".")
                if not member.isfile() or not dot:
                    continue
                member_key = f"{folder}/{stem}" if folder else stem
                if member_key != key and fields:
                    yield Record(url, key, fields)
                    fields = {}
                key = member_key
                fields[suffix.lower()] = tar.extractfile(member).read()
    except FileNotFoundError as err:
        yield Record(url, key, error=SampleError("missing file", str(err)))
        return
    except (tarfile.TarError, OSError, EOFError) as err:
        # The pending sample may have lost members: it goes with the error rather than half-read.
        yield Record(url, key or "(start)", error=SampleError("unreadable file", f"{type(err).__name__}: {err}"))
        return
    if fields:
        yield Record(url, key, fields)


def read_parquet(url: str, columns: set[str]) -> Iterator[Record]:
    """Rows of a parquet file, `columns` only (a table need not have them all)."""
    row = 0
    try:
        with fsspec.open(url, "rb") as stream:
            table = pq.ParquetFile(stream)
            names = [name for name in table.schema_arrow.names if name in columns]
            for batch in table.iter_batches(batch_size=256, columns=names):
                for values in batch.to_pylist():
                    yield _row_record(url, values, f"row {row}")
                    row += 1
    except FileNotFoundError as err:
        yield Record(url, "", error=SampleError("missing file", str(err)))
    except (pa.ArrowException, OSError) as err:
        yield Record(url, f"row {row}", error=SampleError("unreadable file", f"{type(err).__name__}: {err}"))


def read_jsonl(url: str) -> Iterator[Record]:
    """One record per non-blank line; a line that is not a JSON object is a malformed record."""
    line_number = 0
    try:
        with fsspec.open(url, "rt", encoding="utf-8") as lines:
            for line_number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    values = json.loads(line)
                except json.JSONDecodeError as err:
                    values = err
                if not isinstance(values, dict):
                    detail = str(values) if isinstance(values, Exception) else f"a JSON {type(values).__name__}"
                    yield Record(url, f"line {line_number}", error=SampleError("malformed record", detail))
                    continue
                yield _row_record(url, values, f"line {line_number}")
    except FileNotFoundError as err:
        yield Record(url, "", error=SampleError("missing file", str(err)))
    except (OSError, UnicodeDecodeError) as err:
        yield Record(url, f"line {line_number + 1}",
                     error=SampleError("unreadable file", f"{type(err).__name__}: {err}"))


def _row_record(url: str, values: dict[str, Any], position: str) -> Record:
    key = next((str(values[name]) for name in KEY_FIELDS if values.get(name) is not None), position)
    fields = dict(values)
    fields.setdefault("json", values)  # the row stands in for the sample's JSON (see the module docstring)
    return Record(url, key, fields)


# --- fields ---------------------------------------------------------------------------------------------


def caption_columns(caption_field: str) -> set[str]:
    """The table columns `caption_field` may read; raises ValueError for a malformed field."""
    if caption_field.startswith("json:") and len(caption_field) > 5:
        return {caption_field[5:], "json"}
    if caption_field and ":" not in caption_field:
        return {caption_field}
    raise ValueError(f"caption field must be a field name (e.g. 'txt') or 'json:<key>', got {caption_field!r}")


def read_caption(fields: Mapping[str, Any], caption_field: str) -> str:
    """The caption `caption_field` names, stripped; SampleError when it is missing or empty."""
    if caption_field.startswith("json:"):
        key = caption_field[5:]
        meta = fields.get("json")
        if isinstance(meta, (bytes, str)):
            try:
                meta = json.loads(meta)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise SampleError("malformed record", f"json: {err}") from err
        if not isinstance(meta, Mapping):
            raise SampleError("missing caption", "no json")
        value = meta.get(key)
        name = f"json {key!r}"
    else:
        value = fields.get(caption_field)
        name = repr(caption_field)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SampleError("malformed record", f"{name} is not UTF-8: {err}") from err
    if not isinstance(value, str) or not value.strip():
        raise SampleError("missing caption", f"no text in {name}")
    return value.strip()


def read_image(fields: Mapping[str, Any], image_field: str, root: str) -> Image.Image:
    """Decode the sample's image; a path resolves against `root` unless it is absolute or a URL."""
    names = (image_field,) if image_field else IMAGE_FIELDS
    value = next((fields[name] for name in names if fields.get(name) is not None), None)
    if isinstance(value, Mapping):  # a `datasets` Image cell
        value = value.get("bytes") or value.get("path")
    if value is None:
        raise SampleError("missing image", f"no {' / '.join(names)} field")
    if isinstance(value, str):
        path = value if "://" in value or value.startswith("/") or not root else f"{root.rstrip('/')}/{value}"
        try:
            with fsspec.open(path, "rb") as file:
                value = file.read()
        except FileNotFoundError as err:
            raise SampleError("missing file", path) from err
        except OSError as err:
            raise SampleError("unreadable file", f"{path}: {err}") from err
    if not isinstance(value, (bytes, bytearray)):
        raise SampleError("missing image", f"image field holds a {type(value).__name__}")
    try:
        image = Image.open(io.BytesIO(value))
        image.load()
    except Exception as err:  # Pillow's decoders raise many types (OSError, SyntaxError, ValueError...)
        raise SampleError("unreadable image", f"{type(err).__name__}: {err}") from err
    return image
