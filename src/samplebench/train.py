"""Training recipes for the embedded models: ``samplebench train RECIPE --out DIR``.

Every recipe is deterministic for a given ``--seed`` on a given device, shows a progress bar, and the
network recipes save a checkpoint (model, EMA, optimiser, random state) atomically every ``checkpoint_every``
steps: a killed run started again with the same arguments resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .checks import check_out_dir
from .errors import UsageError, describe, unknown

__all__ = ["RECIPES", "train"]


def train_digits_gmm(out: Path, seed: int = 0, device: str = "cpu", steps: int | None = None,
                     components: int = 10, reg_covar: float = 1e-2) -> dict:
    """A full-covariance Gaussian mixture fitted by EM (scikit-learn) to the 16x16 digits training split.

    10 components had the best held-out log-likelihood among 10, 20 and 40 (268.5, 267.7, 254.5 nats/image).
    """
    import numpy as np
    from sklearn.mixture import GaussianMixture as SkGMM

    from .data import load_digits
    from .models.analytic import GaussianMixture

    start = time.perf_counter()
    train_x = load_digits("train")[0].reshape(-1, 256).double().numpy()
    test_x = load_digits("test")[0].reshape(-1, 256).double().numpy()
    fit = SkGMM(components, covariance_type="full", reg_covar=reg_covar, random_state=seed, max_iter=200).fit(train_x)
    eigvals, eigvecs = np.linalg.eigh(fit.covariances_)
    mixture = GaussianMixture(torch.tensor(fit.weights_), torch.tensor(fit.means_), torch.tensor(eigvals).clamp(min=0),
                              torch.tensor(eigvecs), (1, 16, 16))
    mixture.save(out)
    card = {"recipe": "digits-gmm", "command": f"samplebench train digits-gmm --out DIR --seed {seed}",
            "components": components, "reg_covar": reg_covar, "seed": seed, "em_iterations": int(fit.n_iter_),
            "train_loglik_per_image": float(fit.score(train_x)), "test_loglik_per_image": float(fit.score(test_x)),
            "wall_time_s": round(time.perf_counter() - start, 2)}
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    return card


def _save_atomic(obj: object, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _save_data_mean(out: Path, data: torch.Tensor) -> None:
    """The training images' mean as ``data_mean.npy``, read back by the loaders (the AFS "mean" first step)."""
    import numpy as np

    np.save(out / "data_mean.npy", data.mean(0).cpu().float().numpy())


