"""benchmarks/gpu_acceptance.py in its CPU smoke mode (`--device cpu --tiny`): every phase runs, the
summary carries every field the GPU run reports, and the exported image encoder matches PyTorch."""

from __future__ import annotations

import json

from benchmarks import gpu_acceptance


def test_tiny_cpu_run_reports_every_field(tmp_path, capsys):
    out = tmp_path / "summary.json"
    rc = gpu_acceptance.main(["--device", "cpu", "--tiny", "--threads", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    summary = json.loads(out.read_text())
    assert rc == 0, printed
    assert summary["passed"] is True
    assert summary["phases"] == dict.fromkeys(gpu_acceptance.PHASES, "ok")

    assert summary["model"]["image_size"] == 224
    rows = {r["method"]: r for r in summary["finetune"]["rows"]}
    assert set(rows) == {"tecoa", "tga-zsr", "tga-zsr epoch 2+"}
    for row in rows.values():
        assert row["s_per_step"] > 0 and row["images_per_s"] > 0 and row["peak_mem_mb"] > 0
    ratios = summary["finetune"]["ratio_tga_zsr_over_tecoa"]
    assert set(ratios) == {"first_epoch", "later_epochs", "whole_run"} and all(v > 0 for v in ratios.values())

    pgd = summary["pgd_eval"]
    assert pgd["n"] == 8 and pgd["steps"] == 10 and pgd["images_per_s"] > 0 and 0 <= pgd["robust_acc"] <= 1
    onnx = summary["onnx"]
    assert onnx["provider"] == "CPUExecutionProvider"
    assert onnx["parity_ok"] and onnx["max_abs_diff"] <= 1e-4 and onnx["max_abs_diff_vs_device_model"] <= 1e-4

    precision = summary["precision"]
    int8 = precision["int8"]
    assert int8["provider"] == "CPUExecutionProvider" and 0 < int8["parity_1_minus_cos"] <= int8["parity_tolerance"]
    for batch in ("batch_1", "batch_8"):
        assert int8[batch]["fp32_ms"] > 0 and int8[batch]["int8_ms"] > 0 and int8[batch]["speedup"] > 0
    assert precision["fp16"] == {"timed": False, "reason": precision["fp16"]["reason"]} and "CUDA" in precision["fp16"]["reason"]

    for line in (
        "==== clipshield GPU acceptance summary ====",
        "s/step",
        "images/s",
        "TGA-ZSR / TeCoA",
        "PGD-10 eval",
        "ONNX parity",
        "int8 ONNX",
        "fp16          not timed",
        "peak memory",
        "RESULT PASS",
    ):
        assert line in printed


def test_budget_stops_and_still_reports(capsys):
    args = gpu_acceptance.parse_args(["--device", "cpu", "--tiny", "--minutes-budget", "0.0001"])
    summary = gpu_acceptance.run(args, out=lambda _line: None)
    assert summary["passed"] is False
    assert "stopped (minutes budget)" in summary["phases"].values() or "not run" in summary["phases"].values()
    assert "RESULT FAIL" in gpu_acceptance.format_summary(summary)
