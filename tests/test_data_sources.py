"""Caption sources: tar shards (local, file://, memory://), parquet and JSONL read alike; rank and worker
splitting; resuming; bad input skipped and counted, or raised in strict mode."""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mllm.data import shards as shards_module
from mllm.data.images import AugmentConfig, ImageConfig, to_tensor
from mllm.data.shards import BadSampleError, BadSamples, CaptionShards, ShardConfig
from mllm.data.sources import FORMATS
from mllm.data.splitting import Reader, epoch_share, resume_role

N = 12
IMAGE = ImageConfig(size=8)
NO_AUGMENT = AugmentConfig(crop_min_area=1.0, jitter_strength=0.0, grayscale_prob=0.0)


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (20 * i, 255 - 20 * i, 53 * i % 256)).save(buffer, format="PNG")
    return buffer.getvalue()


SAMPLES = [{"key": f"{i:04d}", "png": _png(i), "txt": f"dense caption {i}. it has two sentences {i}.",
            "org_caption": f"alt text {i}"} for i in range(N)]


def _tokenize(text: str) -> torch.Tensor:
    return torch.tensor([ord(c) for c in text])


def _text(ids: torch.Tensor) -> str:
    return "".join(chr(i) for i in ids.tolist())


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _sample_members(s: dict[str, Any]) -> list[tuple[str, bytes]]:
    meta = {"org_caption": s["org_caption"], "re_caption": s["txt"]}
    return [(f"{s['key']}.png", s["png"]), (f"{s['key']}.txt", s["txt"].encode()),
            (f"{s['key']}.json", json.dumps(meta).encode())]


def _write(url: str, payload: bytes) -> None:
    with fsspec.open(url, "wb") as file:
        file.write(payload)


def _write_tars(folder: str, per_shard: int, samples: list[dict[str, Any]] = SAMPLES) -> None:
    for j in range(0, len(samples), per_shard):
        members = [m for s in samples[j:j + per_shard] for m in _sample_members(s)]
        _write(f"{folder}/shard-{j // per_shard:05d}.tar", _tar(members))


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for s in SAMPLES:
        (folder / f"{s['key']}.png").write_bytes(s["png"])


@pytest.fixture
def memory_root(request: pytest.FixtureRequest) -> Any:
    root = f"memory://{re.sub(r'[^A-Za-z0-9_-]', '-', request.node.name)}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _source(kind: str, tmp: Path, memory: str) -> dict[str, Any]:
    """The same twelve samples written as `kind`; returns the ShardConfig fields that read them."""
    if kind.startswith("tar"):
        per_shard = {"tar-6": 2, "tar-1": N}.get(kind, 4)
        if kind == "tar-memory":
            _write_tars(f"{memory}/shards", per_shard)
            return {"shards": f"{memory}/shards/shard-{{00000..00002}}.tar"}
        _write_tars(str(tmp / "shards"), per_shard)
        if kind == "tar-file-url":
            return {"shards": f"file://{tmp}/shards/shard-*.tar"}
        if kind == "tar-brace":
            return {"shards": str(tmp / "shards" / "shard-{00000..00002}.tar")}
        return {"shards": str(tmp / "shards")}
    if kind == "parquet-bytes":  # img2dataset's parquet output: the image bytes in a `jpg` column
        table = pa.table({"key": [s["key"] for s in SAMPLES], "jpg": [s["png"] for s in SAMPLES],
                          "txt": [s["txt"] for s in SAMPLES], "org_caption": [s["org_caption"] for s in SAMPLES],
                          "re_caption": [s["txt"] for s in SAMPLES]})
        pq.write_table(table, tmp / "data.parquet", row_group_size=5)
        return {"shards": str(tmp / "data.parquet"), "format": "parquet"}
    if kind == "parquet-hf":  # `datasets` layout: an Image struct and the sample's JSON as a struct column
        table = pa.table({
            "__key__": [s["key"] for s in SAMPLES],
            "image": [{"bytes": s["png"], "path": None} for s in SAMPLES],
            "txt": [s["txt"] for s in SAMPLES],
            "json": [{"org_caption": s["org_caption"], "re_caption": s["txt"]} for s in SAMPLES],
        })
        pq.write_table(table, tmp / "hf.parquet")
        return {"shards": str(tmp / "hf.parquet"), "format": "parquet"}
    if kind == "parquet-paths":  # image paths under an image root, over two files
        _write_images(tmp / "images")
        for part in range(2):
            rows = SAMPLES[part * 6:(part + 1) * 6]
            pq.write_table(pa.table({"image_path": [f"{s['key']}.png" for s in rows],
                                     "txt": [s["txt"] for s in rows],
                                     "org_caption": [s["org_caption"] for s in rows]}),
                           tmp / f"part-{part}.parquet")
        return {"shards": str(tmp / "part-*.parquet"), "format": "parquet", "image_field": "image_path",
                "image_root": str(tmp / "images")}
    lines = "\n".join(json.dumps({"key": s["key"], "image": f"images/{s['key']}.png", "txt": s["txt"],
                                  "org_caption": s["org_caption"]}) for s in SAMPLES)
    if kind == "jsonl-memory":
        for s in SAMPLES:
            _write(f"{memory}/images/{s['key']}.png", s["png"])
        _write(f"{memory}/data.jsonl", lines.encode())
        return {"shards": f"{memory}/data.jsonl", "format": "jsonl"}
    _write_images(tmp / "images")
    (tmp / "data.jsonl").write_text(lines + "\n\n")
    return {"shards": str(tmp), "format": "jsonl"}


