"""The results database: one SQLite row per evaluation, with every setting that produced it.

Default location ``<cache>/runs.db`` (``~/.cache/samplebench/runs.db``). A row is keyed by ``run_key`` (a hash of
what determines its numbers and of the job folder), so a resumed or repeated job updates its row instead of adding
a duplicate. ``samplebench runs`` lists and filters rows and exports CSV; ``samplebench plot`` draws FID against NFE
and against sampling time per image, one curve per solver.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cache import cache_dir
from .checks import check_out_file
from .errors import UsageError, unknown

__all__ = ["ResultsDB", "default_db", "COLUMNS", "write_csv", "plot_runs", "format_seeds", "parse_seeds"]

COLUMNS = {  # name -> SQLite type; ``versions`` and ``settings`` hold JSON
    "run_key": "TEXT UNIQUE NOT NULL", "created": "TEXT NOT NULL", "model": "TEXT", "solver": "TEXT",
    "time_grid": "TEXT", "nfe": "INTEGER", "seed": "INTEGER", "num_samples": "INTEGER", "fid": "REAL",
    "kid": "REAL", "inception_score": "REAL", "inception_score_std": "REAL", "extractor": "TEXT", "mode": "TEXT",
    "ref": "TEXT", "ref_sha256": "TEXT", "ref_count": "INTEGER", "wall_time_s": "REAL", "eval_time_s": "REAL",
    "num_processes": "INTEGER", "out": "TEXT", "versions": "TEXT", "settings": "TEXT",
    # compute skipping (early exit, caching): what was skipped and the work that ran, next to NFE
    "compute": "TEXT", "block_fraction": "REAL", "flop_fraction": "REAL", "gflops_per_sample": "REAL",
    # uncertainty (``metrics.intervals``): the 95% bootstrap intervals and the seeds they resample
    "fid_low": "REAL", "fid_high": "REAL", "kid_low": "REAL", "kid_high": "REAL", "interval_level": "REAL",
    "interval_resamples": "INTEGER", "seeds": "TEXT",
}
FILTERS = ("model", "solver", "nfe", "extractor", "mode", "ref")


def format_seeds(seeds: Sequence[int]) -> str:
    """Seeds as sorted ranges, "0-1999" or "0-99,500-599,7": exact and short for the usual contiguous runs."""
    values = sorted(int(s) for s in seeds)
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(v) if start == v else f"{start}-{v}")
            start = None
    return ",".join(parts)


def parse_seeds(text: str) -> list[int]:
    """The inverse of ``format_seeds``."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def default_db() -> Path:
    return cache_dir() / "runs.db"


LOCK_WAIT_S = 10.0  # how long a write waits for another process's lock on the database


def _db_error(path: Path, e: sqlite3.DatabaseError) -> UsageError:
    if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
        return UsageError(f"--db {str(path)!r} is locked by another process (waited {LOCK_WAIT_S:g} s); try again "
                          "when it is done, or give another --db")
    if isinstance(e, sqlite3.OperationalError) and "readonly" in str(e):
        return UsageError(f"--db {str(path)!r} is read-only; give a writable file")
    return UsageError(f"--db {str(path)!r} is not a samplebench results database ({e})")


def _db_path(path: str | Path | None) -> Path:
    """The database file: not a folder; an existing one readable, a new one creatable (nothing is created)."""
    p = Path(path or default_db()).expanduser()
    if p.is_dir():
        raise UsageError(f"--db {str(p)!r} is a folder; give a file path")
    if not p.exists():
        check_out_file(p, "--db")
    elif not os.access(p, os.R_OK):
        raise UsageError(f"--db {str(p)!r} is not readable")
    return p


class ResultsDB:
    def __init__(self, path: str | Path | None = None):
        self.path = _db_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=LOCK_WAIT_S)
            cols = ", ".join(f"{k} {v}" for k, v in COLUMNS.items())
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, {cols})")
            have = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
            for k, v in COLUMNS.items():  # a database from an older version gains the new columns
                if k not in have:
                    self.conn.execute(f"ALTER TABLE runs ADD COLUMN {k} {v.replace(' UNIQUE NOT NULL', '')}")
            self.conn.commit()
        except sqlite3.DatabaseError as e:
            raise _db_error(self.path, e) from None

    @staticmethod
    def check(path: str | Path | None = None) -> Path:
        """The database path, checked without creating anything: an existing file must be a results database
        (or an empty file), a new one must be creatable."""
        p = _db_path(path)
        if not p.exists():
            return p
        try:
            conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=LOCK_WAIT_S)
            try:
                conn.execute("PRAGMA schema_version").fetchone()
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            raise _db_error(p, e) from None
        return p

    def add(self, row: dict[str, Any]) -> None:
        """Insert ``row``, replacing an earlier row with the same ``run_key``."""
        values = {k: (json.dumps(row.get(k), sort_keys=True) if k in ("versions", "settings") else row.get(k))
                  for k in COLUMNS}
        names = ", ".join(values)
        try:
            self.conn.execute(f"INSERT OR REPLACE INTO runs ({names}) VALUES ({', '.join('?' * len(values))})",
                              list(values.values()))
            self.conn.commit()
        except sqlite3.DatabaseError as e:
            raise _db_error(self.path, e) from None

    def query(self, **filters: Any) -> list[dict[str, Any]]:
        """Rows matching every given filter (``None`` = any), oldest first."""
        where, args = [], []
        for k, v in filters.items():
            if k not in FILTERS:
                raise unknown("filter", k, FILTERS)
            if v is not None:
                where.append(f"{k} = ?")
                args.append(v)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        try:
            cur = self.conn.execute(sql, args)
        except sqlite3.DatabaseError as e:
            raise _db_error(self.path, e) from None
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def close(self) -> None:
        self.conn.close()


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    fields = ["id", *COLUMNS]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in fields})


