"""What every served run shares: the token, the size limits, errors as 4xx JSON, no CORS, the page, /health."""

import pytest

from cnnlab.errors import CnnlabError
from tests.serve.conftest import image_bytes, needs_extra

pytestmark = needs_extra


@pytest.fixture(scope="module")
def guarded(finished_run):
    """A face service with a token, small uploads and one allowed origin."""
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    app = create_app(finished_run, token="s3cret-token", max_upload_bytes=50_000, device="cpu",
                     cors_origins=["http://localhost:3000"])
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _pair(**kw):
    return {"a": ("a.png", image_bytes(**kw)), "b": ("b.png", image_bytes(seed=1, **kw))}


def test_every_request_but_health_needs_the_bearer_token(guarded):
    assert guarded.get("/health").json() == {"status": "ok", "study": "faces"}
    for method, path in [("get", "/info"), ("get", "/"), ("get", "/static/app.js"), ("post", "/verify"),
                         ("get", "/docs"), ("get", "/openapi.json"), ("get", "/nowhere")]:
        r = getattr(guarded, method)(path)
        assert r.status_code == 401, path
        assert "Authorization: Bearer" in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
    assert guarded.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = {"Authorization": "Bearer s3cret-token"}
    assert guarded.get("/info", headers=ok).json()["study"] == "faces"
    r = guarded.post("/verify", files=_pair(), headers=ok)
    assert r.status_code == 200 and "distance" in r.json()


def test_the_page_opened_with_the_token_keeps_it_in_a_strict_cookie(guarded):
    r = guarded.get("/?token=s3cret-token", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"  # the token leaves the address bar
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("cnnlab_token=s3cret-token") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert guarded.cookies.get("cnnlab_token") == "s3cret-token"  # kept as a browser keeps it
    assert guarded.get("/info").status_code == 200 and guarded.get("/").status_code == 200
    guarded.cookies.clear()
    assert guarded.get("/info").status_code == 401
    assert guarded.get("/?token=wrong", follow_redirects=False).status_code == 401


def test_an_oversized_upload_is_a_413_and_the_service_goes_on(guarded):
    ok = {"Authorization": "Bearer s3cret-token"}
    big = image_bytes(fmt="BMP", size=(200, 200))  # 120 kB, over the 50 kB limit
    r = guarded.post("/verify", files={"a": ("a.bmp", big), "b": ("b.png", image_bytes())}, headers=ok)
    assert r.status_code == 413 and r.json()["error"].startswith("field 'a': the file is 120,054 bytes, larger than the "
                                                                "limit of 50,000 bytes")
    huge = b"x" * 2_000_000  # the whole request over every limit: refused from its Content-Length
    r = guarded.post("/embed", content=huge, headers={**ok, "Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "request body is larger than" in r.json()["error"]
    head = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    r = guarded.post("/embed", content=iter([head] + [huge[:600_000]] * 4),  # streamed, no Content-Length:
                     headers={**ok, "Content-Type": "multipart/form-data; boundary=x"})  # counted as it comes
    assert r.status_code == 413 and "request body is larger than" in r.json()["error"]
    assert guarded.post("/verify", files=_pair(), headers=ok).status_code == 200


@pytest.mark.parametrize("files, status, message", [
    ({"a": ("a.png", b""), "b": ("b.png", image_bytes())}, 422, "field 'a': the file is empty"),
    ({"a": ("a.jpg", b"<html>not a photo</html>"), "b": ("b.png", image_bytes())}, 422,
     "field 'a': not an image file PIL can read"),
    ({"a": ("a.png", image_bytes())}, 400, "field 'b': missing"),
    ({"a": ("a.png", image_bytes()), "b": ("b.png", image_bytes(size=(5, 5)))}, 422,
     "field 'b': the image is 5x5 pixels, smaller than 8x8"),
])
def test_bad_uploads_are_4xx_json_naming_the_field(face_client, files, status, message):
    r = face_client.post("/verify", files=files)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert r.json()["error"].startswith(message)
    assert face_client.post("/verify", files=_pair()).status_code == 200  # and the service goes on


def test_a_decompression_bomb_upload_is_a_413(face_client):
    from tests.serve.test_uploads import png_claiming

    r = face_client.post("/embed", files={"image": ("small.png", png_claiming(12_000, 9_000))})
    assert r.status_code == 413 and r.json()["error"].startswith("field 'image': the image is 12000x9000 pixels")


def test_a_request_that_is_no_form_is_a_400(face_client):
    r = face_client.post("/verify", json={"a": "a.jpg", "b": "b.jpg"})
    assert r.status_code == 400 and "field 'a': missing" in r.json()["error"]
    r = face_client.post("/verify", content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and "error" in r.json()


def test_a_bug_is_a_500_without_a_traceback_and_the_service_goes_on(face_client, monkeypatch):
    fv = face_client.app.state.service.fv
    real = fv.verify
    monkeypatch.setattr(fv, "verify", lambda a, b: 1 / 0)
    r = face_client.post("/verify", files=_pair())
    assert r.status_code == 500 and r.json() == {"error": "internal error (ZeroDivisionError); the service log has "
                                                          "the details"}
    monkeypatch.setattr(fv, "verify", real)
    assert face_client.post("/verify", files=_pair()).status_code == 200


def test_no_cors_unless_an_origin_is_given(face_client, guarded):
    origin = {"Origin": "http://localhost:3000"}
    assert "access-control-allow-origin" not in face_client.get("/health", headers=origin).headers
    pre = {**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    assert "access-control-allow-origin" not in face_client.options("/verify", headers=pre).headers
    r = guarded.options("/verify", headers=pre)  # a preflight carries no token: answered before the check
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
    other = guarded.options("/verify", headers={**pre, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_the_page_is_self_contained(face_client):
    import re

    page = face_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for asset, kind in [("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")]:
        r = face_client.get(asset)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert not re.search(r"https?://", r.text)  # nothing from elsewhere: no CDN, no font
    assert not re.search(r"(src|href)=\"https?://", page.text)
    assert face_client.get("/static/../app.py").status_code == 404


def test_a_folder_that_is_no_run_is_refused_with_the_reason(tmp_path):
    from cnnlab.serve.app import create_app

    with pytest.raises(CnnlabError, match="does not exist"):
        create_app(tmp_path / "nope")
    with pytest.raises(CnnlabError, match=r"holds no cnnlab run \(no config.yaml\)"):
        create_app(tmp_path)
    (tmp_path / "config.yaml").write_text("seed: 0\nepochs: 3\n")
    with pytest.raises(CnnlabError, match="neither a face run's config .* nor a CIFAR run's"):
        create_app(tmp_path)
