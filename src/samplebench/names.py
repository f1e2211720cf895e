"""The names the command line offers in its help, here so that building the parser imports neither torch nor a
model (``tests/test_cli.py`` holds each tuple equal to the registry it mirrors)."""

DEFAULT_MODEL = "digits"
MODELS = ("digits", "gaussian", "digits-gmm", "digits-dit", "digits-flow", "digits-lowdiff")  # models.embedded.EMBEDDED
SOLVERS = ("ddim", "euler", "ddpm", "heun", "dpmpp-2m", "dpmpp-3m", "unipc-bh1", "unipc-bh2", "deis",
           "ipndm")  # samplers.solver_names()
ALIGN_METHODS = ("dts", "dts-star", "best-of-n", "fk")  # align.METHODS
GRIDS = ("logsnr", "time-uniform", "time-quadratic", "karras")  # samplers.grids.GRID_KINDS
LEARNED_GRIDS = ("gits", "dmn", "ld3")  # samplers.grids.LEARNED_KINDS
RECIPES = ("digits-unet", "digits-dit", "digits-flow", "digits-lowdiff", "digits-classifier", "digits-gmm")  # train.RECIPES
EXTRACTORS = ("digits", "inception")  # metrics.extractors.EXTRACTORS
MODES = ("clean", "legacy_pytorch", "legacy_tensorflow")  # metrics.extractors.MODES
DTYPES = ("float32", "float16", "bfloat16")  # models.DTYPES
POTENTIALS = ("diff", "max")  # align.particles.POTENTIALS
UPSAMPLE_MODES = ("bilinear", "nearest", "bicubic")  # models.lowdiff.UPSAMPLE_MODES
METRICS = ("fid", "kid", "is")  # evaluate.METRICS


def nearest(name: object, valid) -> str:
    """`` (did you mean 'x'?)`` for the valid name closest to ``name`` (``difflib``), or "" when none is close: the
    hint every message that lists valid names gives."""
    import difflib

    if not isinstance(name, str):
        return ""
    valid = [str(v) for v in valid]
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6) or difflib.get_close_matches(
        name.lower().replace("_", "-"), valid, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close and close[0] != name else ""