def plot_runs(rows: Sequence[dict[str, Any]], out: str | Path, metric: str = "fid") -> Path:
    """FID (or ``metric``) against NFE and against sampling seconds per image, one curve per solver and sample
    count, with the 95% intervals as error bars. Rows must share model, extractor, mode and reference (numbers from
    different harness settings are never mixed); of repeated (solver, count, NFE) rows the newest is drawn."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in ("fid", "kid", "inception_score"):
        raise UsageError(f"unknown metric {metric!r}; valid: fid, kid, inception_score")
    rows = [r for r in rows if r.get(metric) is not None and r.get("nfe") is not None]
    if not rows:
        raise UsageError(f"no runs with {metric} and an NFE match the filters")
    groups = {(r["model"], r["extractor"], r["mode"], r["ref"], r["ref_sha256"]) for r in rows}
    if len(groups) > 1:
        listed = "; ".join(f"model={g[0]} extractor={g[1]} mode={g[2]} ref={g[3]}" for g in sorted(groups))
        raise UsageError(f"the runs mix settings ({listed}); choose one with --model, --features, --mode, --ref")
    latest: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in rows:  # oldest first, so the newest wins
        latest[(r["solver"], r["num_samples"], r["nfe"])] = r
    model, extractor, mode, ref, _ = groups.pop()
    counts = sorted({n for _, n, _ in latest})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    floors, zeros = [], []
    # one curve per (solver, sample count): FIDs of different counts differ by their bias, so they are never joined
    for solver, n in sorted({(s, n) for s, n, _ in latest}, key=lambda k: (str(k[0]), k[1])):
        pts = sorted((r for (s, c, _), r in latest.items() if (s, c) == (solver, n)), key=lambda r: r["nfe"])
        y = np.array([r[metric] for r in pts], float)
        low, high = (np.array([np.nan if r.get(f"{metric}_{k}") is None else r[f"{metric}_{k}"] for r in pts], float)
                     for k in ("low", "high"))
        if metric == "fid":  # on the log axis a lower end at 0 is drawn down to the floor, marked with a caret
            floors.append(low[(low > 0) & np.isfinite(low)].min(initial=y.min()) / 2)
        yerr = np.nan_to_num(np.stack([y - low, high - y]), nan=0.0).clip(0) if metric in ("fid", "kid") else None
        label = str(solver) if len(counts) == 1 else f"{solver} (n={n})"
        nfes = [r["nfe"] for r in pts]
        times = [r["wall_time_s"] / r["num_samples"] * 1000 for r in pts]
        line = axes[0].errorbar(nfes, y, yerr=yerr, fmt="o-", capsize=3, label=label)
        color = line[0].get_color()
        # against time: points only, each labelled with its NFE (times need not rise with NFE, so no joining line)
        axes[1].errorbar(times, y, yerr=yerr, fmt="o", capsize=3, color=color, label=label)
        for t, v, k in zip(times, y, nfes):
            axes[1].annotate(str(k), (t, v), textcoords="offset points", xytext=(4, 3), fontsize=7, color=color)
        zeros.append((nfes, times, y, low, color))
    label = {"fid": f"FID ({extractor}, {mode})", "kid": f"KID ({extractor}, {mode})",
             "inception_score": f"IS ({extractor})"}[metric]
    axes[0].set_xlabel("NFE")
    axes[1].set_xlabel("sampling time per image (ms); points labelled with their NFE")
    for ax in axes:
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if metric == "fid":  # KID and its interval can be negative
            ax.set_yscale("log")
            ax.set_ylim(bottom=min(floors))
    if metric == "fid":  # intervals reaching 0: the bar runs to the floor, a caret says it goes on to 0
        for ax, k in zip(axes, (0, 1)):
            for nfes, times, y, low, color in zeros:
                at = [(x, min(floors)) for x, lo in zip(nfes if k == 0 else times, low) if lo <= 0]
                if at:
                    ax.plot(*zip(*at), "v", color=color, ms=5, clip_on=False)
    axes[0].legend()
    bars = (" (bars: 95% bootstrap intervals; v: reaching 0)" if metric == "fid" else
            " (bars: 95% bootstrap intervals)" if metric == "kid" else "")
    fig.suptitle(f"{model}: {label} vs NFE and time, {'/'.join(map(str, counts))} samples vs {ref}{bars}")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