KINDS = ["tar-folder", "tar-brace", "tar-file-url", "tar-memory", "parquet-bytes", "parquet-hf", "parquet-paths",
         "jsonl", "jsonl-memory"]


def _dataset(fields: dict[str, Any], **kwargs: Any) -> CaptionShards:
    options = {"augment": NO_AUGMENT, **{k: fields[k] for k in fields if k in ShardConfig.__dataclass_fields__}}
    train = kwargs.pop("train", False)
    return CaptionShards(ShardConfig(**options), IMAGE, _tokenize, train=train, **kwargs)


# --- every source reads the same samples ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_source_yields_the_same_pairs(kind: str, tmp_path: Path, memory_root: str) -> None:
    fields = _source(kind, tmp_path, memory_root)
    expected_pixels = [to_tensor(Image.open(io.BytesIO(s["png"])), IMAGE) for s in SAMPLES]
    for caption_field, captions in (("txt", [s["txt"] for s in SAMPLES]),
                                    ("json:org_caption", [s["org_caption"] for s in SAMPLES])):
        dataset = _dataset({**fields, "caption_field": caption_field})
        items = list(dataset)
        assert [_text(item["caption_ids"]) for item in items] == captions
        assert all(torch.equal(item["pixel_values"], pixels)
                   for item, pixels in zip(items, expected_pixels, strict=True))
        assert dataset.bad.total == 0


def test_web_caption_and_sentence_come_from_every_source(tmp_path: Path, memory_root: str) -> None:
    for kind in ("tar-folder", "parquet-hf", "jsonl"):
        folder = tmp_path / kind
        folder.mkdir()
        dataset = _dataset(_source(kind, folder, memory_root), text_tokenize=_tokenize)
        item = next(iter(dataset))
        assert _text(item["web_ids"]) == "alt text 0"
        assert _text(item["sentence_ids"]) in ("dense caption 0", "it has two sentences 0")


def test_malformed_caption_field_and_format_are_rejected(tmp_path: Path) -> None:
    fields = _source("tar-folder", tmp_path, "")
    for bad in ("json:", "", "meta:caption"):
        with pytest.raises(ValueError, match="caption field"):
            _dataset({**fields, "caption_field": bad})
    with pytest.raises(ValueError, match="format"):
        _dataset({**fields, "format": "csv"})


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_source_raises_naming_it(fmt: str, tmp_path: Path) -> None:
    for missing in (tmp_path / f"absent-{fmt}.data", tmp_path / "nowhere" / "x-{0..3}.data"):
        with pytest.raises(FileNotFoundError, match=missing.name.split("{")[0]):
            _dataset({"shards": str(missing), "format": fmt})
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "other.txt").write_text("not data")
    with pytest.raises(FileNotFoundError, match="folder"):
        _dataset({"shards": str(tmp_path / "folder"), "format": fmt})


