"""benchmarks/train_throughput.py at a toy size: its rows, its auto column, its list syntax."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.runtime import Hardware, choose_precision, cpu_features, cpu_isa_cap, select_precision
from tests.conftest import load_benchmark



@pytest.fixture(scope="module")
def throughput():
    return load_benchmark("train_throughput")


def test_rows_are_blocks_by_widths_and_auto_is_the_policys_choice(throughput, tmp_path, capsys):
    out = throughput.main(["--blocks", "A", "E", "--width", "0.125,0.25", "--batch-size", "4", "--steps", "1",
                           "--warmup", "0", "--repeats", "1", "--clock", "cpu", "--json", str(tmp_path / "t.json")])
    assert [(r["blocks"], r["width"]) for r in out["rows"]] == [("A", 0.125), ("A", 0.25), ("E", 0.125), ("E", 0.25)]
    choice = select_precision(torch.device("cpu"), "auto", None)
    picked = throughput.COLUMNS[out["auto"]["column"]]
    assert picked == (choice.precision, choice.channels_last) and out["auto"]["reason"] == choice.reason
    for r in out["rows"]:
        assert r["auto img/s"] == r[out["auto"]["column"] + " img/s"] > 0
        assert r["notebook fp32 img/s"] > 0 and r["auto/notebook"] > 0
    assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["blocks"] == "A"
    printed = capsys.readouterr().out
    name, features = cpu_features()
    extensions = ", ".join(features) or "none of AVX2/AVX512/AVX512-BF16/AMX"
    cap = f"; oneDNN capped by {cpu_isa_cap()}" if cpu_isa_cap() else ""
    assert printed.startswith(f"CPU: {name}; vector extensions: {extensions}{cap}\n")  # the machine before its numbers
    assert "torch " in printed and "thread" in printed


# A CPU without native bf16 (AVX2 only), as the precision policy sees one.
_AVX2_CPU = Hardware("cpu", "test CPU, AVX2 only", cpu_features=("AVX2",))
_TOY = ["--blocks", "A", "--width", "0.125", "--batch-size", "4", "--steps", "1", "--warmup", "0", "--clock", "cpu"]


@pytest.fixture
def avx2_only(throughput, monkeypatch):
    """The benchmark on :data:`_AVX2_CPU`; returns the precisions it trained, one entry per measurement."""
    trained = []
    real = throughput.cnnlab

    def recording(*args, **kw):
        trained.append(args[8])  # the precision
        return real(*args, **kw)

    monkeypatch.setattr(throughput, "probe_hardware", lambda device: _AVX2_CPU)
    monkeypatch.setattr(throughput, "cnnlab", recording)
    return trained


def test_a_column_the_cpu_only_emulates_is_skipped_with_a_note(throughput, avx2_only, tmp_path, capsys):
    out = throughput.main(_TOY + ["--repeats", "2", "--json", str(tmp_path / "t.json")])
    printed = capsys.readouterr().out
    assert "bf16" not in avx2_only and avx2_only.count("fp32") == 4  # two columns, two repeats
    row = out["rows"][0]
    assert row["bf16+CL img/s"] is None and row["repeats"]["bf16+CL"] == []
    assert out["auto"]["column"] == "fp32+CL" and row["auto img/s"] == row["fp32+CL img/s"] > 0
    assert row["auto/best"] is not None and row["auto/best"] <= 1
    warning = choose_precision("bf16", True, _AVX2_CPU).warning
    assert out["emulated"] == {"mode": "skip", "columns": {"bf16+CL": warning}}
    table_row = next(line for line in printed.splitlines() if line.startswith("A "))
    assert "skipped" in table_row
    assert f"bf16+CL: skipped: {warning}" in printed and "is emulated" in warning
    assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["bf16+CL img/s"] is None


def test_an_emulated_column_can_be_measured_once_and_is_marked(throughput, avx2_only, capsys):
    out = throughput.main(_TOY + ["--repeats", "2", "--emulated", "once"])
    printed = capsys.readouterr().out
    assert avx2_only.count("bf16") == 1 and avx2_only.count("fp32") == 4
    row = out["rows"][0]
    assert len(row["repeats"]["bf16+CL"]) == 1 and len(row["repeats"]["fp32+CL"]) == 2
    assert f"{row['bf16+CL img/s']:.1f}*" in printed and "* bf16+CL: one repeat only: bf16 on this CPU" in printed


def test_a_cpu_with_native_bf16_or_a_modern_gpu_emulates_no_column(throughput):
    columns = dict(throughput.COLUMNS)
    zen4 = Hardware("cpu", "AMD EPYC", cpu_bf16=True, cpu_features=("AVX2", "AVX512", "AVX512-BF16"))
    assert throughput.emulated_columns(columns, zen4) == {}
    assert throughput.emulated_columns(columns, Hardware("cuda", "NVIDIA H200", (9, 0))) == {}
    assert list(throughput.emulated_columns(columns, Hardware("cuda", "Tesla T4", (7, 5)))) == ["bf16+CL"]
    capped = Hardware("cpu", "AMD EPYC", cpu_features=("AVX2",), cpu_limit="ONEDNN_MAX_CPU_ISA=AVX2")
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in throughput.emulated_columns(columns, capped)["bf16+CL"]


class _Clock:
    """A clock that each measurement advances by ``cost[config]`` seconds."""

    def __init__(self, cost):
        self.t, self.cost, self.ran = 0.0, cost, []

    def run(self, config):
        self.t += self.cost[config]
        self.ran.append(config)
        return 1.0


def test_repeats_stop_before_one_would_pass_max_seconds(throughput):
    clock = _Clock({"a": 10, "b": 10, "slow": 30})
    times, done, stopped = throughput.measure(["a", "b"], 3, clock.run, 45, now=lambda: clock.t)
    assert done == 2 and clock.ran == ["a", "b"] * 2 and "2 of 3 repeats" in stopped and "--max-seconds 45" in stopped
    clock = _Clock({"a": 10, "b": 10, "slow": 30})
    times, done, stopped = throughput.measure(["slow", "a", "b"], 3, clock.run, 25, now=lambda: clock.t)
    assert clock.ran == ["slow"] and times == {"slow": [1.0], "a": [], "b": []} and "repeat 1 of 3" in stopped
    clock = _Clock({"a": 10, "b": 10, "slow": 30})
    times, done, stopped = throughput.measure(["a", "slow"], 3, clock.run, 0, once=frozenset({"slow"}),
                                              now=lambda: clock.t)
    assert done == 3 and stopped == "" and times == {"a": [1.0] * 3, "slow": [1.0]}


def test_the_default_run_stops_within_its_max_seconds(throughput, monkeypatch, capsys):
    clock = _Clock({})
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clock.t)

    def fake_cnnlab(*args, **kw):
        clock.t += 100  # each configuration 100 s: the first repeat alone is 1600 s
        return 50.0

    monkeypatch.setattr(throughput, "cnnlab", fake_cnnlab)
    monkeypatch.setattr(throughput, "notebook", fake_cnnlab)
    monkeypatch.setattr(throughput, "_PILDataset", lambda images, labels: None)
    out = throughput.main(["--batch-size", "2", "--steps", "1", "--warmup", "0"])
    assert out["seconds"] <= 600 + 100 and out["repeats_done"] == 0
    assert "--max-seconds 600" in out["stopped"] and "time limit:" in capsys.readouterr().out
    assert any(r["auto img/s"] is None for r in out["rows"])


def test_comma_and_space_lists_mean_the_same(throughput):
    assert throughput._list(["A,E"], str, "--blocks") == throughput._list(["A", "E"], str, "--blocks") == ["A", "E"]
    assert throughput._list(["1, 0.25"], float, "--width") == [1.0, 0.25]
    with pytest.raises(SystemExit, match="--width"):
        throughput._list(["one"], float, "--width")


# benchmarks/pack_data.py: the data that travels to a GPU machine.

_PEOPLE = [(f"Person_{c}", 3) for c in "ABCDEFGH"] + [("Solo_X", 1)]


@pytest.fixture(scope="module")
def pack():
    return load_benchmark("pack_data")


def _lfw(root: Path, protocol: bool = True) -> Path:
    """LFW's layout: root/images_deepfunneled/<Name>/, the View 1 and View 2 protocol files beside it."""
    from tests.faces.conftest import make_people, write_pairs

    make_people(root / "images_deepfunneled", _PEOPLE)
    if protocol:
        (root / "peopleDevTrain.txt").write_text("".join(["5\n"] + [f"Person_{c}\t3\n" for c in "ABCGH"]))
        (root / "peopleDevTest.txt").write_text("4\nPerson_D\t3\nPerson_E\t3\nPerson_F\t3\nSolo_X\t1\n")
        write_pairs(root / "pairsDevTest.txt", [([("Person_D", 1, 2), ("Person_E", 1, 3)],
                                                 [("Person_D", 1, "Solo_X", 1), ("Person_E", 2, "Person_F", 1)])],
                    view1=True)
        write_pairs(root / "pairs.txt", [([("Person_A", 1, 2)], [("Person_A", 1, "Person_D", 1)]),
                                         ([("Person_F", 2, 3)], [("Person_B", 1, "Solo_X", 1)])])
    return root


