"""benchmarks/diagnose_tga.py (a 3-step diagnosed run) and its report (docs/methods.md §3.3)."""

from __future__ import annotations

from benchmarks import diagnose_tga, diagnose_tga_report


def test_diagnosed_run_and_report(tmp_path, capsys):
    out = tmp_path / "diag"
    argv = ["--seeds", "0", "--steps", "3", "--every", "2", "--eval-limit", "8", "--threads", "1", "--output", str(out)]
    assert diagnose_tga.main([*argv, "--param", "minmax_eps=0.01"]) == 0
    rows = diagnose_tga_report.read_csv(out / "seed0" / "diagnostics.csv")
    assert [int(float(r["step"])) for r in rows] == [0, 2]
    assert float(rows[0]["grad_ce"]) > 0 and float(rows[0]["grad_ar_weighted"]) > 0
    assert diagnose_tga.method_params(["minmax_eps=0.01", "distance=rms"]) == {"minmax_eps": 0.01, "distance": "rms"}
    capsys.readouterr()
    assert diagnose_tga_report.main([str(out), "--timeline", "0"]) == 0
    printed = capsys.readouterr().out
    run_line = next(line for line in printed.splitlines() if line.startswith("| diag | 0 |"))
    assert "-" not in run_line.split("|")[3], "the seen clean accuracy comes from the model card"
    assert "| diag | clean_frozen | 64 |" in printed  # 2 probed steps x batch 32
    assert printed.strip().splitlines()[-1].startswith("| 2 |")