# --- splitting across ranks and workers -----------------------------------------------------------------


def test_epoch_share_splits_files_or_samples() -> None:
    files = [f"f{i}" for i in range(6)]
    shares = [epoch_share(files, 0, 0, False, Reader(r, 2, w, 2)) for r in range(2) for w in range(2)]
    assert [s for s, _ in shares] == [["f0", "f4"], ["f1", "f5"], ["f2"], ["f3"]]
    assert {stride for _, stride in shares} == {1}
    assert epoch_share(files[:3], 0, 0, False, Reader(1, 2, 1, 2)) == (files[:3], 4)
    first, second = (epoch_share(files, epoch, 7, True, Reader(0, 1, 0, 1))[0] for epoch in (0, 1))
    assert sorted(first) == sorted(second) == files and first != second


@pytest.mark.parametrize("kind", ["tar-6", "tar-folder", "parquet-bytes", "jsonl"])
def test_two_ranks_of_two_workers_read_every_sample_once(kind: str, tmp_path: Path) -> None:
    fields = _source(kind, tmp_path, "")
    captions: list[str] = []
    for rank in range(2):
        dataset = _dataset(fields, rank=rank, world_size=2)
        loader = DataLoader(dataset, batch_size=None, num_workers=2)
        captions += [_text(item["caption_ids"]) for item in loader]
    assert sorted(captions) == sorted(s["txt"] for s in SAMPLES)


def test_training_epochs_cover_every_sample_once_and_reshuffle(tmp_path: Path) -> None:
    _write_tars(str(tmp_path), 3)
    fields = {"shards": str(tmp_path)}
    per_epoch = 3  # 4 shards of 3 samples over 4 readers
    epochs: list[list[set[str]]] = [[], []]
    for rank in range(2):
        dataset = _dataset({**fields, "shuffle_buffer": 4}, rank=rank, world_size=2, train=True)
        items = list(itertools.islice(DataLoader(dataset, batch_size=None, num_workers=2), 4 * per_epoch))
        for worker in range(2):
            mine = [_text(item["caption_ids"]) for item in items[worker::2]]  # the DataLoader alternates
            for epoch in range(2):
                epochs[epoch].append(set(mine[epoch * per_epoch:(epoch + 1) * per_epoch]))
    for readers in epochs:
        assert sum(len(r) for r in readers) == 12 and set().union(*readers) == {s["txt"] for s in SAMPLES}
    assert epochs[0] != epochs[1]


def test_training_stream_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    fields = {**_source("tar-6", tmp_path, ""), "shuffle_buffer": 3, "augment": AugmentConfig()}

    def stream(seed: int) -> list[tuple[str, torch.Tensor]]:
        dataset = _dataset(fields, rank=1, world_size=2, train=True, seed=seed)
        return [(_text(i["caption_ids"]), i["pixel_values"]) for i in itertools.islice(dataset, 10)]

    first, again, other = stream(0), stream(0), stream(1)
    assert [c for c, _ in first] == [c for c, _ in again]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, again, strict=True))
    assert [c for c, _ in first] != [c for c, _ in other]


def test_dataset_built_before_the_process_group_refuses_to_stream(tmp_path: Path, monkeypatch) -> None:
    dataset = _dataset(_source("tar-6", tmp_path, ""))
    monkeypatch.setattr(shards_module, "process_group_rank", lambda: (1, 2))
    with pytest.raises(RuntimeError, match="init_process_group"):
        next(iter(dataset))


