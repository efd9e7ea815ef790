"""Interoperability: export a saved VLM folder to another ecosystem's format (and read such folders back).

`export(cfg)` dispatches on `cfg.format`. Each format lives in its own module and is imported only when asked
for, so `mllm export --help` stays fast. A model that a format cannot reproduce with equal numerics is refused
with an `ExportError` saying why, never written as a silently different model.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# format -> (module, function(model, tokenizer, out)); modules are imported only when their format is asked for.
FORMATS: dict[str, tuple[str, str]] = {
    "hf-llava": ("mllm.interop.hf_llava", "export_hf_llava"),
    "hf-llava-next": ("mllm.interop.hf_llava_next", "export_hf_llava_next"),
}


class ExportError(ValueError):
    """The model (or a foreign folder) has no equal-numerics counterpart in the target format; says why."""


@dataclass
class ExportConfig:
    """Options of `mllm export`."""

    model: str = "runs/train/instruct/model"  # an mllm model folder
    format: str = "hf-llava"  # a key of FORMATS
    out: str = "runs/export/hf-llava"


def export(cfg: ExportConfig) -> Path:
    """Write `cfg.model` to `cfg.out` in `cfg.format`; returns the output folder."""
    if cfg.format not in FORMATS:
        raise ExportError(f"unknown export format {cfg.format!r}; available: {', '.join(FORMATS)}")
    model_dir, out = Path(cfg.model).resolve(), Path(cfg.out).resolve()
    if out == model_dir:
        raise ExportError(f"the export folder must differ from the model folder {model_dir}")
    from mllm.vlm import VisionLanguageModel

    module, function = FORMATS[cfg.format]
    exporter = getattr(importlib.import_module(module), function)
    model, tokenizer = VisionLanguageModel.from_pretrained(model_dir)
    exporter(model.eval(), tokenizer, out)
    log.info("exported %s as %s to %s", model_dir, cfg.format, out)
    return out
