"""Solver schedules in the official USF format (thu-nics/USF, ``uni_sampler.py``): the ``decisions`` dict that its
``UniSampler.sample`` reads and its ``solver_schedules/*.pth`` files store, made into a ``SolverSchedule``.

The dict holds per-step lists: ``orders``, ``prediction_types`` (``noise_prediction``, ``data_prediction``,
``dpmsolver_v3_prediction``), ``start_points``, ``derivative_types`` (per derivative: ``estimate`` "Difference_K",
``active_points``, ``relaxation``, ``relaxation_coefficient``), ``corrector_types`` (``type``, ``start_point``,
``taylor_order``, ``derivative_type``), and ``timesteps``, ``afs`` (``no_afs``, ``zero_x0``, ``average_x0``),
``skip_coefficients``. Each maps to the same decision here, computed by the same arithmetic:

- missing ``active_points`` are chosen as the official ``get_diff_derivative`` chooses them (the points after the
  start, then those before it);
- only the first derivative is relaxed (the official code ignores the others' relaxation);
- ``zero_x0`` is ``zero-official`` (``schedule.py``), its own convention;
- ``implicit`` re-evaluates the model at the corrected point, as USF defines it (Sec. 3.3) and as the official
  ``get_nfe`` counts it; the official sampler's test ``corrector_type == "implicit"`` compares the corrector's dict
  with a string, so it never makes that evaluation;
- timesteps are taken as the model's own time (the official EDM schedules are in EDM sigma, 80 -> 0.002).

DPM-Solver-v3 steps are refused: they need the model's empirical model statistics (EMS), which samplebench does not
compute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UsageError, describe, unknown_text
__all__ = ["from_official", "read_official", "is_official"]

PREDICTIONS = {"noise_prediction": "noise", "data_prediction": "data"}
AFS = {"no_afs": "none", "zero_x0": "zero-official", "average_x0": "mean"}
# of the official update's first derivative: schedule.RELAXATIONS but "half" (a samplebench-only kind)
RELAXATIONS = ("none", "linear", "dpmsolver-2", "unipc-bh1", "unipc-bh2", "0.5exp", "-0.5exp")


def _fail(where: str, message: str):
    raise UsageError(f"official USF schedule: {where}: {message}")


def is_official(d: Any) -> bool:
    """Whether ``d`` is an official decisions dict (per-step lists under ``orders``) rather than samplebench's."""
    return isinstance(d, dict) and "orders" in d and "steps" not in d


def _floats(v: Any) -> list[float]:
    return [float(x) for x in (v.tolist() if hasattr(v, "tolist") else v)]


def _active_points(d: dict, n_terms: int, start: int, available: int, where: str) -> tuple[int, ...]:
    """The derivative's active points, or the official default choice: after the start up to -1, then before it."""
    try:
        k = int(str(d.get("estimate", f"Difference_{n_terms}")).split("_")[1])
    except (IndexError, ValueError):
        _fail(where, f"estimate {d.get('estimate')!r} is not 'Difference_K'")
    points = d.get("active_points")
    if points is None:
        points = [p for p in range(start + 1, 0)][:k]
        left = start - 1
        while len(points) < k and left >= -available:
            points.append(left)
            left -= 1
    points = tuple(int(p) for p in points)
    if len(points) != k:
        _fail(where, f"estimate Difference_{k} needs {k} active points, got {list(points)}")
    return points


def _derivatives(types: Any, order: int, start: int, available: int, where: str) -> list[dict[str, Any]]:
    if order == 1:
        return []
    if not isinstance(types, (list, tuple)) or len(types) < order - 1:
        _fail(where, f"order {order} needs {order - 1} derivative types, got {types!r}")
    out = []
    for n, d in enumerate(types[:order - 1], 1):
        w = f"{where} derivative {n}"
        if not isinstance(d, dict):
            _fail(w, f"expected a dict, got {d!r}")
        relaxation, coefficient = "none", 0.0
        if n == 1:  # the official update relaxes the first derivative only
            relaxation = d.get("relaxation") or "none"
            relaxation = "none" if relaxation == "no_relaxation" else relaxation
            if relaxation not in RELAXATIONS:
                _fail(w, f"unknown relaxation {relaxation!r}")
            coefficient = float(d.get("relaxation_coefficient", 0.0)) if relaxation == "linear" else 0.0
        out.append({"active_points": list(_active_points(d, n, start, available, w)), "relaxation": relaxation,
                    "coefficient": coefficient})
    return out


