"""Solver schedules of the Unified Sampling Framework (USF; Liu et al., ICLR 2024, Sec. 3): every per-step decision
as plain, validated, JSON-serialisable data.

Step i goes from ``timesteps[i]`` to ``timesteps[i + 1]``. History positions are negative indices into the points
evaluated so far (-1 = the newest). A step expands, in the step's prediction type, from its ``start_point`` to
Taylor ``order`` k; derivative n (n = 1..k-1) is estimated from the differences to its ``active_points`` (Sec. 3.2,
"Difference_K"); the first derivative may be relaxed, and a higher one halved (``half``: the weight DPM-Solver++(3M)
puts on its second-derivative term, Lu et al. 2022b, App. B). A ``pseudo`` corrector evaluates the model at the new
point (the evaluation the next step needs anyway) and recomputes the step from its own ``start_point`` (-2, the step's
start once the new point is added, by default; the official search code starts one point before the predictor's)
to its own order with the new point available; ``implicit`` then re-evaluates the model at the corrected point
(+1 NFE). A corrector on the last step costs the evaluation at its end point (+1 NFE; an implicit one re-evaluates
nothing after it). ``afs`` replaces the first evaluation analytically:
- ``zero``: x0_pred = 0, eps = x_T / sigma_T, USF's definition ("assume x0 ~ 0", Liu et al. 2024, Sec. 3.3) with a
  consistent eps (the default);
- ``zero-official``: the official code's ``zero_x0`` (thu-nics/USF ``uni_sampler.py``): eps = x_T / sigma_T for noise
  prediction but x0_pred = (1 - sigma_T) x_T / alpha_T (the x0 of eps = x_T) for data prediction; it differs from
  ``zero`` by (1 - sigma_T) / alpha_T x_T, a few thousandths of x_T at the usual T;
- ``mean``: x0_pred = the mean training image.
NFE = steps - [afs != none] + implicit correctors before the last step + [the last step has a corrector].

``model_times`` (optional, one per timestep) decouples the time the network is evaluated at from the time the
solver's coefficients use: the evaluation at ``timesteps[i]`` feeds the network ``model_times[i]`` (LD3's learned
input times t~_i, Tong et al., ICLR 2025, Sec. 3.2), so a schedule expresses an LD3 grid exactly. Without it the
network sees the timesteps themselves.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError, unknown_text

__all__ = ["Derivative", "Corrector", "Step", "SolverSchedule", "PREDICTIONS", "RELAXATIONS", "CORRECTORS",
           "AFS_KINDS", "FORMAT", "MAX_ORDER", "MAX_CORRECTOR_ORDER"]

PREDICTIONS = ("noise", "data")
RELAXATIONS = ("none", "linear", "dpmsolver-2", "unipc-bh1", "unipc-bh2", "0.5exp", "-0.5exp", "half")
HIGHER_RELAXATIONS = ("none", "half")  # the only ones a derivative of order >= 2 takes
CORRECTORS = ("none", "pseudo", "implicit")
AFS_KINDS = ("none", "zero", "zero-official", "mean")
MAX_ORDER = 4  # of a step's Taylor expansion: the official search's largest
MAX_CORRECTOR_ORDER = MAX_ORDER + 1  # the official search corrects a step to one order more
FORMAT = "samplebench.usf/1"


@dataclass(frozen=True)
class Derivative:
    """Estimate of one derivative from the differences to ``active_points`` (K = len: exact for degree <= K)."""

    active_points: tuple[int, ...]
    relaxation: str = "none"  # applied to the first derivative only
    coefficient: float = 0.0  # c of the "linear" relaxation, 1 + c h


@dataclass(frozen=True)
class Corrector:
    kind: str = "none"
    order: int = 0  # Taylor order of the corrected update (0 with kind "none")
    derivatives: tuple[Derivative, ...] = ()
    start_point: int = -2  # where the corrected update starts, once the new point is -1


@dataclass(frozen=True)
class Step:
    prediction: str = "data"
    order: int = 1
    derivatives: tuple[Derivative, ...] = ()  # order - 1 entries
    start_point: int = -1
    corrector: Corrector = field(default_factory=Corrector)


MAX_FILE_BYTES = 1 << 20  # a schedule file of more is refused unread


def _fail(where: str, message: str) -> None:
    raise UsageError(f"invalid solver schedule: {where}: {message}")


def _check_derivatives(where: str, order: int, derivatives: tuple[Derivative, ...], start: int, available: int):
    if len(derivatives) != order - 1:
        _fail(where, f"order {order} needs {order - 1} derivative estimates, got {len(derivatives)}")
    for n, d in enumerate(derivatives, 1):
        w = f"{where} derivative {n}"
        if len(d.active_points) < n:
            _fail(w, f"estimating derivative {n} needs at least {n} active points, got {len(d.active_points)}")
        if len(set(d.active_points)) != len(d.active_points):
            _fail(w, f"active points repeat: {list(d.active_points)}")
        for p in d.active_points:
            if p >= 0 or -p > available:
                _fail(w, f"active point {p} is not in the history (positions -1..-{available})")
            if p == start:
                _fail(w, f"active point {p} is the start point")
        if not math.isfinite(d.coefficient):
            _fail(w, f"coefficient {d.coefficient} is not finite")
        if d.relaxation not in RELAXATIONS:
            _fail(w, unknown_text("relaxation", d.relaxation, RELAXATIONS))
        if n > 1 and d.relaxation not in HIGHER_RELAXATIONS:
            _fail(w, f"derivative {n} takes relaxation {' or '.join(map(repr, HIGHER_RELAXATIONS))} only, got "
                     f"{d.relaxation!r}")


@dataclass(frozen=True)
class SolverSchedule:
    """A USF solver schedule: ``len(timesteps) - 1`` steps, strictly decreasing times."""

    timesteps: tuple[float, ...]
    steps: tuple[Step, ...]
    afs: str = "none"
    skip_coefficients: tuple[float, ...] | None = None  # Skip-Tuning: one per UNet skip, outermost first
    model_times: tuple[float, ...] | None = None  # the network's input time at each timestep (LD3's t~_i)

    def __post_init__(self) -> None:
        ts = self.timesteps
        if len(ts) < 2 or len(self.steps) != len(ts) - 1:
            _fail("timesteps", f"{len(ts)} timesteps need {max(len(ts) - 1, 1)} steps, got {len(self.steps)}")
        for i, t in enumerate(ts):
            if not math.isfinite(t):
                _fail(f"timesteps[{i}]", f"{t} is not a finite time")
        for i in range(len(ts) - 1):
            if not ts[i + 1] < ts[i]:
                _fail(f"timesteps[{i + 1}]", f"{ts[i + 1]} is not below timesteps[{i}] = {ts[i]}")
        if ts[-1] <= 0:
            _fail(f"timesteps[{len(ts) - 1}]", f"the last time must be > 0, got {ts[-1]}")
        mt = self.model_times
        if mt is not None:
            if len(mt) != len(ts):
                _fail("model_times", f"one per timestep: {len(ts)} expected, got {len(mt)}")
            for i, t in enumerate(mt):
                if not (math.isfinite(t) and t > 0):
                    _fail(f"model_times[{i}]", f"{t} is not a finite time > 0")
                if i and not t < mt[i - 1]:
                    _fail(f"model_times[{i}]", f"{t} is not below model_times[{i - 1}] = {mt[i - 1]}")
        if self.afs not in AFS_KINDS:
            _fail("afs", unknown_text("kind", self.afs, AFS_KINDS))
        if self.skip_coefficients is not None and not all(0 <= c < math.inf for c in self.skip_coefficients):
            _fail("skip_coefficients", f"must be >= 0, got {list(self.skip_coefficients)}")
        for i, st in enumerate(self.steps):
            where = f"step {i}"
            available = i + 1  # points t_0..t_i
            if st.prediction not in PREDICTIONS:
                _fail(where, unknown_text("prediction", st.prediction, PREDICTIONS))
            if not 1 <= st.order <= min(MAX_ORDER, available):
                _fail(where, f"order {st.order} is above the available history ({available} point"
                             f"{'s' if available > 1 else ''}; at most {min(MAX_ORDER, available)})"
                      if st.order > 1 else f"order must be >= 1, got {st.order}")
            if st.start_point >= 0 or -st.start_point > available:
                _fail(where, f"start point {st.start_point} is not in the history (positions -1..-{available})")
            _check_derivatives(where, st.order, st.derivatives, st.start_point, available)
            c = st.corrector
            if c.kind not in CORRECTORS:
                _fail(f"{where} corrector", unknown_text("kind", c.kind, CORRECTORS))
            if c.kind == "none":
                if c.order or c.derivatives or c.start_point != -2:
                    _fail(f"{where} corrector", "kind 'none' takes no order, derivatives or start point")
                continue
            if not 1 <= c.order <= min(MAX_CORRECTOR_ORDER, available + 1):
                _fail(f"{where} corrector", f"order {c.order} is above the available history "
                                            f"(at most {min(MAX_CORRECTOR_ORDER, available + 1)})"
                      if c.order > 1 else f"order must be >= 1, got {c.order}")
            if not -(available + 1) <= c.start_point <= -2:
                _fail(f"{where} corrector", f"start point {c.start_point} is not an earlier point of the history "
                                            f"(positions -2..-{available + 1}; -1 is the point it corrects)")
            _check_derivatives(f"{where} corrector", c.order, c.derivatives, c.start_point, available + 1)

    @property
    def network_times(self) -> tuple[float, ...]:
        """The time the network sees at each timestep: ``model_times``, else the timesteps."""
        return self.timesteps if self.model_times is None else self.model_times

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def nfe(self) -> int:
        """Network evaluations per sample, every one counted: one per step but the first with an AFS, one more per
        implicit correction before the last step, one for a corrector on the last step (the official ``get_nfe``
        counts implicit ones wherever they are and misses the last step's)."""
        *inner, final = self.steps
        implicit = sum(s.corrector.kind == "implicit" for s in inner)
        return self.num_steps - (self.afs != "none") + implicit + (final.corrector.kind != "none")

    # --- JSON ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = _lists(asdict(self))
        for step in d["steps"]:  # the default corrector start is implied, so older files read the same
            if step["corrector"]["start_point"] == -2:
                del step["corrector"]["start_point"]
        if d["model_times"] is None:  # absent unless given, so schedules without it read (and hash) as before
            del d["model_times"]
        return {"format": FORMAT, **d}

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SolverSchedule":
        if not isinstance(d, dict):
            _fail("file", "expected a JSON object")
        if "orders" in d and "steps" not in d:  # the official USF decisions dict (thu-nics/USF, ``official.py``)
            from . import official

            d = official.from_official(d)
        if d.get("format", FORMAT) != FORMAT:
            _fail("format", f"{d.get('format')!r} is not {FORMAT!r}")
        unknown = set(d) - {"format", "timesteps", "steps", "afs", "skip_coefficients", "model_times"}
        if unknown:
            _fail("file", f"unknown fields {sorted(unknown)}")
        steps = []
        for i, st in enumerate(d.get("steps") or ()):
            try:
                steps.append(_step(st))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                _fail(f"step {i}", f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e))
        try:
            skip, mt = d.get("skip_coefficients"), d.get("model_times")
            return cls(tuple(float(t) for t in d["timesteps"]), tuple(steps), d.get("afs", "none"),
                       None if skip is None else tuple(float(c) for c in skip),
                       None if mt is None else tuple(float(t) for t in mt))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, UsageError):
                raise
            _fail("file", f"malformed ({type(e).__name__}: {e})")

    @classmethod
    def from_json(cls, text: str) -> "SolverSchedule":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            _fail("file", f"not JSON ({e})")
        except RecursionError:
            _fail("file", "nested too deeply to be a schedule")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "SolverSchedule":
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"solver schedule {str(p)!r} " + ("is not a file" if p.exists() else "does not exist"))
        if p.stat().st_size > MAX_FILE_BYTES:
            raise UsageError(f"solver schedule {str(p)!r} is {p.stat().st_size} bytes; a schedule is JSON of at most "
                             f"{MAX_FILE_BYTES} bytes")
        if p.suffix == ".pth":  # an official USF schedule file
            from . import official

            return cls.from_dict(official.read_official(p))
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"solver schedule {str(p)!r} is not a text file (a USF schedule is JSON, as "
                             "'samplebench search' writes)") from None
        except OSError as e:
            raise UsageError(f"solver schedule {str(p)!r} cannot be read ({e.strerror})") from None
        return cls.from_json(text)