def _read_as_rank(rank: int, store: str, fields: dict[str, Any], out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        dataset = _dataset(fields)
        captions = [_text(item["caption_ids"]) for item in dataset]
        Path(out).write_text(json.dumps([dataset.rank, dataset.world_size, *captions]))
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_come_from_the_process_group(tmp_path: Path) -> None:
    fields = _source("tar-6", tmp_path, "")
    context = torch.multiprocessing.get_context("fork")
    outs = [tmp_path / f"rank{rank}.json" for rank in range(2)]
    processes = [context.Process(target=_read_as_rank, args=(rank, str(tmp_path / "store"), fields, str(out)))
                 for rank, out in enumerate(outs)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    read = [json.loads(out.read_text()) for out in outs]
    assert [r[:2] for r in read] == [[0, 2], [1, 2]]
    assert sorted(read[0][2:] + read[1][2:]) == sorted(s["txt"] for s in SAMPLES) and read[0][2:] != []


# --- resuming -------------------------------------------------------------------------------------------


def test_resume_role_matches_the_dataloader_round_robin() -> None:
    for workers, done, batch in itertools.product((1, 2, 3), range(8), (1, 4)):
        roles = [resume_role(done * batch, batch, w, workers) for w in range(workers)]
        for k in range(2 * workers):  # resumed batch k comes from worker k % workers
            role, skipped = roles[k % workers]
            original = done + k  # was the (original // workers)-th batch of worker original % workers
            assert role == original % workers
            assert skipped // batch + k // workers == original // workers


def _flatten(batches: list[list[dict[str, torch.Tensor]]]) -> list[tuple[str, torch.Tensor]]:
    return [(_text(item["caption_ids"]), item["pixel_values"]) for batch in batches for item in batch]


@pytest.mark.parametrize(("workers", "batch", "done"), [(0, 1, 5), (2, 3, 5)])
def test_skip_resumes_the_same_stream(tmp_path: Path, workers: int, batch: int, done: int) -> None:
    fields = {**_source("tar-folder", tmp_path, ""), "shuffle_buffer": 3, "augment": AugmentConfig()}

    def batches(dataset: CaptionShards, count: int) -> list[tuple[str, torch.Tensor]]:
        loader = DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=list)
        return _flatten(list(itertools.islice(loader, count)))

    whole = batches(_dataset(fields, rank=1, world_size=2, train=True), done + 6)  # past a few epochs
    resumed = batches(_dataset(fields, rank=1, world_size=2, train=True).skip(done * batch, batch), 6)
    tail = whole[done * batch:]
    assert [c for c, _ in resumed] == [c for c, _ in tail]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(resumed, tail, strict=True))
    with pytest.raises(ValueError, match="whole number of batches"):
        _dataset(fields).skip(5, batch_size=2)


# --- bad input ------------------------------------------------------------------------------------------


def _bad_tar(tmp: Path, memory: str, bad: list[tuple[str, bytes]]) -> dict[str, Any]:
    good = [m for s in SAMPLES[:2] for m in _sample_members(s)]
    (tmp / "shard-00000.tar").write_bytes(_tar(good[:3] + bad + good[3:]))
    return {"shards": str(tmp / "shard-00000.tar")}


def _truncated(tmp: Path, cut: Callable[[bytes], int]) -> dict[str, Any]:
    data = _tar([m for s in SAMPLES[:3] for m in _sample_members(s)])
    (tmp / "shard-00000.tar").write_bytes(data[:cut(data)])
    return {"shards": str(tmp / "shard-00000.tar")}


def _offset(data: bytes, name: str) -> int:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmember(name).offset


def _jsonl(tmp: Path, lines: list[str]) -> dict[str, Any]:
    _write_images(tmp / "images")
    (tmp / "data.jsonl").write_text("\n".join(lines))
    return {"shards": str(tmp / "data.jsonl"), "format": "jsonl"}


def _record(i: int, image: str | None = None) -> str:
    s = SAMPLES[i]
    return json.dumps({"key": s["key"], "image": image or f"images/{s['key']}.png", "txt": s["txt"]})


