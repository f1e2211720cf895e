"""Generate samples from a model with a registered sampler at an exact NFE, honouring the seeding contract.

``sample`` is the library call (tensors in, tensors out); ``run_sample`` is the ``sample`` command: it validates
everything first, then writes one PNG per image (generation settings in a PNG text chunk), a labelled grid, a JSON
summary and optionally the raw arrays.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .checks import MAX_SAMPLES, check_count, check_seeds
from .errors import UsageError
from .files import GRID_MARKER, earlier_run
from .loop import SampleResult, sample, skip_coefficients, skips_applied, to_uint8
from .models import DiffusionModel
from .plan import ORDER, S3, RunSpec, check_solver_nfe, command_line, load_models, load_schedule, plan, \
    resolve_solver, run_settings, run_title, solver_grid
from .samplers import StepInfo

__all__ = ["SampleConfig", "SampleResult", "sample", "solver_grid", "resolve_solver", "load_schedule",
           "check_solver_nfe", "skip_coefficients", "skips_applied", "run_sample", "write_samples", "to_uint8",
           "command_line", "a1111_parameters", "S3"]


@dataclass(frozen=True)
class SampleConfig(RunSpec):
    """A ``sample`` run: its ``RunSpec`` and the seeds, batch and output. Image i depends only on the spec and
    its seed (``seeds[i]``, else ``seed + i``)."""

    num: int = 16
    seed: int = 0
    batch_size: int = 64
    device: str = "cpu"
    save_npz: bool = False
    seeds: tuple[int, ...] | None = None  # explicit seeds (then ``num`` is their count and ``seed`` the first)

    def __post_init__(self) -> None:
        if self.seeds is not None:
            seeds = tuple(check_seeds(s, 1) for s in self.seeds)
            if not seeds or len(set(seeds)) != len(seeds):
                raise UsageError(f"--seeds must be distinct seeds, at least one, got {list(self.seeds)[:10]}")
            object.__setattr__(self, "seeds", seeds)
            object.__setattr__(self, "num", len(seeds))
            object.__setattr__(self, "seed", seeds[0])
        check_count("--num", self.num, 1, MAX_SAMPLES)  # held in memory; ``eval`` writes larger runs in shards
        check_count("--batch-size", self.batch_size, 1)
        check_seeds(self.seed, self.num)
        super().__post_init__()

    def seed_list(self) -> list[int]:
        """Image i's seed: ``seeds[i]``, else ``seed + i``."""
        return list(self.seeds) if self.seeds is not None else list(range(self.seed, self.seed + self.num))

    def command(self, **override: Any) -> str:
        """The ``samplebench sample`` command that draws these images (``override``: e.g. seed=s, num=1 for one
        image); options at their defaults, and those that change no image (batch size, output), are left out."""
        explicit = self.seeds is not None and "seed" not in override
        skip = ("batch_size", "save_npz") + (("seed", "num") if explicit else ("seeds",))
        return command_line(self, SampleConfig(), skip=skip, order=ORDER, **override)


GRID_IMAGES = 256  # images shown in grid.png (every image has its own PNG)


def a1111_parameters(meta: dict[str, Any], shape: tuple[int, ...]) -> str:
    """The generation settings as the ``parameters`` PNG text chunk that AUTOMATIC1111-style tools read: the prompt,
    then "Steps: ..., Sampler: ..., CFG scale: ..., Seed: ..., Size: WxH, Model: ..." (NFE stands for steps)."""
    fields = {"Steps": meta.get("nfe", meta.get("nfe_per_rollout")), "Sampler": meta.get("solver"),
              "CFG scale": meta.get("guidance_scale"), "Seed": meta.get("seed"), "Size": f"{shape[1]}x{shape[0]}",
              "Model": meta.get("model"), "Class": meta.get("class_label"), "Version": f"samplebench {__version__}"}
    text = ", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None)
    return f"{meta.get('prompt') or ''}\n{text}"


