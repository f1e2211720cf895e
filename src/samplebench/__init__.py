"""samplebench: a workbench for sampling from pretrained diffusion models."""

__version__ = "0.1.0"
