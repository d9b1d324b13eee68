"""Face detection and five-point alignment, on scikit-image's astronaut photo (public domain) and shapes."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from cnnlab.data.align import (ALIGNED_MARKER, TEMPLATE_112, NoFace, align, detector, prepare, similarity,
                               template)
from cnnlab.data.faces import load_faces


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())  # 512x512, one face


def _grey(size=(120, 100)) -> Image.Image:
    return Image.new("RGB", size, (128, 128, 128))


def _on_canvas(face: Image.Image, scale: float, at: tuple[int, int], size=(400, 300), angle=0.0) -> Image.Image:
    canvas = Image.new("RGB", size, (40, 90, 40))
    f = face.resize((int(face.width * scale), int(face.height * scale)), Image.Resampling.BICUBIC)
    f = f.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    canvas.paste(f, at)
    return canvas


@pytest.mark.parametrize("size", [112, 64, 160])
def test_the_template_maps_onto_itself(size):
    m = similarity(template(size), size)
    assert np.allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    assert np.allclose(template(112), TEMPLATE_112)


def test_a_known_similarity_is_undone():
    # Landmarks moved by a rotation of 20 degrees, a scale of 2.5 and a shift: the transform found takes them back.
    a, s, t = np.deg2rad(20), 2.5, np.array([40.0, -7.0])
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    moved = TEMPLATE_112 @ rot.T + t
    m = similarity(moved, 112)
    back = moved @ m[:, :2].T + m[:, 2]
    assert np.allclose(back, TEMPLATE_112, atol=1e-4)


def test_degenerate_landmarks_are_an_error():
    with pytest.raises(Exception, match="degenerate"):
        similarity(np.zeros((5, 2)), 112)


def test_the_astronaut_is_found_with_five_plausible_landmarks(astronaut):
    faces = detector().detect(astronaut)
    assert len(faces) == 1
    f = faces[0]
    x0, y0, x1, y1 = f.box
    lm = f.landmarks
    assert f.score > 0.9 and 150 < x0 < x1 < 300 and 30 < y0 < y1 < 200
    assert np.all((lm[:, 0] > x0) & (lm[:, 0] < x1) & (lm[:, 1] > y0) & (lm[:, 1] < y1))
    assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # image-left before image-right
    assert lm[:2, 1].max() < lm[2, 1] < lm[3:, 1].min()  # eyes above the nose above the mouth
    d = f.to_dict()
    assert len(d["box"]) == 4 and len(d["landmarks"]) == 5 and 0 < d["score"] <= 1


def test_alignment_puts_the_face_in_the_same_place_wherever_it_is(astronaut):
    # The same face, small and tilted on a canvas, aligns to (almost) the same crop as the photo itself.
    ref = np.asarray(prepare(astronaut, 64, 0.6, "detect").image, dtype=np.float32)
    photo = _on_canvas(astronaut, 0.45, (150, 40), angle=12)
    p = prepare(photo, 64, 0.6, "detect", "photo")
    assert p.how == "aligned" and p.faces == 1 and p.image.size == (64, 64)
    moved = np.asarray(p.image, dtype=np.float32)
    centred = np.asarray(prepare(photo, 64, 0.6, "center").image, dtype=np.float32)
    assert np.abs(moved - ref).mean() < 20  # a few grey levels: resampling, landmarks a pixel off
    assert np.abs(centred - ref).mean() > 2 * np.abs(moved - ref).mean()


def test_no_face_detect_refuses_auto_falls_back_center_never_looks():
    img = _grey()
    with pytest.raises(NoFace, match="grey.png: no face found"):
        prepare(img, 32, 0.5, "detect", "grey.png")
    p = prepare(img, 32, 0.5, "auto", "grey.png")
    assert p.how == "center" and p.face is None and p.image.size == (32, 32)
    assert prepare(img, 32, 0.5, "center").how == "center"
    assert detector().detect(Image.new("RGB", (8, 8))) == []  # below the smallest window: nothing, no error


def test_two_faces_the_largest_is_used(astronaut):
    face = astronaut.crop((150, 20, 320, 220))
    canvas = _on_canvas(face, 1.0, (20, 40), size=(600, 320))
    canvas.paste(face.resize((85, 100)), (400, 60))
    faces = detector().detect(canvas)
    assert len(faces) == 2 and faces[0].area > faces[1].area and faces[0].box[0] < 300
    p = prepare(canvas, 32, 0.6, "auto", "two.png")
    assert p.faces == 2 and p.face.box == faces[0].box


def test_a_tight_crop_is_found_inside_a_border(astronaut):
    f = detector().detect(astronaut)[0]
    x0, y0, x1, y1 = (int(v) for v in f.box)
    tight = astronaut.crop((x0 + 6, y0 + 12, x1 - 6, y1 - 4))
    found = detector().detect_padded(tight)
    assert found and np.abs(found[0].landmarks - (f.landmarks - [x0 + 6, y0 + 12])).max() < 6
    assert prepare(tight, 32, 0.6, "auto").how == "aligned"


def test_align_fills_outside_pixels_with_the_edge():
    img = Image.new("RGB", (40, 40), (200, 10, 10))
    out = np.asarray(align(img, template(112) * 0.2, 112))  # the face would be far bigger than the image
    assert out.shape == (112, 112, 3) and (out == [200, 10, 10]).all()


# --------------------------------------------------------------------------- folders


def _people(root, astronaut):
    """Two people: A with two face photos and a blank, B with two face photos (different framings)."""
    face = astronaut.crop((130, 0, 340, 240))
    for name, shots in {"A": [(1.0, (10, 10)), (0.7, (120, 60))], "B": [(0.8, (60, 20)), (0.6, (200, 100))]}.items():
        (root / name).mkdir(parents=True)
        for i, (scale, at) in enumerate(shots):
            _on_canvas(face, scale, at).save(root / name / f"{name}_{i}.png")
    _grey().save(root / "A" / "A_blank.png")
    return root


def test_a_folder_detect_skips_faceless_images_and_says_which(tmp_path, astronaut, caplog):
    root = _people(tmp_path / "people", astronaut)
    with caplog.at_level(logging.INFO, logger="cnnlab.data.faces"):
        fs = load_faces(root, image_size=32, align="detect", cache_dir=tmp_path / "c")
    assert fs.files == ["A/A_0.png", "A/A_1.png", "B/B_0.png", "B/B_1.png"]
    assert fs.alignment["aligned"] == 4 and fs.alignment["no_face"] == 1
    assert "skipped 1 image(s) in which no face was found (--align detect): A/A_blank.png" in caplog.text
    # auto keeps it, centre-cropped, and counts it; the cache tells the two apart.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cnnlab.data.faces"):
        auto = load_faces(root, image_size=32, align="auto", cache_dir=tmp_path / "c")
    assert len(auto) == 5 and auto.alignment["center"] == 1 and auto.alignment["examples"] == ["A/A_blank.png"]
    assert "no face found in 1 image(s), which are centre-cropped instead" in caplog.text
    # A second load comes from the cache and says the same.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cnnlab.data.faces"):
        again = load_faces(root, image_size=32, align="detect", cache_dir=tmp_path / "c")
    assert again.files == fs.files and "from the cache" in caplog.text and "no face was found" in caplog.text
    center = load_faces(root, image_size=32, align="center", cache_dir=tmp_path / "c")
    assert len(center) == 5 and not np.array_equal(center.images[:4].numpy(), fs.images.numpy())


def test_faces_align_writes_an_aligned_folder_that_trains_as_it_is(tmp_path, astronaut, capsys):
    from cnnlab.commands.main import main

    src = _people(tmp_path / "people", astronaut)
    dst = tmp_path / "aligned"
    assert main(["faces", "align", str(src), str(dst), "--size", "48"]) == 0
    assert "4 of 5 images aligned" in capsys.readouterr().out
    report = json.loads((dst / ALIGNED_MARKER).read_text())
    assert report["finished"] and report["aligned"] == 4 and report["no_face"] == ["A/A_blank.png"]
    files = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.jpg"))
    assert files == ["A/A_0.jpg", "A/A_1.jpg", "B/B_0.jpg", "B/B_1.jpg"]
    assert all(Image.open(dst / f).size == (48, 48) for f in files)

    # Run again: it continues, keeping what is there.
    (dst / "B" / "B_1.jpg").unlink()
    assert main(["faces", "align", str(src), str(dst), "--size", "48"]) == 0
    report = json.loads((dst / ALIGNED_MARKER).read_text())
    assert report["kept_from_before"] == 3 and report["aligned"] == 1

    # Loaded with any --align, the aligned folder's images are used as they are.
    fs = load_faces(dst, image_size=48, align="detect", cache_dir=tmp_path / "c")
    assert len(fs) == 4 and fs.alignment["as_is"] == 4
    assert np.array_equal(fs.images[0].permute(1, 2, 0).numpy(), np.asarray(Image.open(dst / "A/A_0.jpg")))


def test_faces_align_refuses_a_folder_it_did_not_write_or_one_inside_src(tmp_path, astronaut, capsys):
    from cnnlab.commands.main import main

    src = _people(tmp_path / "people", astronaut)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["faces", "align", str(src), str(other)]) == 2
    assert "not empty and was not written by cnnlab faces align" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "mine"
    assert main(["faces", "align", str(src), str(src / "out")]) == 2
    assert "inside SRC" in capsys.readouterr().err
    assert main(["faces", "align", str(src), str(tmp_path / "a"), "--size", "48"]) == 0
    assert main(["faces", "align", str(src), str(tmp_path / "a"), "--size", "64"]) == 2
    assert "same SRC and --size" in capsys.readouterr().err
