"""The CIFAR-10 block study: train, summarise, evaluate and compare runs."""
