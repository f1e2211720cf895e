"""The prepared GPU benchmark runs: the same code on the CPU with ``--quick`` (a GPU is lent rarely and briefly, so
the script must work the first time it gets one)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_runs_quick_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--quick", "--device", "cpu", "--no-write",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = result["sampling"]
    assert {(row["model"], row["dtype"], row["solver"]) for row in rows} == {
        (m, d, s) for m in ("digits", "digits-dit") for d in ("float32", "bfloat16") for s in ("dpmpp-2m", "ddpm")}
    assert all(row["sample_s"] > 0 and row["bare_s"] > 0 and row["diffusers_s"] > 0 for row in rows)
    assert result["features"]["images_per_s"] > 0 and result["search"]["images_x_nfe_per_s"] > 0
    assert "| digits-dit | bfloat16 | 8 | ddpm |" in r.stdout