def _lists(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_lists(x) for x in v]
    return v


_STEP_KEYS = {"prediction", "order", "derivatives", "start_point", "corrector"}


def _derivative(d: dict[str, Any]) -> Derivative:
    unknown = set(d) - {"active_points", "relaxation", "coefficient"}
    if unknown:
        raise ValueError(f"unknown derivative fields {sorted(unknown)}")
    return Derivative(tuple(int(p) for p in d["active_points"]), d.get("relaxation", "none"),
                      float(d.get("coefficient", 0.0)))


def _step(d: dict[str, Any]) -> Step:
    unknown = set(d) - _STEP_KEYS
    if unknown:
        raise ValueError(f"unknown step fields {sorted(unknown)}")
    c = d.get("corrector") or {}
    unknown = set(c) - {"kind", "order", "derivatives", "start_point"}
    if unknown:
        raise ValueError(f"unknown corrector fields {sorted(unknown)}")
    corrector = Corrector(c.get("kind", "none"), int(c.get("order", 0)),
                          tuple(_derivative(x) for x in c.get("derivatives", ())), int(c.get("start_point", -2)))
    return Step(d.get("prediction", "data"), int(d.get("order", 1)),
                tuple(_derivative(x) for x in d.get("derivatives", ())), int(d.get("start_point", -1)), corrector)