def _png(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def contact_sheet(arrays: Sequence[np.ndarray], columns: int, min_side: int = 64,
                  labels: Sequence[str] | None = None, gap: int = 2, label_h: int = 12):
    """uint8 [H, W, C] images as one PIL sheet laid out by ``torchvision.utils.make_grid`` (white gaps), each
    nearest-neighbour upscaled to at least ``min_side`` pixels, with its label (e.g. its seed) below when given."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    h, w = arrays[0].shape[:2]
    scale = max(1, -(-min_side // max(h, w)))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    x = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    room = label_h if labels else 0
    x = torch.nn.functional.pad(x, (0, 0, 0, room), value=1.0)  # white space for the label under each image
    cols = min(columns, len(arrays))
    grid = make_grid(x, nrow=cols, padding=gap, pad_value=1.0)
    sheet = Image.fromarray((grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()).convert("RGB")
    if labels:
        draw = ImageDraw.Draw(sheet)
        for k, label in enumerate(labels):
            r, c = divmod(k, cols)
            draw.text((gap + c * (w * scale + gap) + 1, gap + r * (h * scale + room + gap) + h * scale),
                      str(label)[:16], fill="black")
    return sheet


def _grid_image(arrays: np.ndarray, labels: list[str], title: str):
    """grid.png: a titled contact sheet of the first images, 8 per row, each labelled."""
    from PIL import Image, ImageDraw

    body = contact_sheet(list(arrays), 8, labels=labels, gap=4, label_h=14)
    draw = ImageDraw.Draw(body)
    lines = [line.replace(" · ", "  |  ") for line in _wrap(title, max(body.width - 8, 200), draw)]  # never cut off
    width = max(body.width, 8 + max(int(draw.textlength(line)) for line in lines))
    sheet = Image.new("RGB", (width, body.height + 6 + 14 * len(lines)), "white")
    for k, line in enumerate(lines):
        ImageDraw.Draw(sheet).text((4, 3 + 14 * k), line, fill="black")
    sheet.paste(body, (0, 6 + 14 * len(lines)))
    return sheet


def _wrap(text: str, width: int, draw) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, broken after its " · " separators."""
    lines, line = [], ""
    for part in text.split(" · "):
        joined = f"{line} · {part}" if line else part
        if line and draw.textlength(joined.replace(" · ", "  |  ")) > width:
            lines.append(line)
            joined = part
        line = joined
    return lines + [line]


def run_sample(config: SampleConfig, out: str | Path, *, progress: bool = True, model: DiffusionModel | None = None,
               on_progress: Callable[[int, int], None] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """The ``sample`` command. Every input is validated before anything is printed or written (files are
    written only after sampling succeeded); returns the JSON summary. ``model``: ``config.model`` already loaded;
    ``on_progress(steps done, steps in all)`` after every solver step (an exception it raises stops the run with
    nothing written). A non-empty ``out`` is refused unless ``overwrite`` (``files.earlier_run``)."""
    from tqdm import tqdm

    out = Path(out)
    stale = earlier_run(out, overwrite)
    t_load = time.perf_counter()
    model, low_model = load_models(config, config.device, model)
    load_time = time.perf_counter() - t_load
    run = plan(model, config, low_model)
    seeds = config.seed_list()
    total = run.steps * -(-config.num // config.batch_size)
    bar = tqdm(total=total, unit="step", disable=not progress, desc=f"{run.label} nfe={config.total_nfe}")
    done = 0

    def step(info: StepInfo) -> None:
        nonlocal done
        done += 1
        bar.update(1)
        if on_progress is not None:
            on_progress(done, total)

    try:
        result = run.sample(seeds, batch_size=config.batch_size, on_step=step)
    finally:
        bar.close()
    settings = run_settings(run, config, result.nfe)
    extra = {"config": asdict(config), "command": config.command(), "seeds": seeds, "nfe_per_sample": result.nfe,
             "wall_time_s": result.wall_time_s, "load_time_s": load_time, "compute": result.compute}
    per_image = [{"seed": s, "command": config.command(seed=s, num=1)} for s in seeds]
    return write_samples(out, result.images, result.x, settings, extra, per_image=per_image,
                         labels=[f"seed {s}" for s in seeds], title=run_title(run, config, result.nfe),
                         save_npz=config.save_npz, replaces=stale, arrays={"seeds": np.array(seeds)})


def write_samples(out: Path, images: torch.Tensor, x: torch.Tensor, settings: dict[str, Any], extra: dict[str, Any],
                  *, per_image: list[dict[str, Any]], labels: list[str], title: str, save_npz: bool = False,
                  arrays: dict[str, np.ndarray] | None = None, replaces: Sequence[Path] = ()) -> dict[str, Any]:
    """One PNG per image (``settings`` and its ``per_image`` entry in a text chunk), a labelled grid of the first
    ``GRID_IMAGES``, optionally the raw arrays, and summary.json = settings + extra + file names; returns the
    summary. ``replaces``: an earlier run's files (``files.earlier_run``), removed first."""
    from PIL.PngImagePlugin import PngInfo

    for stale in replaces:
        stale.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(images)
    files = []
    for i, (a, meta) in enumerate(zip(pixels, per_image)):
        info = PngInfo()
        info.add_text("samplebench", json.dumps({**settings, **meta}))
        info.add_text("parameters", a1111_parameters({**settings, **meta}, a.shape))
        name = f"{i:05d}.png"
        _png(a).save(out / name, pnginfo=info)
        files.append(name)
    marker = PngInfo()
    marker.add_text(GRID_MARKER, title)  # so that scoring the folder leaves the grid out
    _grid_image(pixels[:GRID_IMAGES], labels[:GRID_IMAGES], title).save(out / "grid.png", pnginfo=marker)
    if save_npz:
        np.savez(out / "samples.npz", images=images.numpy(), x=x.numpy(), **(arrays or {}))
    summary = {**settings, **extra, "images": files, "grid": "grid.png"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
