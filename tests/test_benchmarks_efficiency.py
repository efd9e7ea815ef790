"""`benchmarks/encoder_efficiency.py` at a tiny size: the ratios it reports, and CoCa skipped with a reason
when open_clip is absent."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Pico ViT at 32 px with a short caption and vocabulary: about as little as the script can build.
TINY = ["--vit", "Pico/16", "--resolution", "32", "--decoder", "Pico", "--batch", "2", "--warmup", "1",
        "--steps", "1", "--caption-len", "16", "--text-len", "8", "--vocab-size", "512"]
RATIOS = ("ov2_vs_ov1_speedup", "ov2_vs_ov1_memory_ratio", "ov2_vs_coca_speedup", "ov2_vs_coca_memory_ratio")


@pytest.fixture
def efficiency(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # The benchmark scripts import their sibling `report` module, as they do when run from the shell.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("encoder_efficiency")


def test_tiny_run_reports_ratios_and_skips_coca_without_open_clip(efficiency: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "efficiency.json"
    result = efficiency.main([*TINY, "--json", str(out)])

    assert json.loads(out.read_text()) == result
    assert result["date"] and result["machine"]
    assert result["paper_goal"]["ov2_vs_ov1_speedup"] == 1.5
    assert result["paper_goal"]["ov2_vs_ov1_memory_ratio"] == 1.8
    assert set(RATIOS) <= result.keys()
    for name in ("ov2", "ov1"):
        model = result["models"][name]
        for key in ("ms_per_step", "images_per_s", "peak_memory_mib", "gflops_per_image"):
            assert model[key] > 0, (name, key)
        assert model["mfu"] is None  # CPU
    # OpenVision runs a text tower and decodes from every visual token: more work per image.
    assert result["models"]["ov1"]["gflops_per_image"] > result["models"]["ov2"]["gflops_per_image"]

    coca_ratios = [result[key] for key in RATIOS if "coca" in key]
    if importlib.util.find_spec("open_clip") is None:
        assert result["models"]["coca"] is None
        assert coca_ratios == [None, None]
        assert "open_clip is not installed" in result["skipped"]["coca"]
        measured = [key for key in RATIOS if "ov1" in key]
    else:
        measured = list(RATIOS)
    for key in measured:
        assert isinstance(result[key], float) and result[key] > 0, key


def test_adamw_settings_are_those_of_mllm_pretrain(efficiency: ModuleType) -> None:
    from mllm.train_stages.pretrain_config import OptimConfig

    optim = OptimConfig()
    assert efficiency.ADAMW_BETAS == tuple(optim.betas)
    assert (efficiency.ADAMW_EPS, efficiency.WEIGHT_DECAY) == (optim.eps, optim.weight_decay)


@pytest.mark.parametrize(
    ("gpu", "tflops"),
    [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
     ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla T4", None)],
)
def test_peak_flops_table_reads_cuda_device_names(efficiency: ModuleType, gpu: str, tflops: float | None) -> None:
    assert efficiency.peak_bf16_tflops(gpu) == tflops
