"""Parquet tables in the Hugging Face `datasets` layout, with images embedded as `Image` features.

A file written here loads with `datasets.load_dataset("parquet", ...)` (images decode to PIL), which is how
lmms-eval reads local benchmark copies; reading accepts such files and `save_to_disk` folders alike.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def encode_image(image: Image.Image, quality: int = 95) -> dict[str, Any]:
    """An `Image` feature cell: JPEG bytes and no path."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return {"bytes": buffer.getvalue(), "path": None}


def _feature(arrow_type: pa.DataType) -> dict[str, Any]:
    if arrow_type == _IMAGE_TYPE:
        return {"_type": "Image"}
    if pa.types.is_list(arrow_type):
        return {"_type": "Sequence", "feature": _feature(arrow_type.value_type)}
    return {"_type": "Value", "dtype": str(arrow_type).replace("large_", "")}


def write_table(rows: Sequence[Mapping[str, Any]], path: Path, image_columns: Sequence[str] = ("image",)) -> None:
    """Write `rows` to `path`, typing `image_columns` (cells or lists of cells) as HF `Image` features."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    columns = list(rows[0])
    fields = []
    for name in columns:
        values = [row[name] for row in rows]
        if name in image_columns:
            is_list = isinstance(values[0], list)
            fields.append(pa.field(name, pa.list_(_IMAGE_TYPE) if is_list else _IMAGE_TYPE))
        else:
            fields.append(pa.field(name, pa.array(values).type))
    features = {f.name: _feature(f.type) for f in fields}
    schema = pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})
    table = pa.Table.from_pylist([dict(row) for row in rows], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a parquet file, or of a `datasets.save_to_disk` folder (its arrow shards), as dicts.

    Image cells stay encoded ({"bytes", "path"}); `decode_image` turns one into a PIL image.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"benchmark data not found: {path}")
    try:
        if path.is_dir():
            shards = sorted(path.glob("*.arrow"))
            if not shards:
                raise ValueError(f"{path} is a folder without .arrow shards (not a save_to_disk dataset)")
            table = pa.concat_tables(pa.ipc.open_stream(pa.memory_map(str(s))).read_all() for s in shards)
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"cannot read table {path}: {err}") from err
    return table.to_pylist()


def decode_image(cell: Mapping[str, Any] | Image.Image, base: Path | None = None) -> Image.Image:
    """Decode an `Image` feature cell (embedded bytes, or a path relative to `base`) into RGB."""
    if isinstance(cell, Image.Image):
        return cell.convert("RGB")
    if cell.get("bytes"):
        return Image.open(io.BytesIO(cell["bytes"])).convert("RGB")
    if cell.get("path"):
        file = Path(cell["path"]) if base is None else base / cell["path"]
        return Image.open(file).convert("RGB")
    raise ValueError("image cell has neither bytes nor a path")