BAD_CASES: dict[str, tuple[Callable[[Path, str], dict[str, Any]], str, str]] = {
    # name: (writer, kind counted, where the log and the strict error must point)
    "unreadable image": (lambda t, m: _bad_tar(t, m, [("bad.png", b"\x89PNG not really"), ("bad.txt", b"x")]),
                         "unreadable image", "shard-00000.tar:bad"),
    "missing caption": (lambda t, m: _bad_tar(t, m, [("bad.png", SAMPLES[0]["png"])]),
                        "missing caption", "shard-00000.tar:bad"),
    "malformed tar json": (lambda t, m: {**_bad_tar(t, m, [("bad.png", SAMPLES[0]["png"]), ("bad.json", b"{oops")]),
                                         "caption_field": "json:org_caption"},
                           "malformed record", "shard-00000.tar:bad"),
    "truncated tar": (lambda t, m: _truncated(t, lambda d: _offset(d, "0002.png") + 540),
                      "unreadable file", "shard-00000.tar:0002"),
    "tar cut at a block boundary": (lambda t, m: _truncated(t, lambda d: _offset(d, "0002.txt")),
                                    "unreadable file", "shard-00000.tar:0002"),
    "malformed jsonl line": (lambda t, m: _jsonl(t, [_record(0), '{"key": "x", "image": ', _record(1)]),
                             "malformed record", "data.jsonl:line 2"),
    "jsonl line not an object": (lambda t, m: _jsonl(t, [_record(0), "[1, 2]", _record(1)]),
                                 "malformed record", "data.jsonl:line 2"),
    "missing image file": (lambda t, m: _jsonl(t, [_record(0), _record(5, "images/absent.png"), _record(1)]),
                           "missing file", "data.jsonl:0005"),
    "missing remote shard": (lambda t, m: (_write_tars(f"{m}/s", 2, SAMPLES[:2]),
                                           {"shards": f"{m}/s/shard-{{00000..00001}}.tar"})[1],
                             "missing file", "shard-00001.tar"),
    "corrupt parquet": (lambda t, m: (pq.write_table(pa.table({"jpg": [SAMPLES[0]["png"], SAMPLES[1]["png"]],
                                                               "txt": ["a", "b"]}), t / "a.parquet"),
                                      (t / "b.parquet").write_bytes(b"PAR1 garbage PAR1"),
                                      {"shards": str(t / "*.parquet"), "format": "parquet"})[2],
                        "unreadable file", "b.parquet"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_skipped_counted_and_logged(case: str, tmp_path: Path, memory_root: str, caplog) -> None:
    write, kind, where = BAD_CASES[case]
    fields = write(tmp_path, memory_root)
    with caplog.at_level(logging.WARNING, logger="mllm.data.shards"):
        dataset = _dataset(fields)
        items = list(dataset)
    assert len(items) == 2
    assert dataset.bad.counts == {kind: 1}
    assert where in caplog.text


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_raises_in_strict_mode_naming_it(case: str, tmp_path: Path, memory_root: str) -> None:
    write, kind, where = BAD_CASES[case]
    fields = {**write(tmp_path, memory_root), "strict": True}
    with pytest.raises(BadSampleError, match=kind) as info:
        list(_dataset(fields))
    assert where in str(info.value)


def test_workers_skips_add_up_in_the_main_process(tmp_path: Path) -> None:
    samples = [dict(s) for s in SAMPLES]
    samples[1]["png"] = samples[7]["png"] = b"not an image"
    _write_tars(str(tmp_path), 4, samples)
    dataset = _dataset({"shards": str(tmp_path)}, rank=0, world_size=1)
    assert len(list(DataLoader(dataset, batch_size=None, num_workers=2))) == N - 2
    assert dataset.bad.counts == {"unreadable image": 2}


def test_bad_samples_log_the_first_few_then_counts(caplog) -> None:
    bad = BadSamples(strict=False, log_first=2)
    with caplog.at_level(logging.WARNING, logger="mllm.data.shards"):
        for i in range(12):
            bad(f"shard.tar:k{i}", "missing caption", "no text in 'txt'")
    lines = caplog.messages
    assert lines[:2] == [f"skipping bad sample shard.tar:k{i}: missing caption: no text in 'txt'" for i in (0, 1)]
    assert len(lines) == 3 and "skipped 10 bad samples" in lines[2]
    assert bad.total == 12 and bad.counts == {"missing caption": 12}


def test_training_reader_without_samples_stops_with_an_error(tmp_path: Path) -> None:
    _write_tars(str(tmp_path), 1, SAMPLES[:1])
    dataset = _dataset({"shards": str(tmp_path)}, rank=1, world_size=2, train=True)
    with pytest.raises(ValueError, match="no usable sample"):
        next(iter(dataset))

