"""Write a benchmark's markdown table into its own section of docs/benchmarks.md (other sections are kept)."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEvery table below is written by a script under `bench/`; the command that reproduces it is given with it.\n"


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    procs = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    n = torch.get_num_threads()
    threads = f"{n} torch thread{'s' * (n != 1)}" + (f" in each of {procs} processes" if procs > 1 else "")
    return f"{platform.processor() or platform.machine()}, {threads}, {gpu}, torch {torch.__version__}"


def _block(name: str) -> re.Pattern:
    return re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)


def has_section(name: str) -> bool:
    return DOC.exists() and _block(name).search(DOC.read_text()) is not None


def write_section(name: str, body: str, after: str | None = None) -> None:
    """Replace section ``name`` in place; a new one goes right after section ``after`` (when it exists), else at
    the end."""
    text = DOC.read_text() if DOC.exists() else HEADER
    block = f"<!-- bench:{name} -->\n{body.rstrip()}\n<!-- /bench:{name} -->"
    pattern, anchor = _block(name), _block(after) if after else None
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    elif anchor is not None and (m := anchor.search(text)):
        text = text[:m.end()] + "\n\n" + block + text[m.end():]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fid_cell(row: dict, key: str = "fid", digits: int = 3) -> str:
    """A metric with its 95% interval, "0.123 [0.101, 0.147]" (the bare number for rows without one)."""
    v, lo, hi = row.get(key), row.get(f"{key}_low"), row.get(f"{key}_high")
    if v is None:
        return "-"
    return f"{v:.{digits}f}" + ("" if lo is None or hi is None else f" [{lo:.{digits}f}, {hi:.{digits}f}]")


def diff_cell(d, digits: int = 3) -> str:
    """A paired difference (``metrics.intervals`` result) with its 95% interval, "+0.012 [-0.030, +0.051]"."""
    return f"{d.estimate:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"


def fid_panel(ax, xlabel: str, title: str) -> None:
    """The look of every digits-FID plot: log-scale FID, grid, small legend."""
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("digits-FID")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


BASELINES = DOC.parent / "baselines.json"  # per model and NFE, the strongest full-network setting (fid_vs_nfe.py)


def write_baselines(model: str, entries: dict[int, dict]) -> None:
    """Record ``model``'s strongest setting per NFE (other models' entries are kept)."""
    import json

    data = json.loads(BASELINES.read_text()) if BASELINES.exists() else {}
    data[model] = {str(n): e for n, e in sorted(entries.items())}
    BASELINES.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def baselines(model: str) -> dict[int, dict]:
    """``model``'s strongest full-network setting per NFE from docs/baselines.json (``bench/fid_vs_nfe.py``)."""
    import json

    data = json.loads(BASELINES.read_text()).get(model, {}) if BASELINES.exists() else {}
    if not data:
        raise SystemExit(f"docs/baselines.json has no entry for {model!r}: run python bench/fid_vs_nfe.py --models "
                         f"{model} first (it picks each NFE's strongest solver, grid or S3 on other seeds)")
    return {int(n): e for n, e in data.items()}


ODE = ("dpmpp-3m", 100)  # the converged reference of a network model: 100 NFE on the logSNR grid
ANALYTIC = ("digits-gmm", "gaussian")  # their floor is exact samples instead


def floor_fid(model: str, num: int) -> float:
    """FID of ``num`` exact samples of an analytic model (seeds 0..num-1) against its reference."""
    from samplebench.metrics.extractors import get_extractor
    from samplebench.metrics.reference import get_reference
    from samplebench.metrics.scores import extract, fid, statistics
    from samplebench.models import load_model
    from samplebench.noise import SampleGenerators

    m = load_model(model)
    ext = get_extractor("digits")
    ref = get_reference(model, ext)
    x = m.mixture.sample(SampleGenerators(range(num)))
    mu, sigma = statistics(extract(x.float(), ext).feats)
    return fid(mu, sigma, ref.mu, ref.sigma)