def _unpack(archive: Path, dest: Path) -> Path:
    import tarfile

    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def test_pack_writes_both_archives_in_the_layouts_cnnlab_reads(pack, tmp_path, capsys):
    from PIL import Image

    from cnnlab.config import FaceTrainConfig
    from cnnlab.data.images import center_crop_resize, decode_rgb
    from cnnlab.faces.protocol import load_study_data
    from tests.conftest import write_cifar_folders

    cifar = write_cifar_folders(tmp_path / "cifar", n_train=2, n_test=1)
    lfw = _lfw(tmp_path / "lfw")
    out = tmp_path / "packed"
    assert pack.main(["--cifar-dir", str(cifar), "--lfw-dir", str(lfw), "--out", str(out), "--size", "24"]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'cifar10.tar.xz'}: 30 images" in printed and "MiB" in printed and "--crop 1.0" in printed
    assert sorted(p.name for p in out.iterdir()) == ["cifar10.tar.xz", "lfw-view1.tar.xz"]  # no .part left

    got = _unpack(out / "cifar10.tar.xz", tmp_path / "u")
    original = sorted(p.relative_to(cifar) for p in cifar.rglob("*") if p.is_file())
    assert sorted(p.relative_to(got / "cifar10") for p in (got / "cifar10").rglob("*") if p.is_file()) == original
    assert all((got / "cifar10" / p).read_bytes() == (cifar / p).read_bytes() for p in original)

    _unpack(out / "lfw-view1.tar.xz", tmp_path / "u")
    faces = tmp_path / "u" / "lfw"
    for name in pack.PROTOCOL_FILES:
        assert (faces / name).read_bytes() == (lfw / name).read_bytes()
    packed = faces / "images_deepfunneled" / "Person_D" / "Person_D_0002.jpg"
    with Image.open(packed) as img:
        assert img.size == (24, 24)
        got_pixels = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32))
    source = lfw / "images_deepfunneled" / "Person_D" / "Person_D_0002.jpg"
    want = torch.from_numpy(np.asarray(center_crop_resize(decode_rgb(source), 24, 0.6), dtype=np.float32))
    assert (got_pixels - want).abs().mean() < 6  # the same crop, up to JPEG
    assert len(list((faces / "images_deepfunneled").rglob("*.jpg"))) == 25

    cfg = FaceTrainConfig(data_dir=str(faces), protocol="lfw-view1", crop=1.0, image_size=24, backbone="tiny",
                          weights="none", val_fraction=0.4, device="cpu")
    data = load_study_data(cfg)
    assert data.protocol == "lfw-view1" and len(data.test_pairs.same) == 4


