"""cnnlab: the CIFAR-10 CNN block study and Siamese face verification, in PyTorch.

``from cnnlab import FaceVerifier, Classifier`` gives the Python API of a trained
run (:mod:`cnnlab.api`); it is imported on first use, so ``import cnnlab`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["Classifier", "FaceVerifier", "__version__"]


def __getattr__(name: str):
    if name in ("FaceVerifier", "Classifier"):
        import importlib

        return getattr(importlib.import_module("cnnlab.api"), name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
