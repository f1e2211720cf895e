"""Compute the learned grids the embedded models ship (``<model folder>/grids/``): GITS's teacher costs (one file per
model, every step count) and LD3's grids per solver and step count. A grid already shipped is kept.

    python bench/ship_grids.py [--models digits,digits-gmm,digits-dit,digits-flow] [--solvers ipndm,unipc-bh2,dpmpp-3m]
                               [--nfes 3,4,5,6] [--methods gits,ld3] [--worker 0/1]

``--worker i/n`` takes every n-th (model, method, solver, NFE) item from the i-th, so n processes share the work.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

import torch

from samplebench.learned import gits_record, grid_file
from samplebench.learned.ld3 import ld3_record
from samplebench.models import load_model
from samplebench.samplers import get_solver


def ship(model, name: str, make) -> None:
    """Make grid file ``name`` (in the cache) unless the model ships it, then copy it into the model folder."""
    shipped, cached = grid_file(model, name)
    if shipped.is_file():
        return
    make()
    shipped.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, shipped)
    print(f"shipped {shipped}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="digits,digits-gmm,digits-dit,digits-flow")
    p.add_argument("--solvers", default="ipndm,unipc-bh2,dpmpp-3m")
    p.add_argument("--nfes", default="3,4,5,6")
    p.add_argument("--methods", default="gits,ld3")
    p.add_argument("--worker", default="0/1")
    args = p.parse_args()
    index, count = map(int, args.worker.split("/"))
    items = []
    for m in args.models.split(","):
        if "gits" in args.methods:
            items.append((m, "gits", None, None))
        if "ld3" in args.methods:
            items += [(m, "ld3", s, int(n)) for s in args.solvers.split(",") for n in args.nfes.split(",")]
    models = {}
    for m, method, solver, nfe in items[index::count]:
        model = models.setdefault(m, load_model(m))
        start = time.perf_counter()
        if method == "gits":
            ship(model, "gits.json", lambda: gits_record(model, progress=False))
        else:
            spec = get_solver(solver)
            steps = spec.steps_for_nfe(nfe)
            ship(model, f"ld3/{solver}-steps{steps}.json", lambda: ld3_record(model, spec, steps, progress=False))
        print(json.dumps({"model": m, "method": method, "solver": solver, "nfe": nfe,
                          "seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads()}),
              flush=True)


if __name__ == "__main__":
    main()
