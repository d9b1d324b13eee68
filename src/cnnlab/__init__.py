"""cnnlab: the CIFAR-10 CNN block study and Siamese face verification, in PyTorch."""

__version__ = "0.1.0"
