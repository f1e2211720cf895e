"""DeeDiff (Tang et al. 2023, arXiv 2309.17074): uncertainty heads and early exit for a diffusers DiT.

A ``DiTTransformer2DModel`` is run block by block. After block i an uncertainty estimation module (UEM, Sec. 3.2:
one ``Linear(d, p*p*C)`` + sigmoid per block, on the *detached* hidden state) gives a per-pixel confidence
c_i = 1 - u_i; the exit head g_i is the DiT's own final layer (adaLN, linear, unpatchify) applied to the
intermediate hidden state, so it adds no parameters. Training adds two terms to the plain loss (Eqs. 6-8):

    L_u   = mean_i MSE(c_i, 1 - tanh|g_i(L_i) - eps|)      (target detached)
    L_UAL = sum_i w_i ||g_i(L_i) - eps||^2,  w_i = batch-mean c_i normalised over layers (detached)

At inference a row leaves after block i once its mean confidence exceeds the threshold; in the first half of
the blocks (U-ViT's in-blocks) the "patient" rule asks for two exceedances, as in the reference code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

__all__ = ["UncertaintyHeads", "dit_block", "dit_conditioning", "dit_head", "uncertainty_target", "deediff_losses",
           "early_exit_forward", "ExitTrace"]


class UncertaintyHeads(ModelMixin, ConfigMixin):
    """One UEM per DiT block: ``Linear(inner_dim, patch_size**2 * out_channels)`` and a sigmoid, per token."""

    @register_to_config
    def __init__(self, num_layers: int, inner_dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(inner_dim, patch_size * patch_size * out_channels)
                                         for _ in range(num_layers))

    def forward(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        """The confidence map c_i of block i, image-shaped [B, C, H, W]; the backbone gets no gradient."""
        c = torch.sigmoid(self.heads[i](hidden.detach().float()))
        return _unpatchify(c, self.config.patch_size, self.config.out_channels)

    def mean_confidence(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        """Per-row mean confidence (the mean is the same before and after unpatchifying)."""
        return torch.sigmoid(self.heads[i](hidden.float())).mean(dim=(1, 2))


def _unpatchify(tokens: torch.Tensor, p: int, c: int) -> torch.Tensor:
    """diffusers' DiT unpatchify: [B, h*w, p*p*c] -> [B, c, h*p, w*p]."""
    h = w = int(tokens.shape[1] ** 0.5)
    x = tokens.reshape(shape=(-1, h, w, p, p, c))
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(shape=(-1, c, h * p, w * p))


def dit_conditioning(dit, timestep: torch.Tensor, class_labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The conditioning vector of DiT's final layer (as ``DiTTransformer2DModel.forward`` computes it)."""
    return dit.transformer_blocks[0].norm1.emb(timestep, class_labels, hidden_dtype=dtype)


def dit_head(dit, hidden: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
    """DiT's final layer g (adaLN shift/scale, linear, unpatchify), the shared exit head of every block."""
    shift, scale = dit.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
    hidden = dit.norm_out(hidden) * (1 + scale[:, None]) + shift[:, None]
    return _unpatchify(dit.proj_out_2(hidden), dit.patch_size, dit.out_channels)


def dit_block(dit, hidden: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor, block: int):
    """Block ``block`` of the DiT on token states ``hidden``, called exactly as diffusers' forward calls it."""
    return dit.transformer_blocks[block](hidden, attention_mask=None, encoder_hidden_states=None,
                                         encoder_attention_mask=None, timestep=timestep, cross_attention_kwargs=None,
                                         class_labels=class_labels)


def uncertainty_target(pred: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The confidence pseudo-label 1 - tanh|g_i(L_i) - eps| (Eq. 6), detached."""
    return (1.0 - torch.tanh((pred - eps).abs())).detach()


def deediff_losses(dit, heads: UncertaintyHeads, x_t: torch.Tensor, timestep: torch.Tensor,
                   class_labels: torch.Tensor, eps: torch.Tensor) -> dict[str, object]:
    """The three DeeDiff training terms for one batch; ``total`` = L_simple + L_u + L_UAL (lambda = beta = 1)."""
    hidden = dit.pos_embed(x_t)
    conditioning = dit_conditioning(dit, timestep, class_labels, hidden.dtype)
    preds, confidences = [], []
    for i in range(len(dit.transformer_blocks)):
        hidden = dit_block(dit, hidden, timestep, class_labels, i)
        preds.append(dit_head(dit, hidden, conditioning))
        confidences.append(heads(i, hidden))
    targets = [uncertainty_target(p, eps) for p in preds]
    simple = F.mse_loss(preds[-1], eps)
    u = torch.stack([F.mse_loss(c, tg) for c, tg in zip(confidences, targets)]).mean()
    w = torch.stack([c.mean() for c in confidences]).detach()
    w = w / w.sum()
    ual = sum(wi * F.mse_loss(p, eps) for wi, p in zip(w, preds))
    return {"total": simple + u + ual, "simple": simple, "u": u, "ual": ual, "preds": preds,
            "confidences": confidences, "targets": targets}


@dataclass
class ExitTrace:
    """Where each row of one forward left: ``blocks[r]`` = blocks evaluated for row r (1..L)."""

    blocks: torch.Tensor


def early_exit_forward(dit, heads: UncertaintyHeads, x: torch.Tensor, timestep: torch.Tensor,
                       class_labels: torch.Tensor, threshold: torch.Tensor | float,
                       patient_blocks: int | None = None) -> tuple[torch.Tensor, ExitTrace]:
    """DiT forward with per-row early exit; rows that leave are dropped from the batch of the next block.

    ``threshold`` is a scalar or one value per row. In blocks ``< patient_blocks`` (default: half the blocks) a row
    leaves only at its second exceedance (the reference code's patient rule); later one exceedance suffices.
    A threshold above 1 never exits and gives diffusers' forward exactly.
    """
    n_blocks = len(dit.transformer_blocks)
    patient_blocks = n_blocks // 2 if patient_blocks is None else patient_blocks
    rows = x.shape[0]
    threshold = torch.as_tensor(threshold, dtype=torch.float32, device=x.device).expand(rows)
    hidden = dit.pos_embed(x)
    conditioning = dit_conditioning(dit, timestep, class_labels, hidden.dtype)
    out = x.new_empty(rows, dit.out_channels, *x.shape[2:])
    blocks = torch.full((rows,), n_blocks, dtype=torch.long)
    exceeded = torch.zeros(rows, dtype=torch.long, device=x.device)
    active = torch.arange(rows, device=x.device)
    for i in range(n_blocks):
        hidden = dit_block(dit, hidden, timestep[active], class_labels[active], i)
        if i == n_blocks - 1:
            break
        over = heads.mean_confidence(i, hidden) > threshold[active]
        exceeded[active] += over.long()
        leave = over & ((i >= patient_blocks) | (exceeded[active] >= 2))
        if bool(leave.any()):
            gone = active[leave]
            out[gone] = dit_head(dit, hidden[leave], conditioning[gone]).to(out.dtype)
            blocks[gone.cpu()] = i + 1
            active, hidden = active[~leave], hidden[~leave]
            if active.numel() == 0:
                break
    if active.numel():
        out[active] = dit_head(dit, hidden, conditioning[active]).to(out.dtype)
    return out, ExitTrace(blocks)

