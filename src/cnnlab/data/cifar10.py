"""CIFAR-10: find it, download it, decode it once, split it.

Two layouts are read and told apart automatically:

- the official python batches, ``cifar-10-batches-py/`` with ``data_batch_1..5``,
  ``test_batch`` and ``batches.meta`` (inside ``--data-dir`` or as ``--data-dir``);
- image folders, ``train/<class>/*`` and ``test/<class>/*``, in any format PIL reads.

Decoded images are a uint8 tensor (N, 3, 32, 32), cached on disk so that a
second start takes seconds.
"""

from __future__ import annotations

import logging
import pickle
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cnnlab.data import cache
from cnnlab.data.images import list_files, load_many, resize_exact
from cnnlab.errors import ConfigError, DataError, param

logger = logging.getLogger(__name__)

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SIZE = 32
_CACHE_VERSION = 2  # 2: images are decoded upright (EXIF orientation applied); older caches hold them as stored


@dataclass
class Cifar10:
    train_images: torch.Tensor  # (N, 3, 32, 32) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    layout: str  # "batches" or "folders"
    root: Path

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --- official batches ------------------------------------------------------------

# The only globals the official batches reference (numpy arrays pickled by Python 2
# era numpy, or by Python 3 numpy, which stores array bytes through codecs.encode).
# Nothing else may be built.
_SAFE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _Refused(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise _Refused(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        import importlib

        return getattr(importlib.import_module(module), name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except _Refused as e:
        raise DataError(f"{path}: not a CIFAR-10 batch: it holds objects a batch does not ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read CIFAR-10 batch ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 -- garbage bytes fail in any of a dozen ways (Overflow, Memory, Unicode, ...)
        raise DataError(f"{path}: truncated or corrupted CIFAR-10 batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict in a CIFAR-10 batch, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official batch: images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    d = _unpickle(path)
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{path}: a CIFAR-10 batch needs 'data' (an array) and 'labels'")
    labels = _labels(path, labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE * IMAGE_SIZE:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"{path}: labels outside 0..{len(CLASSES) - 1}")
    return data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE), labels


def _labels(path: Path, labels: object) -> np.ndarray:
    """'labels' as int64 (N,): a list of integers or a 1-D integer array, nothing else (3.7 is not a class)."""
    if isinstance(labels, np.ndarray):
        ok = labels.ndim == 1 and labels.dtype.kind in "iu"
        found = f"a {labels.dtype} array of shape {labels.shape}"
    elif isinstance(labels, list):
        bad = [v for v in labels if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
        ok = not bad
        found = f"a list holding {bad[0]!r}" if bad else ""
    else:
        ok, found = False, f"{type(labels).__name__} {repr(labels)[:40]}"
    if not ok:
        raise DataError(f"{path}: not a CIFAR-10 batch: 'labels' must be a list of integers (class indices), "
                        f"found {found}")
    return np.asarray(labels, dtype=np.int64).reshape(-1)


def _read_classes(folder: Path) -> list[str]:
    meta = folder / "batches.meta"
    if not meta.is_file():
        return list(CLASSES)
    names = _unpickle(meta).get("label_names")
    if not isinstance(names, list) or len(names) != len(CLASSES):
        raise DataError(f"{meta}: expected 'label_names' with {len(CLASSES)} names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _batch_files(folder: Path) -> list[Path]:
    files = [folder / n for n in (*TRAIN_BATCHES, TEST_BATCH)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{folder}: CIFAR-10 batches are incomplete, missing {', '.join(missing)}")
    return files


def _decode_batches(folder: Path) -> dict:
    files = _batch_files(folder)
    parts = [read_batch(f) for f in tqdm(files, desc="reading CIFAR-10 batches", leave=False, disable=None)]
    train_x = np.concatenate([p[0] for p in parts[:-1]])
    train_y = np.concatenate([p[1] for p in parts[:-1]])
    return {
        "train_images": torch.from_numpy(train_x),
        "train_labels": torch.from_numpy(train_y),
        "test_images": torch.from_numpy(np.ascontiguousarray(parts[-1][0])),
        "test_labels": torch.from_numpy(parts[-1][1]),
        "classes": _read_classes(folder),
    }


# --- image folders ----------------------------------------------------------------


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _escaped(name: str) -> str:
    return name.encode("ascii", "backslashreplace").decode("ascii")


def _class_difference(train: list[str], test: list[str]) -> str:
    """The class folders only one split has; names that are equal but for Unicode normalisation
    (``café`` written NFC in one, NFD in the other) are paired, with their code points escaped."""
    only_train, only_test = set(train) - set(test), set(test) - set(train)
    by_nfc = {unicodedata.normalize("NFC", n): n for n in only_test}
    parts = []
    for name in sorted(only_train):
        twin = by_nfc.get(unicodedata.normalize("NFC", name))
        if twin is not None:
            only_test.discard(twin)
            parts.append(f"train/{_escaped(name)} and test/{_escaped(twin)} are the same name in different Unicode "
                         "normalisation; rename one so both are written alike")
        else:
            parts.append(f"only in train/: {name}")
    parts += [f"only in test/: {n}" for n in sorted(only_test)]
    return "; ".join(parts)


def _folder_listing(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    train_classes = [d.name for d in _class_dirs(root / "train")]
    test_classes = [d.name for d in _class_dirs(root / "test")]
    if not train_classes:
        raise DataError(f"{root / 'train'}: no class folders (expected train/<class>/<image>)")
    if train_classes != test_classes:
        raise DataError(f"{root}: train/ and test/ have different class folders ({_class_difference(train_classes, test_classes)})")
    listing = {}
    for split in ("train", "test"):
        items = []
        for label, name in enumerate(train_classes):
            files = list_files(root / split / name)
            if not files:
                raise DataError(f"{root / split / name}: class folder holds no image files")
            items += [(f, label) for f in files]
        listing[split] = items
    return train_classes, listing


def _decode_folders(root: Path, classes: list[str], listing: dict, skip_bad: bool) -> dict:
    out: dict = {"classes": classes}
    for split in ("train", "test"):
        paths = [p for p, _ in listing[split]]
        labels = np.array([y for _, y in listing[split]], dtype=np.int64)

        def bar(it, total, split=split):
            return tqdm(it, total=total, desc=f"decoding {split} images", unit="img", leave=False, disable=None)

        images, kept, _ = load_many(paths, lambda im: resize_exact(im, IMAGE_SIZE), skip_bad=skip_bad, progress=bar)
        if not kept:
            raise DataError(f"{root / split}: none of the {len(paths)} image files could be decoded")
        out[f"{split}_images"] = torch.from_numpy(images)
        out[f"{split}_labels"] = torch.from_numpy(labels[kept])
    return out


# --- entry point -------------------------------------------------------------------


class NoData(DataError):
    """The data folder does not exist or is empty; ``advice`` says how to get CIFAR-10 into it, as the
    caller offers it (see :meth:`advising`)."""

    def __init__(self, problem: str, advice: str = "CIFAR-10 can be downloaded into it"):
        self.problem, self.advice = problem, advice
        super().__init__(f"{problem} ({advice})" if advice else problem)

    def advising(self, advice: str) -> "NoData":
        return NoData(self.problem, advice)


def detect_layout(data_dir: Path) -> tuple[str, Path]:
    """``("batches", folder)`` or ``("folders", root)``; a :class:`DataError` otherwise (a :class:`NoData`
    where there is nothing yet)."""
    if not data_dir.exists():
        raise NoData(f"{param('data_dir')} {data_dir} does not exist")
    if not data_dir.is_dir():
        raise DataError(f"{param('data_dir')} {data_dir} is a file, expected a folder")
    for folder in (data_dir / BATCHES_DIR, data_dir):
        if (folder / TRAIN_BATCHES[0]).exists() or (folder / TEST_BATCH).exists():
            return "batches", folder
    if (data_dir / "train").is_dir() and (data_dir / "test").is_dir():
        return "folders", data_dir
    if not any(data_dir.iterdir()):
        raise NoData(f"{param('data_dir')} {data_dir} is empty")
    raise DataError(
        f"{param('data_dir')} {data_dir}: holds neither {BATCHES_DIR}/ (the official python batches) "
        "nor train/<class>/ and test/<class>/ image folders"
    )


OFFLINE = ("use a copy of CIFAR-10 already on disk as the data folder: the official cifar-10-batches-py folder "
           "(or the folder holding it), or train/<class>/ and test/<class>/ image folders")
"""How to do without the download, in the library's words; a command says it with its own option."""


def download(data_dir: Path) -> Path:
    """Fetch and unpack the official batches into ``data_dir``; a failed download leaves no folder it made.

    A :class:`~cnnlab.data.download.DownloadFailed` says how to do without the network (:data:`OFFLINE`).
    """
    from cnnlab.data.download import DownloadFailed, download_url, extract_archive, made_folder

    with made_folder(data_dir):
        try:
            archive = download_url(URL, data_dir / "cifar-10-python.tar.gz", md5=MD5)
        except DownloadFailed as e:
            raise e.advising(OFFLINE) from None
        extract_archive(archive, data_dir)
    return data_dir / BATCHES_DIR


def load_cifar10(
    data_dir: str | Path,
    download_if_missing: bool = False,
    skip_bad_images: bool = False,
    cache_root: str | Path | None = None,
) -> Cifar10:
    data_dir = Path(data_dir).expanduser()
    if download_if_missing and not (data_dir / BATCHES_DIR / TEST_BATCH).is_file():
        try:
            detect_layout(data_dir)
        except DataError:
            download(data_dir)
    layout, root = detect_layout(data_dir)

    if layout == "batches":
        files = _batch_files(root)
        meta = root / "batches.meta"
        key_files = files + ([meta] if meta.is_file() else [])
        classes, listing = None, None
    else:
        classes, listing = _folder_listing(root)
        key_files = [p for split in ("train", "test") for p, _ in listing[split]]

    key = cache.fingerprint(key_files, root, layout, skip_bad_images, _CACHE_VERSION)
    cache_file = cache.cache_dir(cache_root) / f"cifar10-{key}.pt"
    meta = {"layout": layout, "image_size": IMAGE_SIZE, "files": len(key_files), "skip_bad_images": skip_bad_images}
    data = cache.load_checked(cache_file, key=key, meta=meta, what="CIFAR-10 cache",
                              check=lambda d: _cache_problem(d, classes, listing, skip_bad_images))
    if data is None:
        logger.info("decoding CIFAR-10 from %s (%s layout); cached afterwards in %s", root, layout, cache_file)
        data = _decode_batches(root) if layout == "batches" else _decode_folders(root, classes, listing,
                                                                                    skip_bad_images)
        cache.save_checked(cache_file, data, key=key, meta=meta, what="CIFAR-10 cache")
    return Cifar10(
        train_images=data["train_images"],
        train_labels=data["train_labels"],
        test_images=data["test_images"],
        test_labels=data["test_labels"],
        classes=list(data["classes"]),
        layout=layout,
        root=root,
    )


def _cache_problem(data: dict, classes: list[str] | None, listing: dict | None, skip_bad: bool) -> str | None:
    """What is wrong with a cached decode, given what the source files say it must hold (None: nothing)."""
    names = data.get("classes")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return "it holds no class names"
    if len(names) != (len(classes) if classes is not None else len(CLASSES)) or (classes and names != classes):
        return f"it names {len(names)} classes, the source files {len(classes or CLASSES)}"
    for split in ("train", "test"):
        problem = cache.labelled_images_problem(data.get(f"{split}_images"), data.get(f"{split}_labels"),
                                                size=IMAGE_SIZE, classes=len(names), name=f"{split} images")
        if problem:
            return problem
        if listing is not None:
            n, files = len(data[f"{split}_labels"]), len(listing[split])
            if n > files or (n != files and not skip_bad):
                return f"it holds {n} {split} images where the folders hold {files} image files"
    return None


# --- split -----------------------------------------------------------------------


def default_val_per_class(class_counts: torch.Tensor) -> torch.Tensor:
    """1,000 a class on the full set (20%), the same fraction on smaller sets."""
    return torch.clamp(class_counts // 5, max=1000)


def stratified_split(
    labels: torch.Tensor, val_per_class: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, stratified (train_idx, val_idx), disjoint, each sorted.

    One permutation, one stable sort by class and a rank within the class: no
    membership tests, so it is linear in practice (the sort aside).
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    n = len(labels)
    counts = torch.bincount(labels)
    if val_per_class is None:
        k = default_val_per_class(counts)
    else:
        too_small = (counts > 0) & (counts <= val_per_class)
        if too_small.any():
            c = int(torch.nonzero(too_small)[0])
            raise ConfigError(
                f"{param('val_per_class')} {val_per_class}: class {c} has only {int(counts[c])} training images"
            )
        k = torch.full_like(counts, val_per_class)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    order = perm[torch.argsort(labels[perm], stable=True)]  # grouped by class, random within
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[labels[order]]
    is_val = rank < k[labels[order]]
    return order[~is_val].sort().values, order[is_val].sort().values


def subsample(indices: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """A seeded subset of ``n`` of ``indices`` (all of them when ``n`` is None or larger)."""
    if n is None or n >= len(indices):
        return indices
    g = torch.Generator().manual_seed(seed + 1)
    return indices[torch.randperm(len(indices), generator=g)[:n]].sort().values
