"""Using a trained run from Python: :class:`FaceVerifier` for a face run, :class:`Classifier` for a CIFAR run.

    from cnnlab import FaceVerifier
    fv = FaceVerifier.from_run("runs/view1")
    fv.verify("a.jpg", "b.jpg")          # {"distance": .., "threshold": .., "same_person": .., "faces": ..}

Results have the shape the CLI's ``--json`` prints: ``verify`` as ``faces verify``,
``identify`` as ``faces identify``, ``Classifier.predict`` as ``cifar predict``.

Images may be given as file paths, PIL images or uint8 numpy arrays (H, W, 3)
in RGB order, each at least 8x8 pixels and at most about 89 megapixels, as
files must be; each is decoded exactly as in training (upright 8-bit RGB; for
faces the run's align mode: the face detected and aligned, or the centre
crop, at the run's size; 32x32 for CIFAR). The CLI's ``faces verify``,
``faces identify`` and ``cifar predict`` are built on these classes.

The classes live in :mod:`cnnlab.inference`, the layer every use of a trained
run stands on; this module gathers its public names.
"""

from __future__ import annotations

from cnnlab.inference.cifar import Classifier
from cnnlab.inference.faces import FaceVerifier, check_k, pair_verdict
from cnnlab.inference.gallery import Gallery
from cnnlab.inference.runs import CifarRun, FaceRun, open_cifar_run, open_face_run

__all__ = ["CifarRun", "Classifier", "FaceRun", "FaceVerifier", "Gallery", "check_k", "open_cifar_run",
           "open_face_run", "pair_verdict"]
