"""FID, KID and the Inception Score, composed from clean-fid and torchmetrics.

Images enter as uint8 [N, H, W, C], exactly the pixels a PNG holds (generated images are quantised by
``sampling.to_uint8`` first, never truncated). Each image then goes through clean-fid's own per-image path
(``ResizeDataset``: the mode's resizer, then ``ToTensor``, scaled to [0, 255]) and the extractor, so features equal
clean-fid's for the same files. FID is clean-fid's ``frechet_distance`` of (mean, ``np.cov``) statistics, KID its
``kernel_distance`` (Binkowski et al. 2018, cubic polynomial kernel) with seeded subsets, and the Inception Score
(Salimans et al. 2016, exp E KL(p(y|x) || p(y))) torchmetrics' ``InceptionScore`` with a seeded split permutation.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError
from .extractors import Extractor

__all__ = ["Features", "as_uint8", "prepare", "batches", "extract", "statistics", "fid", "kid", "inception_score",
           "torchmetrics_fid_kid"]


@dataclass
class Features:
    feats: np.ndarray  # [N, d] float32, as clean-fid returns them
    logits: np.ndarray | None = None  # [N, K] class logits, for the Inception Score


def as_uint8(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 [N, H, W, 3]: from float [-1, 1] [N, C, H, W] (rounded as PNGs are) or uint8 [N, H, W, C]; grey images
    get three equal channels, as PIL's ``convert("RGB")`` gives them."""
    from ..loop import to_uint8

    if isinstance(images, torch.Tensor) and images.is_floating_point():
        images = to_uint8(images)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UsageError(f"images must be uint8 [N, H, W, 1|3] or float [N, C, H, W] in [-1, 1], got "
                         f"{images.dtype} {list(images.shape)}")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def prepare(image: np.ndarray, fn_resize) -> torch.Tensor:
    """One uint8 [H, W, 3] image -> float [3, H', W'] in [0, 255], as clean-fid's ``ResizeDataset.__getitem__``."""
    from torchvision.transforms.functional import to_tensor

    resized = fn_resize(image)
    return to_tensor(np.array(resized)) * 255 if resized.dtype == np.uint8 else to_tensor(resized)


def batches(images: np.ndarray, extractor: Extractor, batch_size: int = 256) -> Iterator[torch.Tensor]:
    """The prepared [B, 3, H', W'] batches of uint8 [N, H, W, 3] images for ``extractor``."""
    size = extractor.input_size
    if size is not None and tuple(images.shape[1:3]) != size:
        raise UsageError(f"the {extractor.name} extractor takes {size[0]}x{size[1]} images, got "
                         f"{images.shape[1]}x{images.shape[2]}; give --features inception (any size, resized as "
                         f"clean-fid does) and a reference made with it ('samplebench refs make FOLDER --features "
                         f"inception')")
    fn_resize = extractor.resizer()
    for lo in range(0, len(images), batch_size):
        yield torch.stack([prepare(im, fn_resize) for im in images[lo:lo + batch_size]])


def extract(images: np.ndarray | torch.Tensor, extractor: Extractor, *, logits: bool = False,
            batch_size: int = 256) -> Features:
    images = as_uint8(images)
    feats, logs = [], []
    for b in batches(images, extractor, batch_size):
        feats.append(extractor(b).detach().cpu().numpy())
        if logits:
            logs.append(extractor.logits(b).detach().cpu().double().numpy())
    return Features(np.concatenate(feats), np.concatenate(logs) if logits else None)


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance, computed as clean-fid computes them."""
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


def fid(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017, Eq. 6), clean-fid's."""
    from cleanfid.fid import frechet_distance

    if mu1.shape != mu2.shape:
        raise UsageError(f"feature dimensions differ: {mu1.shape[0]} vs reference {mu2.shape[0]}")
    return float(frechet_distance(mu1, sigma1, mu2, sigma2))


@contextmanager
def _numpy_seed(seed: int):
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def kid(feats: np.ndarray, ref_feats: np.ndarray, *, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0) -> float:
    """Kernel Inception Distance, clean-fid's ``kernel_distance`` in float64; its subsets are drawn from a seeded
    generator."""
    from cleanfid.fid import kernel_distance

    if feats.shape[1] != ref_feats.shape[1]:
        raise UsageError(f"feature dimensions differ: {feats.shape[1]} vs reference {ref_feats.shape[1]}")
    if min(len(feats), len(ref_feats)) < 2:
        raise UsageError("KID needs at least 2 samples on each side")
    with _numpy_seed(seed):
        return float(kernel_distance(np.asarray(feats, np.float64), np.asarray(ref_feats, np.float64),
                                     num_subsets=num_subsets, max_subset_size=max_subset_size))


def inception_score(logits: np.ndarray, *, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` of exp(E_x KL(p(y|x) || p(y))), torchmetrics' ``InceptionScore``
    on precomputed logits; the split permutation comes from a seeded generator."""
    from torchmetrics.image.inception import InceptionScore

    if len(logits) < splits:
        raise UsageError(f"the Inception Score with {splits} splits needs at least {splits} samples, got {len(logits)}")
    with warnings.catch_warnings():  # "will save all extracted features in buffer": that is the point here
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=torch.nn.Identity(), splits=splits, sync_on_compute=False)
    metric.update(torch.as_tensor(logits, dtype=torch.float64))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the std of a single split
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std) if splits > 1 else 0.0


class _Features(torch.nn.Module):
    """An extractor as torchmetrics' ``feature`` module (it reads ``num_features``)."""

    def __init__(self, extractor: Extractor):
        super().__init__()
        self.extractor = extractor
        self.num_features = extractor.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x).double()


def torchmetrics_fid_kid(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, extractor: Extractor, *,
                         kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
                         batch_size: int = 256) -> dict[str, float]:
    """In-memory FID and KID through torchmetrics (float64 running sums, so they reduce across processes), on the
    same prepared batches as ``extract``."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = as_uint8(real), as_uint8(fake)
    size = min(kid_subset_size, len(real), len(fake))
    fid_m = FrechetInceptionDistance(feature=_Features(extractor), normalize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        kid_m = KernelInceptionDistance(feature=_Features(extractor), subsets=kid_subsets, subset_size=size)
    for images, is_real in ((real, True), (fake, False)):
        for b in batches(images, extractor, batch_size):
            fid_m.update(b, real=is_real)
            kid_m.update(b, real=is_real)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid_m.compute()
    return {"fid": float(fid_m.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}