def _q_sample(alphas_cumprod: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at integer steps t (Ho et al. 2020, Eq. 4)."""
    a = alphas_cumprod[t.to(alphas_cumprod.device)].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def _train_loop(out: Path, net: torch.nn.Module, loss_fn: Callable[[torch.Generator], torch.Tensor], *,
                steps: int, lr: float, warmup: int, ema_decay: float, checkpoint_every: int, seed: int,
                desc: str) -> tuple[torch.nn.Module, list[float]]:
    """AdamW with linear warm-up and cosine decay, an EMA copy, atomic checkpoints, exact resumption."""
    import copy

    from tqdm import tqdm

    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    step = 0
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = read_checkpoint(ckpt)
        try:
            net.load_state_dict(state["net"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{str(ckpt)!r} is a checkpoint of another network ({type(e).__name__}); delete it to "
                             f"train {desc} from the start, or give another --out") from None
        losses, step = list(state["losses"]), int(state["step"])
    bar = tqdm(total=steps, initial=step, desc=desc, unit="step")
    net.train()
    while step < steps:
        loss = loss_fn(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1.0 - ema_decay)
        losses.append(float(loss.detach()))
        step += 1
        bar.update(1)
        if step % 100 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / 100:.4f}")
        if step % checkpoint_every == 0 or step == steps:
            _save_atomic({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                          "sched": sched.state_dict(), "gen": gen.get_state(), "losses": losses, "step": step}, ckpt)
    bar.close()
    return ema.eval(), losses


CHECKPOINT_KEYS = ("net", "ema", "opt", "sched", "gen", "losses", "step")


def read_checkpoint(path: Path) -> dict:
    """A training checkpoint, read as data only (``weights_only``: no code in a pickle runs); a file that is not
    one is named with how to recover."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
            raise ValueError("not a samplebench training checkpoint")
    except Exception as e:  # pickle, zip and format errors alike
        raise UsageError(f"{str(path)!r} is not a readable training checkpoint ({describe(e, 100)}); delete it to "
                         "train from the start, or give another --out") from None
    return state


def digits_unet(seed: int = 0):
    """The digits UNet2DModel: 1x16x16, channels (32, 64, 64), self-attention at 4x4, about 1.1 M parameters."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64, 64), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def train_digits_unet(out: Path, seed: int = 0, device: str = "cpu", steps: int | None = None,
                      batch_size: int = 128, lr: float = 2e-3, checkpoint_every: int | None = None) -> dict:
    """Unconditional eps-prediction DDPM (Ho et al. 2020, Alg. 1) on the 16x16 digits training split;
    linear betas, 1000 training steps. The EMA weights are saved as a diffusers DDPMPipeline."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from .data import load_digits

    steps = 8000 if steps is None else steps
    start = time.perf_counter()
    data = load_digits("train")[0].to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    ac = scheduler.alphas_cumprod.to(device)
    net = digits_unet(seed).to(device)

    def loss_fn(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        t = torch.randint(1000, (batch_size,), generator=gen)
        eps = torch.randn(batch_size, 1, 16, 16, generator=gen).to(device)
        x_t = _q_sample(ac, data[idx.to(device)], t, eps)
        return torch.nn.functional.mse_loss(net(x_t, t.to(device)).sample, eps)

    ema, losses = _train_loop(out, net, loss_fn, steps=steps, lr=lr, warmup=200, ema_decay=0.999,
                              checkpoint_every=checkpoint_every or 500, seed=seed, desc="digits-unet")
    DDPMPipeline(unet=ema.cpu(), scheduler=scheduler).save_pretrained(out)
    _save_data_mean(out, data)
    card = {"recipe": "digits-unet",
            "command": f"samplebench train digits-unet --out DIR --seed {seed} --steps {steps}",
            "steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": 0.999, "seed": seed,
            "parameters": sum(p.numel() for p in ema.parameters()), "device": str(device),
            "final_loss_last_500": sum(losses[-500:]) / len(losses[-500:]),
            "wall_time_s_this_run": round(time.perf_counter() - start, 1)}
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    return card


def digits_lowdiff_unet(seed: int = 0):
    """The digits cascade UNet: the digits UNet's architecture with a second input channel (the condition) and a
    ``timestep``-type class embedding for the condition level."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=16, in_channels=2, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64, 64), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), class_embed_type="timestep")


def train_digits_lowdiff(out: Path, seed: int = 0, device: str = "cpu", steps: int | None = None,
                         batch_size: int = 128, lr: float = 2e-3, max_condition_level: int = 300,
                         condition_noise: float = 0.1, t_start: float = 0.3,
                         checkpoint_every: int | None = None) -> dict:
    """LowDiff's unified model (``models/lowdiff.py``) for the cascade 8x8 -> 16x16 on the digits: every step
    trains an unconditional 8x8 batch and a 16x16 batch conditioned on the bilinearly upsampled 8x8 image, noised
    to a level drawn uniformly from 0..``max_condition_level`` - 1 (network time), each with the eps-prediction
    loss of DDPM (Ho et al. 2020, Alg. 1), summed. ``condition_noise`` (a time in [0, 1]) and ``t_start`` (the 16x16
    stage's start, t* = 0.3 beat t* = T in bench/cascade.py) are the sampling defaults written to cascade.json.
    Saved as a diffusers DDPMPipeline plus cascade.json."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from .data import load_digits
    from .models.lowdiff import NO_CONDITION, upsample

    steps = 6000 if steps is None else steps
    start = time.perf_counter()
    low = load_digits("train", 8)[0].to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    ac = scheduler.alphas_cumprod.to(device)
    net = digits_lowdiff_unet(seed).to(device)
    high_batch = batch_size // 2
    parts: dict[str, list[float]] = {"8": [], "16": []}

    def loss_fn(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(low), (batch_size,), generator=gen).to(device)
        t = torch.randint(1000, (batch_size,), generator=gen)
        eps = torch.randn(batch_size, 1, 8, 8, generator=gen).to(device)
        x_t = _q_sample(ac, low[idx], t, eps)
        level = torch.full((batch_size,), NO_CONDITION, device=device)
        loss8 = torch.nn.functional.mse_loss(
            net(torch.cat([x_t, torch.zeros_like(x_t)], 1), t.to(device), class_labels=level).sample, eps)
        idx = torch.randint(len(low), (high_batch,), generator=gen).to(device)
        t = torch.randint(1000, (high_batch,), generator=gen)
        s = torch.randint(max_condition_level, (high_batch,), generator=gen)
        eps = torch.randn(high_batch, 1, 16, 16, generator=gen).to(device)
        eps_c = torch.randn(high_batch, 1, 16, 16, generator=gen).to(device)
        up = upsample(low[idx], 16)  # the 16x16 digits are exactly this image (``data.py``)
        x_t, c = _q_sample(ac, up, t, eps), _q_sample(ac, up, s, eps_c)
        loss16 = torch.nn.functional.mse_loss(
            net(torch.cat([x_t, c], 1), t.to(device), class_labels=s.to(device).float()).sample, eps)
        parts["8"].append(float(loss8.detach()))
        parts["16"].append(float(loss16.detach()))
        return loss8 + loss16

    ema, losses = _train_loop(out, net, loss_fn, steps=steps, lr=lr, warmup=200, ema_decay=0.999,
                              checkpoint_every=checkpoint_every or 500, seed=seed, desc="digits-lowdiff")
    DDPMPipeline(unet=ema.cpu(), scheduler=scheduler).save_pretrained(out)
    (out / "cascade.json").write_text(json.dumps({"resolutions": [8, 16], "condition_noise": condition_noise,
                                                  "upsample": "bilinear", "t_start": t_start}, indent=2))
    card = {"recipe": "digits-lowdiff",
            "command": f"samplebench train digits-lowdiff --out DIR --seed {seed} --steps {steps}",
            "steps": steps, "batch_size": {"8x8": batch_size, "16x16": high_batch}, "lr": lr, "ema_decay": 0.999,
            "max_condition_level": max_condition_level, "seed": seed,
            "parameters": sum(p.numel() for p in ema.parameters()), "device": str(device),
            "final_loss_last_500": sum(losses[-500:]) / len(losses[-500:]),
            "final_terms_last_500_this_run": {k: sum(v[-500:]) / max(1, len(v[-500:])) for k, v in parts.items()},
            "wall_time_s_this_run": round(time.perf_counter() - start, 1)}
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    return card


def digits_dit(seed: int = 0):
    """The digits DiT: ``DiTTransformer2DModel`` on 1x16x16 pixels, patch 2 (64 tokens), 8 blocks of width 64
    (4 heads), adaLN-zero, 10 classes + the null class; plus its DeeDiff uncertainty heads."""
    from diffusers import DiTTransformer2DModel

    from .models.deediff import UncertaintyHeads

    torch.manual_seed(seed)
    dit = DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=1, out_channels=1,
                                num_layers=8, sample_size=16, patch_size=2, num_embeds_ada_norm=10)
    for block in dit.transformer_blocks:  # label dropout is drawn from the recipe's generator instead
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    heads = UncertaintyHeads(num_layers=8, inner_dim=dit.inner_dim, patch_size=2, out_channels=1)
    return dit, heads


class _DeeDiffNet(torch.nn.Module):
    def __init__(self, dit, heads):
        super().__init__()
        self.dit, self.heads = dit, heads


def train_digits_dit(out: Path, seed: int = 0, device: str = "cpu", steps: int | None = None,
                     batch_size: int = 128, lr: float = 1e-3, label_dropout: float = 0.1,
                     checkpoint_every: int | None = None) -> dict:
    """Class-conditional eps-prediction DiT on the 16x16 digits with DeeDiff's uncertainty heads, trained from
    scratch on L_simple + L_u + L_UAL (``models/deediff.py``); labels are replaced by the null class with
    probability ``label_dropout`` for classifier-free guidance. Saved as ``transformer/``, ``uem/``, ``scheduler/``."""
    from diffusers import DDPMScheduler

    from .data import load_digits
    from .models.deediff import deediff_losses

    steps = 20000 if steps is None else steps
    start = time.perf_counter()
    data, labels = load_digits("train")
    data = data.to(device)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    ac = scheduler.alphas_cumprod.to(device)
    net = _DeeDiffNet(*digits_dit(seed)).to(device)
    null_class = net.dit.config.num_embeds_ada_norm
    parts: dict[str, list[float]] = {"simple": [], "u": [], "ual": []}

    def loss_fn(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        t = torch.randint(1000, (batch_size,), generator=gen)
        eps = torch.randn(batch_size, 1, 16, 16, generator=gen).to(device)
        drop = torch.rand(batch_size, generator=gen) < label_dropout
        y = torch.where(drop, null_class, labels[idx]).to(device)
        x_t = _q_sample(ac, data[idx.to(device)], t, eps)
        losses = deediff_losses(net.dit, net.heads, x_t, t.to(device), y, eps)
        for k in parts:
            parts[k].append(float(losses[k].detach()))
        return losses["total"]

    ema, losses = _train_loop(out, net, loss_fn, steps=steps, lr=lr, warmup=200, ema_decay=0.999,
                              checkpoint_every=checkpoint_every or 250, seed=seed, desc="digits-dit")
    ema = ema.cpu()
    ema.dit.save_pretrained(out / "transformer")
    ema.heads.save_pretrained(out / "uem")
    scheduler.save_pretrained(out / "scheduler")
    _save_data_mean(out, data)
    card = {"recipe": "digits-dit",
            "command": f"samplebench train digits-dit --out DIR --seed {seed} --steps {steps}",
            "steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": 0.999, "label_dropout": label_dropout,
            "seed": seed, "parameters": sum(p.numel() for p in ema.dit.parameters()),
            "uem_parameters": sum(p.numel() for p in ema.heads.parameters()), "device": str(device),
            "final_loss_last_500": sum(losses[-500:]) / len(losses[-500:]),
            "final_terms_last_500_this_run": {k: sum(v[-500:]) / max(1, len(v[-500:])) for k, v in parts.items()},
            "wall_time_s_this_run": round(time.perf_counter() - start, 1)}
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    return card


def digits_flow(seed: int = 0):
    """The digits flow DiT: the digits DiT's transformer (``digits_dit``) without uncertainty heads."""
    return digits_dit(seed)[0]


def train_digits_flow(out: Path, seed: int = 0, device: str = "cpu", steps: int | None = None,
                      batch_size: int = 128, lr: float = 1e-3, label_dropout: float = 0.1,
                      checkpoint_every: int | None = None) -> dict:
    """Class-conditional flow-matching DiT on the 16x16 digits: the path x_t = (1 - t) x_0 + t eps, the network
    predicts the velocity v = eps - x_0 under MSE (rectified flow, Liu et al. 2023; flow matching, Lipman et al.
    2023), t drawn from SD3's logit-normal with m = 0, s = 1 (Esser et al. 2024, Sec. 3.1), network timestep
    1000 t as diffusers' flow pipelines pass it; labels dropped to the null class with probability
    ``label_dropout``. Saved as ``transformer/`` and ``scheduler/`` (FlowMatchEulerDiscreteScheduler, shift 1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from .data import load_digits

    steps = 8000 if steps is None else steps
    start = time.perf_counter()
    data, labels = load_digits("train")
    data = data.to(device)
    net = digits_flow(seed).to(device)
    null_class = net.config.num_embeds_ada_norm

    def loss_fn(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(data), (batch_size,), generator=gen)
        t = torch.sigmoid(torch.randn(batch_size, generator=gen)).to(device)
        eps = torch.randn(batch_size, 1, 16, 16, generator=gen).to(device)
        drop = torch.rand(batch_size, generator=gen) < label_dropout
        y = torch.where(drop, null_class, labels[idx]).to(device)
        x0 = data[idx.to(device)]
        x_t = (1 - t).view(-1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1) * eps
        v = net(x_t, timestep=1000.0 * t, class_labels=y).sample
        return torch.nn.functional.mse_loss(v, eps - x0)

    ema, losses = _train_loop(out, net, loss_fn, steps=steps, lr=lr, warmup=200, ema_decay=0.999,
                              checkpoint_every=checkpoint_every or 250, seed=seed, desc="digits-flow")
    ema.cpu().save_pretrained(out / "transformer")
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0).save_pretrained(out / "scheduler")
    _save_data_mean(out, data)
    card = {"recipe": "digits-flow",
            "command": f"samplebench train digits-flow --out DIR --seed {seed} --steps {steps}",
            "steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": 0.999, "label_dropout": label_dropout,
            "time_distribution": "logit-normal(0, 1)", "seed": seed,
            "parameters": sum(p.numel() for p in ema.parameters()), "device": str(device),
            "final_loss_last_500": sum(losses[-500:]) / len(losses[-500:]),
            "wall_time_s_this_run": round(time.perf_counter() - start, 1)}
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    return card


def train_digits_classifier(out: Path, seed: int = 0, device: str = "cpu", steps: int | None = None,
                            batch_size: int = 128, lr: float = 2e-3, checkpoint_every: int | None = None) -> dict:
    """The digits classifier (``models/classifier.py``), trained on the 16x16 training split with random
    shifts of up to one pixel and light Gaussian noise; held-out accuracy in the model card."""
    from .data import load_digits
    from .models.classifier import DigitsClassifier

    steps = 3000 if steps is None else steps
    start = time.perf_counter()
    x, y = load_digits("train")
    x_test, y_test = load_digits("test")
    torch.manual_seed(seed)
    net = DigitsClassifier().to(device)

    def loss_fn(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
        xb = torch.roll(x[idx], shifts=shift, dims=(2, 3))
        xb = xb + 0.05 * torch.rand(1, generator=gen) * torch.randn(xb.shape, generator=gen)
        return torch.nn.functional.cross_entropy(net(xb.to(device)), y[idx].to(device))

    ema, losses = _train_loop(out, net, loss_fn, steps=steps, lr=lr, warmup=100, ema_decay=0.99,
                              checkpoint_every=checkpoint_every or 500, seed=seed, desc="digits-classifier")
    ema = ema.cpu()
    with torch.no_grad():
        accuracy = float((ema(x_test).argmax(1) == y_test).float().mean())
    ema.save_pretrained(out)
    card = {"recipe": "digits-classifier",
            "command": f"samplebench train digits-classifier --out DIR --seed {seed} --steps {steps}",
            "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "test_accuracy": accuracy,
            "parameters": sum(p.numel() for p in ema.parameters()),
            "final_loss_last_100": sum(losses[-100:]) / len(losses[-100:]),
            "wall_time_s_this_run": round(time.perf_counter() - start, 1)}
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    return card


RECIPES: dict[str, Callable[..., dict]] = {"digits-unet": train_digits_unet,
                                           "digits-dit": train_digits_dit,
                                           "digits-flow": train_digits_flow,
                                           "digits-lowdiff": train_digits_lowdiff,
                                           "digits-classifier": train_digits_classifier,
                                           "digits-gmm": train_digits_gmm}


def train(recipe: str, out: str | Path, seed: int = 0, device: str = "cpu", steps: int | None = None,
          checkpoint_every: int | None = None) -> dict:
    """Train ``recipe`` into ``out``, resuming its checkpoint there (``checkpoint_every``: steps between
    checkpoints, default the recipe's; it changes no weight)."""
    if recipe not in RECIPES:
        raise unknown("recipe", recipe, RECIPES)
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be >= 1, got {steps}")
    from .models import parse_device

    parse_device(device)
    out = check_out_dir(out)
    if (out / "checkpoint.pt").exists():
        read_checkpoint(out / "checkpoint.pt")  # a bad one is refused before anything is written
    if checkpoint_every is not None and checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    out.mkdir(parents=True, exist_ok=True)
    extra = {} if checkpoint_every is None or recipe == "digits-gmm" else {"checkpoint_every": checkpoint_every}
    return RECIPES[recipe](out, seed=seed, device=device, steps=steps, **extra)