def test_pack_refuses_over_the_limit_and_keeps_nothing(pack, tmp_path, capsys):
    from tests.conftest import write_cifar_folders

    cifar = write_cifar_folders(tmp_path / "cifar", n_train=2, n_test=1)
    out = tmp_path / "packed"
    rc = pack.main(["--cifar-dir", str(cifar), "--lfw-dir", str(_lfw(tmp_path / "lfw")), "--out", str(out),
                    "--size", "24", "--limit-mib", "0.001"])
    err = capsys.readouterr().err
    assert rc == 2 and "over the --limit-mib 0.001 MiB" in err and "nothing was kept" in err
    assert list(out.iterdir()) == []


def test_pack_names_a_missing_protocol_file_and_invents_view1_only_when_asked(pack, tmp_path, capsys):
    from cnnlab.data.lfw import read_pairs, read_people
    from tests.conftest import write_cifar_folders
    from tests.faces.conftest import write_pairs

    cifar = write_cifar_folders(tmp_path / "cifar", n_train=2, n_test=1)
    lfw = _lfw(tmp_path / "lfw", protocol=False)
    args = ["--cifar-dir", str(cifar), "--lfw-dir", str(lfw), "--out", str(tmp_path / "packed"), "--size", "24"]
    assert pack.main(args) == 2
    err = capsys.readouterr().err
    assert "pairsDevTest.txt" in err and "pairs.txt" in err and "--invent-view1" in err
    assert list((tmp_path / "packed").iterdir()) == []

    write_pairs(lfw / "pairs.txt", [([("Person_A", 1, 2)], [("Person_A", 1, "Person_D", 1)]),
                                    ([("Person_F", 2, 3)], [("Person_B", 1, "Solo_X", 1)])])
    assert pack.main(args + ["--invent-view1"]) == 0
    faces = _unpack(tmp_path / "packed" / "lfw-view1.tar.xz", tmp_path / "u") / "lfw"
    train, test = read_people(faces / "peopleDevTrain.txt"), read_people(faces / "peopleDevTest.txt")
    assert set(train.names).isdisjoint(test.names) and set(train.names) | set(test.names) == {n for n, _ in _PEOPLE}
    pairs = read_pairs(faces / "pairsDevTest.txt")
    assert {n for n, _ in pairs.left + pairs.right} <= set(test.names) and int(pairs.same.sum()) == len(pairs.same) // 2
    assert not (lfw / "pairsDevTest.txt").exists()  # invented into the archive only


