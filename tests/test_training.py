"""Training recipes: smoke runs of each, exact resumption after a kill, and the shipped classifier's accuracy."""

import json

import pytest
import torch

from samplebench.cli import main
from samplebench.data import load_digits
from samplebench.models.classifier import load_classifier
from samplebench.train import _train_loop


def test_shipped_classifier_accuracy_at_least_97_percent():
    x, y = load_digits("test")
    with torch.no_grad():
        accuracy = float((load_classifier()(x).argmax(1) == y).float().mean())
    assert accuracy >= 0.97, accuracy


@pytest.mark.parametrize("recipe", ["digits-unet", "digits-classifier"])
def test_recipe_smoke(tmp_path, recipe):
    out = tmp_path / recipe
    assert main(["train", recipe, "--out", str(out), "--steps", "3"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["steps"] == 3 and card["recipe"] == recipe
    assert (out / "checkpoint.pt").exists()


def _tiny_run(out, kill_at=None, steps=6):
    out.mkdir(exist_ok=True)
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    calls = []

    def loss_fn(gen):
        calls.append(1)
        if kill_at is not None and len(calls) == kill_at:
            raise KeyboardInterrupt  # a kill between two checkpoints
        x = torch.randn(8, 3, generator=gen)
        return (net(x) - x.sum(1, keepdim=True)).pow(2).mean()

    ema, losses = _train_loop(out, net, loss_fn, steps=steps, lr=1e-2, warmup=2, ema_decay=0.5,
                              checkpoint_every=2, seed=3, desc="t")
    return net, ema, losses


def test_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path):
    net_a, ema_a, losses_a = _tiny_run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tmp_path / "b", kill_at=4)  # dies during step 4; the checkpoint holds step 2
    net_b, ema_b, losses_b = _tiny_run(tmp_path / "b")
    assert losses_a == losses_b
    assert all(torch.equal(p, q) for p, q in zip(net_a.parameters(), net_b.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(ema_a.parameters(), ema_b.parameters()))


def test_same_seed_same_weights(tmp_path):
    _, ema_a, _ = _tiny_run(tmp_path / "a")
    _, ema_c, _ = _tiny_run(tmp_path / "c")
    assert all(torch.equal(p, q) for p, q in zip(ema_a.parameters(), ema_c.parameters()))


def test_bad_training_input(capsys, tmp_path):
    assert main(["train", "digits-unet", "--out", str(tmp_path / "x"), "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_killed_digits_unet_recipe_resumes_to_byte_identical_weights(tmp_path):
    """SIGKILL a few steps past a checkpoint of the real recipe, start it again: the saved pipeline's weights are the
    bytes of an uninterrupted run (one thread everywhere: CPU kernels may round differently with more)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["train", "digits-unet", "--steps", "12", "--checkpoint-every", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "samplebench", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (killed / "checkpoint.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.01)
    time.sleep(0.3)  # a few steps past the checkpoint at step 4
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model_index.json").exists()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--out", str(killed)]) == 0
        assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    finally:
        torch.set_num_threads(threads)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (killed / weights).read_bytes() == (tmp_path / "straight" / weights).read_bytes()
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["losses"] == torch.load(
        tmp_path / "straight" / "checkpoint.pt", weights_only=True)["losses"]


def test_digits_flow_recipe_saves_a_flow_model_read_as_it_was_trained(tmp_path):
    """The flow recipe's folder loads as a flow-matching DiT: the denoiser reads the network's output as the
    velocity eps - x_0 at network timestep 1000 t, the convention the recipe trains with."""
    import torch

    from samplebench.models import Conditioning, load_model
    from samplebench.schedules import FlowMatching

    out = tmp_path / "flow"
    assert main(["train", "digits-flow", "--out", str(out), "--steps", "3"]) == 0
    model = load_model(str(out))
    assert isinstance(model.schedule, FlowMatching) and model.prediction_type == "flow"
    assert model.num_classes == 10 and model.pipe.uem is None and model.data_mean is not None
    assert model.default_grid == "flow-shift:1"  # the scheduler's shift, as its pipeline samples
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 7])
    pred = model.denoiser(Conditioning(class_labels=labels), 2)(x, 0.4)
    with torch.no_grad():
        v = model.pipe.transformer(x, timestep=torch.full((2,), 400.0), class_labels=labels).sample
    torch.testing.assert_close(pred.denoised, x - 0.4 * v, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred.eps, x + 0.6 * v, rtol=1e-5, atol=1e-5)
