"""Fingerprints of runs through the ``sample`` command: the images and NFE of every registry solver on every embedded
model, and of every method (guidance, class labels, Skip-Tuning, early exit, caching, cascades, S3, learned grids),
stored in ``tests/data/run-fingerprints.npz`` so that a change of the code that plans runs can be checked to leave
every image as it was (``test_run_fingerprints.py``).

    python tests/fingerprints.py      # writes the file anew (only when a change of images is meant)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "run-fingerprints.npz"
SOLVERS = ("ddim", "euler", "ddpm", "heun", "dpmpp-2m", "dpmpp-3m", "unipc-bh1", "unipc-bh2", "deis", "ipndm")
MODELS = ("digits", "gaussian", "digits-gmm", "digits-dit", "digits-flow")


def cases() -> dict[str, dict]:
    """Name -> ``SampleConfig`` fields (two images, seeds 5 and 6)."""
    out = {}
    for m in MODELS:
        for s in SOLVERS:
            out[f"{m}/{s}"] = {"model": m, "solver": s, "nfe": 4}
    out.update({
        "digits/skip-rho": {"model": "digits", "solver": "dpmpp-2m", "nfe": 6, "skip_rho": 0.8},
        "digits/s3": {"model": "digits", "solver": "s3", "nfe": 4},
        "digits/karras": {"model": "digits", "solver": "unipc-bh2", "nfe": 5, "time_grid": "karras"},
        "digits/gits": {"model": "digits", "solver": "ipndm", "nfe": 4, "time_grid": "gits"},
        "digits/ld3": {"model": "digits", "solver": "ipndm", "nfe": 4, "time_grid": "ld3"},
        "digits-gmm/dmn": {"model": "digits-gmm", "solver": "dpmpp-3m", "nfe": 5, "time_grid": "dmn"},
        "digits-dit/class-guidance": {"model": "digits-dit", "solver": "dpmpp-2m", "nfe": 5, "class_label": 3,
                                      "guidance_scale": 2.0},
        "digits-dit/exit": {"model": "digits-dit", "solver": "dpmpp-2m", "nfe": 6, "exit_threshold": "0.9"},
        "digits/deepcache": {"model": "digits", "solver": "dpmpp-2m", "nfe": 6, "cache": "deepcache:2"},
        "digits-dit/fbcache": {"model": "digits-dit", "solver": "dpmpp-2m", "nfe": 6, "cache": "fbcache:0.1"},
        "digits-dit/s3": {"model": "digits-dit", "solver": "s3", "nfe": 4},
        "digits-flow/guidance": {"model": "digits-flow", "solver": "unipc-bh2", "nfe": 5, "guidance_scale": 1.5},
        "digits-lowdiff/cascade": {"model": "digits-lowdiff", "solver": "dpmpp-2m", "nfe": None,
                                   "cascade": "8:6,16:4"},
    })
    return out


def run(fields: dict) -> tuple[np.ndarray, int]:
    """The float images and the counted NFE of one case, through ``run_sample`` (the ``sample`` command)."""
    from samplebench.sampling import SampleConfig, run_sample

    config = SampleConfig(**{"num": 2, "seed": 5, "save_npz": True, **fields})
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_sample(config, Path(tmp) / "out", progress=False)
        with np.load(Path(tmp) / "out" / "samples.npz") as z:
            images = z["images"].astype(np.float32)
    return images, int(summary["nfe"])


def main() -> None:
    import torch

    torch.set_num_threads(1)
    arrays = {}
    for name, fields in cases().items():
        images, nfe = run(fields)
        arrays[f"{name}:images"] = images
        arrays[f"{name}:nfe"] = np.array(nfe)
        print(name, nfe, float(np.abs(images).max()), flush=True)
    DATA.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(DATA, **arrays)


if __name__ == "__main__":
    main()