def test_pack_leaves_earlier_archives_alone_without_force(pack, tmp_path):
    out = tmp_path / "packed"
    out.mkdir()
    (out / "cifar10.tar.xz").write_bytes(b"earlier")
    with pytest.raises(SystemExit, match="--force"):
        pack.main(["--cifar-dir", str(tmp_path), "--lfw-dir", str(tmp_path), "--out", str(out)])
    assert (out / "cifar10.tar.xz").read_bytes() == b"earlier"
    with pytest.raises(SystemExit, match="--crop must be in"):
        pack.main(["--cifar-dir", str(tmp_path), "--lfw-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                   "--crop", "1.5"])


# benchmarks/gpu_check.sh: one command, parts that fail one by one.

_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _check(*args, scratch=None):
    import os
    import subprocess

    env = {**os.environ, "PYTHON": "false"}  # a Python that always fails: every part that needs one fails fast
    if scratch is not None:
        env["SCRATCH"] = str(scratch)
    return subprocess.run(["bash", str(_CHECK), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_gpu_check_goes_on_after_a_failed_part_and_records_each(tmp_path):
    # Archives that are not xz and no working Python: every part fails, fast, and each is recorded.
    for name in ("c.tar.xz", "l.tar.xz"):
        (tmp_path / name).write_bytes(b"not xz")
    out = tmp_path / "out"
    r = _check("--dry-run", tmp_path / "c.tar.xz", tmp_path / "l.tar.xz", out, scratch=tmp_path / "scratch")
    assert r.returncode == 0, r.stderr
    status = [line.split() for line in (out / "status.txt").read_text().splitlines()]
    assert [s[0] for s in status] == ["info", "unpack", "tests", "cifar", "faces", "view2", "tables"]
    assert all(s[1] != "0" for s in status[1:])  # each failed, and the script still ran the next
    assert all((out / f"{s[0]}.log").is_file() for s in status)


def test_gpu_check_refuses_missing_archives_and_a_used_output_folder(tmp_path):
    r = _check(tmp_path / "none.tar.xz", tmp_path / "none.tar.xz", tmp_path / "out")
    assert r.returncode == 2 and "none.tar.xz is not a file" in r.stderr and not (tmp_path / "out").exists()
    (tmp_path / "c.tar.xz").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "status.txt").write_text("earlier\n")
    r = _check(tmp_path / "c.tar.xz", tmp_path / "c.tar.xz", tmp_path / "out")
    assert r.returncode == 2 and "already holds a check" in r.stderr
    assert (tmp_path / "out" / "status.txt").read_text() == "earlier\n"
    r = _check(tmp_path / "c.tar.xz")
    assert r.returncode == 2 and "usage: gpu_check.sh" in r.stderr


# benchmarks/faces_photos.py: LFW pairs as photo-like images.



@pytest.fixture(scope="module")
def photos():
    return load_benchmark("faces_photos")


def test_photos_are_larger_cluttered_canvases_stored_upright_or_with_exif(photos, tmp_path):
    from PIL import Image

    from cnnlab.data.images import decode_rgb

    root = tmp_path / "people"
    (root / "Ann_Lee").mkdir(parents=True)
    face = np.zeros((250, 250, 3), dtype=np.uint8)
    face[60:190, 80:170] = (250, 220, 190)
    for k in range(1, 9):
        Image.fromarray(face).save(root / "Ann_Lee" / f"Ann_Lee_{k:04d}.jpg")
    files = [f"Ann_Lee/Ann_Lee_{k:04d}.jpg" for k in range(1, 9)]
    assert photos.make_photos(root, files, tmp_path / "out") == 8
    assert photos.make_photos(root, files, tmp_path / "out") == 0  # made once, kept
    tags = []
    for rel in files:
        path = tmp_path / "out" / rel
        with Image.open(path) as im:
            tags.append(im.getexif().get(photos.EXIF_ORIENTATION, 1))
            stored = im.size
        upright = decode_rgb(path)
        assert min(upright.size) >= 250 * 0.45 and max(upright.size) >= 480
        if tags[-1] in (6, 8):
            assert stored == upright.size[::-1]  # stored turned; decoding turns it back
    assert set(tags) <= {1, 3, 6, 8} and any(t in (6, 8) for t in tags)
    # The same image gives the same photo, whatever else is made beside it.
    a = np.asarray(decode_rgb(tmp_path / "out" / files[0]))
    photos.make_photos(root, files[:1], tmp_path / "again")
    assert np.array_equal(a, np.asarray(decode_rgb(tmp_path / "again" / files[0])))


def test_distractor_photos_put_a_larger_blurred_face_of_another_person_behind_the_subject(photos, tmp_path):
    from PIL import Image

    from cnnlab.data.images import decode_rgb

    root = tmp_path / "people"
    rng = np.random.default_rng(0)
    files = []
    for name in ("Ann_Lee", "Bo_Chen"):
        (root / name).mkdir(parents=True)
        for k in (1, 2):
            face = rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)  # all fine detail, nothing flat
            Image.fromarray(face).save(root / name / f"{name}_{k:04d}.png")
            files.append(f"{name}/{name}_{k:04d}.png")
    assert photos.make_photos(root, files, tmp_path / "d", distractors=True) == 4
    for rel in files:
        img = decode_rgb((tmp_path / "d" / rel).with_suffix(".jpg"))
        assert 720 <= img.width <= 960 and img.height >= 0.6 * 720 - 1
    # The same image among the same other people gives the same photo, distractor included.
    a = np.asarray(decode_rgb(tmp_path / "d" / "Ann_Lee" / "Ann_Lee_0001.jpg"))
    photos.make_photos(root, files[:1] + files[2:], tmp_path / "again", distractors=True)
    assert np.array_equal(a, np.asarray(decode_rgb(tmp_path / "again" / "Ann_Lee" / "Ann_Lee_0001.jpg")))


def test_the_largest_face_reference_chooses_by_size_and_puts_cnnlab_s_choice_back(photos):
    from cnnlab.data import align

    real = align.ranked
    small, large = (align.Face((0.0, 0.0, s, s), np.zeros((5, 2), np.float32), 0.9) for s in (10.0, 50.0))
    with photos.choosing("largest") as cache:
        assert cache is not None and cache.is_dir()
        assert align.ranked(None, [small, large]) == [large, small]
    assert align.ranked is real
    with photos.choosing("ranked") as cache:
        assert cache is None and align.ranked is real


# Every script under benchmarks/ says how long it takes, and those that could run long stop in time.

_SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.*"))


@pytest.mark.parametrize("script", [p.name for p in _SCRIPTS if p.suffix == ".sh"])
def test_every_shell_benchmark_states_its_time_in_its_header(script):
    header = [line for line in (_SCRIPTS[0].parent / script).read_text().splitlines() if line.startswith("#")]
    assert any(line.startswith("# Time: ") for line in header), f"{script}: no '# Time:' line in its header"


@pytest.mark.parametrize("script", [p.stem for p in _SCRIPTS if p.suffix == ".py"])
def test_every_python_benchmark_states_its_time_in_help(script, capsys):
    module = load_benchmark(script)
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())  # as argparse wraps it
    assert re.search(r"Time: .*\b2 (idle )?cores", printed), f"{script} --help says nothing of its time on 2 cores"
    assert "Time: " in module.__doc__


def test_serve_load_sends_no_request_after_max_seconds():
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(0.05)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        row = load_benchmark("serve_load").load(url, "/verify", [(b"x", "text/plain")], 2, 10_000, max_seconds=0.3)
    finally:
        server.shutdown()
        server.server_close()
    assert 2 <= row["requests"] < 100 and row["errors"] == 0  # at most 0.3 s of 50 ms answers on two connections
    assert row["seconds"] < 2


def test_face_detectors_stop_taking_images_at_max_seconds(tmp_path):
    import time

    from PIL import Image

    detectors = load_benchmark("face_detectors")
    (tmp_path / "Ann").mkdir()
    files = []
    for k in range(20):
        Image.new("RGB", (60, 60), (200, 150, 120)).save(tmp_path / "Ann" / f"Ann_{k:04d}.jpg")
        files.append(f"Ann/Ann_{k:04d}.jpg")

    def slow_nothing(rgb):
        time.sleep(0.02)
        return []

    row = detectors.measure("slow", slow_nothing, tmp_path, None, files, max_seconds=0.15)
    assert 1 <= row["images"] < 20 and row["found in photo"] == 0.0
    assert detectors.measure("slow", slow_nothing, tmp_path, None, files[:2])["images"] == 2  # 0: no limit


# --- benchmarks/recipes.py ---------------------------------------------------------------------


def test_recipes_benchmark_prints_one_table_of_recipe_by_variant_by_budget(cifar_batches, tmp_path, capsys):
    recipes = load_benchmark("recipes")
    out = recipes.main(["--toy", "--data-dir", str(cifar_batches), "--recipes", "study,fast", "--blocks", "E",
                        "--budgets", "1s,epochs", "--out", str(tmp_path / "bench"), "--json", str(tmp_path / "r.json")])
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].startswith("recipes benchmark: 4 runs (study,fast x E x 1s, epochs) on cpu")
    assert "expected duration about" in lines[0] and "threads" in lines[0]  # the machine before its numbers
    rows = out["rows"]
    assert [(r["recipe"], r["variant"], r["budget"]) for r in rows] == [
        ("study", "E", "1s"), ("study", "E", "epochs"), ("fast", "E", "1s"), ("fast", "E", "epochs")]
    for r in rows:
        assert 0 <= r["best_val_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1 and r["train_seconds"] > 0
        assert r["images_per_second"] > 0 and r["machine"].startswith("cpu (") and "threads" in r["machine"]
        assert (r["test_accuracy_tta"] is not None) == (r["recipe"] == "fast")  # the fast recipe reports TTA
        assert (r["time_used_seconds"] is not None) == (r["budget"] == "1s")
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].split(" | ")[:5] == ["| recipe", "variant", "budget", "epochs", "best val acc (%)"]
    assert len(table) == 1 + len(rows)
    best = {(b["variant"], b["budget"]): b["recipe"] for b in out["best_by_validation"]}
    for (variant, budget), recipe in best.items():
        candidates = [r for r in rows if (r["variant"], r["budget"]) == (variant, budget)]
        assert max(candidates, key=lambda r: r["best_val_accuracy"])["recipe"] == recipe
        assert f"best recipe by validation accuracy for {variant}, {budget}: {recipe}" in printed
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == rows
    # A second run reuses the finished runs: the same rows, without training.
    again = recipes.main(["--toy", "--data-dir", str(cifar_batches), "--recipes", "study,fast", "--blocks", "E",
                          "--budgets", "1s,epochs", "--out", str(tmp_path / "bench")])
    assert again["rows"] == rows


