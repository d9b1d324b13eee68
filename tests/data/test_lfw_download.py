import tarfile

import pytest

from cnnlab.errors import DataError
from cnnlab.data.lfw import LFW_FILES, download_lfw, download_lfw_if_missing

from tests.faces.conftest import make_people


def _mirror(tmp_path):
    """A folder laid out like LFW's site: the archive and the protocol files (made up, tiny)."""
    site = tmp_path / "site"
    site.mkdir()
    people = make_people(tmp_path / "src" / "lfw-deepfunneled", [("Ann_A", 2), ("Bob_B", 1)])
    with tarfile.open(site / "lfw-deepfunneled.tgz", "w:gz") as tar:
        tar.add(people, arcname="lfw-deepfunneled")
    for name in LFW_FILES:
        if name.endswith(".txt"):
            (site / name).write_text("1\n")
    return site


def test_download_unpacks_the_images_and_fetches_the_protocol_files(tmp_path):
    site = _mirror(tmp_path)
    data = download_lfw(tmp_path / "lfw", base_url=site.as_uri(), check_md5=False)
    assert (data / "lfw-deepfunneled" / "Ann_A" / "Ann_A_0002.jpg").is_file()
    for name in LFW_FILES:
        if name.endswith(".txt"):
            assert (data / name).read_text() == "1\n"
    from cnnlab.data.faces import find_people_root

    assert find_people_root(data) == data / "lfw-deepfunneled"
    # A second call finds everything there and fetches nothing.
    (site / "pairs.txt").unlink()
    download_lfw(data, base_url=site.as_uri(), check_md5=False)
    download_lfw_if_missing(data)


def test_a_file_with_the_wrong_md5_is_refused(tmp_path):
    site = _mirror(tmp_path)
    with pytest.raises(DataError, match="md5"):
        download_lfw(tmp_path / "lfw", base_url=site.as_uri())
