"""Feature extractors for FID, KID and the Inception Score, in clean-fid's calling convention.

An extractor takes a batch of float images in [0, 255], [N, 3, H, W], already resized by the mode's resizer
(``resizer()``, clean-fid's ``fn_resize``), and returns features [N, d] (``features``) or class logits [N, K]
(``logits``). The same object plugs into clean-fid as ``custom_feat_extractor`` and into torchmetrics as ``feature``.

- ``inception``: the standard FID Inception-v3 through clean-fid, one network per mode: the TorchScript port
  ``inception-2015-12-05.pt`` for ``clean`` (PIL-bicubic resize to 299 outside the network) and
  ``legacy_tensorflow`` (TF-style resize inside it), the pytorch-fid port for ``legacy_pytorch``. Class
  probabilities for the Inception Score always come from the TorchScript network, without the output bias, as in
  StyleGAN2-ADA's metric.
- ``digits``: the shipped digits classifier (128-d penultimate features, 10-class logits) on 16x16 images, no resize.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..cache import cache_dir
from ..errors import UsageError, unknown

__all__ = ["MODES", "EXTRACTORS", "Extractor", "DigitsExtractor", "InceptionExtractor", "get_extractor",
           "inception_weights", "INCEPTION_ENV"]

MODES = ("clean", "legacy_pytorch", "legacy_tensorflow")
EXTRACTORS = ("digits", "inception")
INCEPTION_ENV = "SAMPLEBENCH_INCEPTION_WEIGHTS"
_TS_FILE = "inception-2015-12-05.pt"
_TS_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
_PT_FILE = "pt_inception-2015-12-05-6726825d.pth"
_PT_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + _PT_FILE


class Extractor(Protocol):
    name: str
    mode: str
    dim: int
    input_size: tuple[int, int] | None  # the image size it takes, None for any

    def resizer(self) -> Callable[[np.ndarray], np.ndarray]: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...  # features

    def logits(self, x: torch.Tensor) -> torch.Tensor: ...


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise unknown("mode", mode, MODES)


class DigitsExtractor(torch.nn.Module):
    """The digits classifier on 16x16 grey images: channel 0 of the [0, 255] input, scaled to [-1, 1]."""

    name = "digits"
    input_size = (16, 16)

    def __init__(self, mode: str = "clean", device: str | torch.device = "cpu", classifier=None):
        super().__init__()
        from ..models.classifier import load_classifier

        _check_mode(mode)
        self.mode = mode
        self.classifier = classifier or load_classifier(device=device)
        self.dim = self.num_features = self.classifier.config.feature_dim
        self.device = torch.device(device)

    def resizer(self) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: x  # native resolution; the size is checked before extraction

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1].float() / 127.5 - 1).to(self.device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(self._input(x))

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self._input(x))


def _download(url: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        torch.hub.download_url_to_file(url, str(dst), progress=False)  # writes a temporary file, then renames
    finally:
        socket.setdefaulttimeout(old)


def inception_weights(kind: str = "torchscript", path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The Inception weights file: ``path`` (a file, or a folder holding it), else ``$SAMPLEBENCH_INCEPTION_WEIGHTS``,
    else clean-fid's or torch.hub's own copy, else the samplebench cache, downloaded there on first use."""
    name, url = (_TS_FILE, _TS_URL) if kind == "torchscript" else (_PT_FILE, _PT_URL)
    given = path if path is not None else os.environ.get(INCEPTION_ENV) or None
    if given is not None:
        p = Path(given).expanduser()
        p = p / name if p.is_dir() else p
        if not p.is_file():
            source = "--inception-weights" if path is not None else f"${INCEPTION_ENV}"
            raise UsageError(f"Inception weights {str(p)!r} (from {source}) do not exist; download {name} from {url}")
        return p
    ours = cache_dir() / "inception" / name
    known = [Path("/tmp") / name, ours] if kind == "torchscript" else \
        [Path(torch.hub.get_dir()) / "checkpoints" / name, ours]
    for p in known:
        if p.is_file():
            return p
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    error = "HF_HUB_OFFLINE is set" if offline else "downloads disabled"
    if download and not offline:
        try:
            _download(url, ours)
            return ours
        except Exception as e:  # no network, a proxy, a timeout: all end in the same instruction
            error = f"{type(e).__name__}: {e}".splitlines()[0]
    raise UsageError(f"Inception weights not found and not downloadable ({error}); put {name} from {url} at "
                     f"{ours}, or pass --inception-weights FILE, or set {INCEPTION_ENV}=FILE")


