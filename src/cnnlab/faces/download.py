"""LFW from its public site: the deep-funneled images and the protocol files (``--download``).

Labeled Faces in the Wild (Huang, Ramesh, Berg and Learned-Miller, 2007),
deep-funneled version (Huang, Mattar, Lee and Learned-Miller, NIPS 2012):
5,749 people, 13,233 aligned 250x250 JPEG images, and the text files of
View 1 (development) and View 2 (the 10-fold test). Each file is checked
against its md5; an interrupted download resumes (see
:func:`cnnlab.data.download.download_url`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cnnlab.data.download import download_url, extract_archive
from cnnlab.errors import DataError

logger = logging.getLogger(__name__)

LFW_URL = "http://vis-www.cs.umass.edu/lfw/"
ARCHIVE = "lfw-deepfunneled.tgz"
# md5 of each file as published on the site (the archive's as torchvision's LFW dataset checks it).
LFW_FILES: dict[str, str] = {
    ARCHIVE: "68331da3eb755a505a502b5aacb3c201",
    "pairsDevTrain.txt": "4f27cbf15b2da4a85c1907eb4181ad21",
    "pairsDevTest.txt": "5132f7440eb68cf58910c8a45a2ac10b",
    "peopleDevTrain.txt": "54eaac34beb6d042ed3a7d883e247a21",
    "peopleDevTest.txt": "e4bf5be0a43b5dcd9dc5ccfcb8fb19c5",
    "pairs.txt": "9f1ba174e4e1c508ff7cdf10ac338a7d",
    "people.txt": "450f0863dd89e85e73936a6d71a3474b",
}


def _has_people(data_dir: Path) -> bool:
    return data_dir.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in data_dir.iterdir())


def download_lfw(data_dir: str | os.PathLike, base_url: str = LFW_URL, check_md5: bool = True) -> Path:
    """Fetch whatever of LFW deep-funneled is missing from ``data_dir`` and return ``data_dir``.

    Afterwards ``data_dir`` holds ``lfw-deepfunneled/<Name>/<Name>_NNNN.jpg``
    and the protocol files, the layout ``--data-dir`` and ``--protocol
    lfw-view1`` expect. The archive is kept beside them (delete it to save
    100 MB). ``base_url`` may be a ``file://`` folder holding the same files
    (for a machine without internet, with files fetched elsewhere).
    """
    data_dir = Path(data_dir).expanduser()
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} is a file, expected a folder")
    data_dir.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"
    for name, md5 in LFW_FILES.items():
        if name == ARCHIVE:
            if _has_people(data_dir):
                continue
            archive = download_url(base + name, data_dir / name, md5 if check_md5 else None)
            logger.info("extracting %s into %s", archive, data_dir)
            extract_archive(archive, data_dir)
        elif not (data_dir / name).is_file():
            download_url(base + name, data_dir / name, md5 if check_md5 else None)
    return data_dir


def download_lfw_if_missing(data_dir: str | os.PathLike) -> None:
    """:func:`download_lfw` unless ``data_dir`` already holds person folders and every protocol file."""
    data_dir = Path(data_dir).expanduser()
    if _has_people(data_dir) and all((data_dir / n).is_file() for n in LFW_FILES if n != ARCHIVE):
        return
    download_lfw(data_dir)
