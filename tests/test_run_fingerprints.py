"""Every embedded model with every registry solver, and every method, draws the images and counts the NFE stored in
``tests/data/run-fingerprints.npz`` (made by ``tests/fingerprints.py`` before the run planner changed): a change of
how runs are planned must leave every image as it was. The tolerance covers another CPU's rounding (on the machine
that made the file the images agree bit for bit)."""

import numpy as np
import pytest
import torch
from fingerprints import DATA, cases, run

CASES = cases()


@pytest.fixture(scope="module")
def stored():
    with np.load(DATA) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", list(CASES))
def test_images_and_nfe_as_stored(name, stored):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, nfe = run(CASES[name])
    finally:
        torch.set_num_threads(threads)
    assert nfe == int(stored[f"{name}:nfe"])
    expected = stored[f"{name}:images"]
    scale = max(1.0, float(np.abs(expected).max()))
    assert images.shape == expected.shape and float(np.abs(images - expected).max()) <= 1e-5 * scale, name
