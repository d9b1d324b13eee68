"""The page in a real browser: headless Chromium, driven by Playwright, against ``cnnlab serve`` on a free port.

Needs the Python package ``playwright`` and a Chromium: Debian's ``chromium``
(/usr/bin/chromium) is used where it is installed, else Playwright's own
(``python -m playwright install chromium``). Skips cleanly without them.
"""

import re
import shutil
from pathlib import Path

import pytest

from tests.serve.conftest import faces_of, needs_extra, running_service

pytestmark = needs_extra

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs: pip install playwright")
expect = sync_api.expect


def _chromium() -> str | None:
    """The Chromium to drive: Debian's where there is one, else None for Playwright's own download."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=_chromium(), headless=True)
        except Exception as e:  # noqa: BLE001 -- no Chromium here: Debian's absent and Playwright's not downloaded
            pytest.skip(f"no Chromium to drive ({str(e).splitlines()[0]}); install Debian's chromium or run "
                        "python -m playwright install chromium")
        yield b
        b.close()


def test_the_page_verifies_two_uploaded_photos_and_identifies_one(browser, finished_run, tmp_path):
    from cnnlab import FaceVerifier

    people = faces_of(finished_run)
    a, b = people / "Person_A" / "Person_A_0001.jpg", people / "Person_B" / "Person_B_0002.jpg"
    expected = FaceVerifier.from_run(finished_run, device="cpu").verify(a, b)
    with running_service(finished_run, "--gallery", people, tmp_path=tmp_path) as url:
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        requested = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(url)
        expect(page.locator("#run-info")).to_contain_text("Face run")

        page.set_input_files("#file-a", str(a))
        page.set_input_files("#file-b", str(a))  # the same photo twice: certainly the same person
        expect(page.locator("#verdict")).to_have_text("Same person")
        page.set_input_files("#file-b", str(b))  # a new B compares again
        want = "Same person" if expected["same_person"] else "Different people"
        expect(page.locator("#distance")).to_contain_text(f"distance {expected['distance']:.3f}")
        expect(page.locator("#verdict")).to_have_text(want)
        assert page.get_attribute("#crop-a", "src").startswith("data:image/png;base64,")
        assert page.locator("#crop-b").evaluate("img => img.naturalWidth") == 32  # the run's image size
        shot = tmp_path / "verify.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

        page.click("text=Identify in the gallery")
        page.set_input_files("#file-probe", str(people / "Person_C" / "Person_C_0003.jpg"))
        expect(page.locator("#matches li").first).to_contain_text("1. Person C")
        thumb = page.locator("#matches li img").first
        expect(thumb).to_have_attribute("src", re.compile(r"^/gallery/\d+/thumbnail$"))
        thumb.evaluate("img => img.decode()")  # loaded and decoded, from the service
        assert thumb.evaluate("img => img.naturalWidth") == 48
        page.screenshot(path=str(tmp_path / "identify.png"), full_page=True)
        assert not page.is_visible("#error")
        assert requested and all(u.startswith(url) or u.startswith(("data:", "blob:")) for u in requested)
        page.close()


def test_the_page_shows_an_upload_error_from_the_service(browser, finished_run, tmp_path):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("this is not a photo")
    with running_service(finished_run, tmp_path=tmp_path) as url:
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#run-info")).to_contain_text("Face run")
        page.set_input_files("#file-a", str(not_an_image))
        page.set_input_files("#file-b", str(faces_of(finished_run) / "Person_A" / "Person_A_0001.jpg"))
        expect(page.locator("#error")).to_contain_text("field 'a': not an image file PIL can read")
        page.close()


def test_the_page_of_a_cifar_run_shows_the_top_five_classes(browser, cifar_run, tmp_path):
    from cnnlab import Classifier
    from tests.serve.conftest import image_bytes

    picture = tmp_path / "picture.png"
    picture.write_bytes(image_bytes(size=(64, 48), seed=3))
    top = Classifier.from_run(cifar_run, device="cpu").predict(picture, k=5)["top"]
    with running_service(cifar_run, tmp_path=tmp_path) as url:
        page = browser.new_page()
        page.goto(url)
        expect(page.locator("#run-info")).to_contain_text("CIFAR run · blocks E")
        page.set_input_files("#file-cifar", str(picture))
        rows = page.locator("#predictions li")
        expect(rows).to_have_count(5)
        assert rows.locator("span:first-child").all_inner_texts() == [t["class"] for t in top]
        expect(rows.first).to_contain_text(f"{100 * top[0]['probability']:.1f}%")
        page.close()