def test_recipes_benchmark_refuses_a_bad_budget_before_training(cifar_batches, tmp_path):
    from cnnlab.errors import ConfigError

    recipes = load_benchmark("recipes")
    with pytest.raises(ConfigError, match="expected a positive duration such as 90s, 20m or 1.5h"):
        recipes.main(["--toy", "--data-dir", str(cifar_batches), "--budgets", "1s,soon", "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()


# benchmarks/face_throughput.py: cnnlab's face pipeline against a per-image torchvision loop.


def test_face_throughput_times_the_plain_loop_and_cnnlab_and_stops_starting_at_max_seconds(tmp_path):
    bench = load_benchmark("face_throughput")
    out = tmp_path / "t.json"
    r = bench.main(["--toy", "--device", "cpu", "--batch-sizes", "16,32", "--json", str(out)])
    assert [(row["path"].split(" (")[0], row["batch"]) for row in r["rows"]] == \
        [("plain fp32", 64), ("cnnlab", 16), ("cnnlab", 32)]
    assert all(row["images/s"] > 0 and row["first step s"] > 0 for row in r["rows"])
    assert json.loads(out.read_text())["rows"][1]["precision"].split(" ")[0] in ("fp32", "bf16", "fp16")
    short = bench.main(["--toy", "--device", "cpu", "--batch-sizes", "16,32", "--max-seconds", "1e-9"])
    assert len(short["rows"]) == 1 and short["left_out"] == ["cnnlab batch 16", "cnnlab batch 32"]
