import os
import tempfile

import pytest
import torch

# Tests never read or write the user's cache (reference statistics, results database, Inception weights) and never
# download: one fresh cache folder per test session, shared by the subprocesses the tests start.
os.environ["SAMPLEBENCH_CACHE"] = tempfile.mkdtemp(prefix="samplebench-test-cache-")
os.environ.pop("SAMPLEBENCH_INCEPTION_WEIGHTS", None)
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tiny_unet():
    """A tiny randomly initialised UNet2DModel (fixed seed)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()
