"""kdx: explainable knowledge distillation (KDExplainer, subtask attention, VAM)."""

from kdx.version import __version__


def load(path, map_location="cpu"):
    """Load any checkpoint kdx writes (file or run directory).

    Returns ``(model, metadata)``; the model is in eval mode on CPU.
    """
    from kdx.engine.checkpoint import load_model

    return load_model(path, map_location=map_location)


__all__ = ["__version__", "load"]