def from_official(decisions: dict) -> dict[str, Any]:
    """An official decisions dict (``UniSampler.sample``'s ``decisions``) as samplebench's schedule dict, which
    ``SolverSchedule.from_dict`` reads (and checks)."""
    if not is_official(decisions):
        _fail("file", "expected the official decisions dict (with 'orders', 'prediction_types', ...)")
    try:
        timesteps = _floats(decisions["timesteps"])
        orders = [int(k) for k in decisions["orders"]]
    except (KeyError, TypeError, ValueError) as e:
        _fail("file", f"malformed timesteps or orders ({describe(e)})")
    m = len(orders)
    if len(timesteps) != m + 1:
        _fail("timesteps", f"{len(timesteps)} timesteps for {m} steps (need {m + 1})")
    lists = {}
    for key, default in (("prediction_types", "noise_prediction"), ("start_points", -1),
                         ("derivative_types", None), ("corrector_types", None)):
        value = decisions.get(key)
        lists[key] = [default] * m if value is None else list(value)
        if len(lists[key]) != m:
            _fail(key, f"{len(lists[key])} entries for {m} steps")
    steps = []
    for i in range(m):
        where, available = f"step {i}", i + 1
        kind = lists["prediction_types"][i]
        if kind == "dpmsolver_v3_prediction":
            _fail(where, "a DPM-Solver-v3 prediction needs the model's empirical model statistics (EMS), which "
                         "samplebench does not have; this schedule cannot be run here")
        if kind not in PREDICTIONS:
            _fail(where, unknown_text("prediction type", kind, PREDICTIONS))
        start = int(lists["start_points"][i])
        derivatives = _derivatives(lists["derivative_types"][i], orders[i], start, available, where)
        c = lists["corrector_types"][i] or {"type": "no_corrector"}
        ckind = c.get("type", "no_corrector") if isinstance(c, dict) else c
        if ckind in ("no_corrector", None):
            corrector = {"kind": "none", "order": 0, "derivatives": []}
        elif ckind in ("pseudo", "implicit") and isinstance(c, dict):
            cstart, corder = int(c.get("start_point", start - 1)), int(c.get("taylor_order", orders[i] + 1))
            corrector = {"kind": ckind, "order": corder, "start_point": cstart,
                         "derivatives": _derivatives(c.get("derivative_type"), corder, cstart, available + 1,
                                                     f"{where} corrector")}
        else:
            _fail(f"{where} corrector", f"unknown corrector {c!r}; valid types: no_corrector, pseudo, implicit")
        steps.append({"prediction": PREDICTIONS[kind], "order": orders[i], "derivatives": derivatives,
                      "start_point": start, "corrector": corrector})
    afs = decisions.get("afs", "no_afs")
    if afs not in AFS:
        _fail("afs", f"unknown {afs!r}; valid: {', '.join(AFS)}")
    skip = decisions.get("skip_coefficients")
    skip = None if skip is None else _floats(skip)
    if skip is not None and all(c == 1.0 for c in skip):
        skip = None  # all ones scale nothing (the official files carry them so)
    return {"timesteps": timesteps, "steps": steps, "afs": AFS[afs], "skip_coefficients": skip}


def read_official(path: str | Path) -> dict[str, Any]:
    """An official schedule file as samplebench's schedule dict: a ``.pth`` (read with
    ``torch.load(weights_only=True)``: tensors, lists, dicts, no code) or the same dict as JSON."""
    p = Path(path)
    try:
        if p.suffix == ".pth":
            import torch

            decisions = torch.load(p, map_location="cpu", weights_only=True)
        else:
            decisions = json.loads(p.read_text())
    except Exception as e:  # pickle, zip and JSON errors alike
        raise UsageError(f"official USF schedule {str(p)!r} cannot be read ({describe(e)})") from None
    return from_official(decisions)