@contextmanager
def _hub_file(file: Path):
    """Make ``torch.hub`` find ``file`` under its own name (the pytorch-fid port loads it by URL)."""
    import tempfile

    old = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "checkpoints").mkdir()
        (Path(tmp) / "checkpoints" / _PT_FILE).symlink_to(file.resolve())
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub.set_dir(old)


def _torchscript_inception(file: Path, resize_inside: bool, device: torch.device) -> torch.nn.Module:
    from cleanfid.inception_torchscript import InceptionV3W

    class _InceptionV3W(InceptionV3W):  # clean-fid's wrapper and forward, loading from any file name
        def __init__(self):
            torch.nn.Module.__init__(self)
            with warnings.catch_warnings():  # torch.jit is deprecated; the weights are a TorchScript file
                warnings.simplefilter("ignore", FutureWarning)
                self.base = torch.jit.load(str(file), map_location="cpu").eval()
            self.layers = self.base.layers
            self.resize_inside = resize_inside

    try:
        return _InceptionV3W().to(device).eval()
    except RuntimeError as e:
        raise UsageError(f"{str(file)!r} is not the TorchScript Inception {_TS_FILE}: "
                         f"{str(e).splitlines()[0]}") from None


class InceptionExtractor(torch.nn.Module):
    """The FID Inception-v3 (2048-d pool features) of clean-fid's ``mode``; ``logits`` are the log class
    probabilities (1008 classes) of the TorchScript network for the Inception Score."""

    name = "inception"
    input_size = None
    dim = num_features = 2048

    def __init__(self, mode: str = "clean", device: str | torch.device = "cpu",
                 weights: str | os.PathLike | None = None):
        super().__init__()
        _check_mode(mode)
        self.mode, self.device, self._weights = mode, torch.device(device), weights
        if mode == "legacy_pytorch":
            from cleanfid.inception_pytorch import InceptionV3

            file = inception_weights("pytorch", weights)
            with _hub_file(file):
                self.net = InceptionV3(output_blocks=[3], resize_input=False).to(self.device).eval()
            self.weights_file = file
        else:
            self.weights_file = inception_weights("torchscript", weights)
            self.net = _torchscript_inception(self.weights_file, mode == "legacy_tensorflow", self.device)
        self._ts = self.net if mode != "legacy_pytorch" else None

    def resizer(self) -> Callable[[np.ndarray], np.ndarray]:
        from cleanfid.resize import build_resizer

        return build_resizer(self.mode)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.mode == "legacy_pytorch":  # as clean-fid's feature_extractor("pytorch_inception")
            return self.net(x / 255)[0].squeeze(-1).squeeze(-1)
        return self.net(x)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self._ts is None:
            self._ts = _torchscript_inception(inception_weights("torchscript", self._weights), True, self.device)
        probs = self._ts.base(x.to(self.device), no_output_bias=True)
        return probs.clamp_min(1e-30).log()


def get_extractor(name: str, mode: str = "clean", device: str | torch.device = "cpu",
                  inception_weights_path: str | os.PathLike | None = None) -> Extractor:
    _check_mode(mode)
    if name == "digits":
        return DigitsExtractor(mode, device)
    if name == "inception":
        return InceptionExtractor(mode, device, inception_weights_path)
    raise unknown("feature extractor", name, EXTRACTORS)
