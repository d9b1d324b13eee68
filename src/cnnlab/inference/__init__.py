"""Using a trained run: the one layer the commands, the Python API, ``cnnlab serve`` and ``export`` stand on.

- :mod:`cnnlab.inference.runs` opens a run for use: its configuration, its
  best network (only for a finished run, with finite weights, unless told
  otherwise), a face run's threshold, precision and align mode
  (:func:`~cnnlab.inference.runs.open_face_run`), a CIFAR run's class names
  (:func:`~cnnlab.inference.runs.open_cifar_run`).
- :mod:`cnnlab.inference.images` makes images ready for the network, through
  the one decoder (:func:`cnnlab.data.images.decode_rgb`) and as training made
  them ready.
- :mod:`cnnlab.inference.gallery` embeds a gallery of people (cached) and
  searches it.
- :mod:`cnnlab.inference.faces` (:class:`~cnnlab.inference.faces.FaceVerifier`)
  and :mod:`cnnlab.inference.cifar` (:class:`~cnnlab.inference.cifar.Classifier`)
  are its public face: images in, the answers the commands print out. Each
  calls the network through one function given to it (``network``), the run's
  own unless a caller shares the network among requests (``cnnlab serve``'s
  micro-batcher).

This package imports none of its modules here, so that a module may import its
siblings without a cycle; :mod:`cnnlab.api` gathers the public names.
"""
