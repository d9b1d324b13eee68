"""What a hostile or careless hand does to a running service: gallery files swapped for links after the start,
tokens a cookie or a header cannot carry as they are, tokens too weak for the network."""

import os
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest

from cnnlab.commands.main import flag, main
from cnnlab.errors import CnnlabError
from cnnlab.serve.server import TOKEN_ENV, resolve_token
from tests.serve.conftest import faces_of, image_bytes, needs_extra

IMAGE = "Person_A/Person_A_0001.jpg"


@pytest.fixture
def gallery(finished_run, tmp_path) -> Path:
    """A copy of the tests' gallery that a test may change, and beside it a secret no one should be sent."""
    folder = Path(shutil.copytree(faces_of(finished_run), tmp_path / "gallery"))
    secret = tmp_path / "outside" / "Person_A_0001.jpg"
    secret.parent.mkdir()
    secret.write_bytes(image_bytes(fmt="JPEG", size=(64, 64), seed=7))
    return folder


@pytest.fixture
def service(finished_run, gallery):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    with TestClient(create_app(finished_run, gallery=gallery, device="cpu"), raise_server_exceptions=False) as c:
        yield c


def _index(client, name: str = IMAGE) -> int:
    return client.app.state.service.gallery.names.index(name)


def _refused(r, status: int, *parts: str) -> str:
    assert r.status_code == status and r.headers["content-type"] == "application/json", r.text[:200]
    message = r.json()["error"]
    for p in parts:
        assert p in message
    return message


@needs_extra
@pytest.mark.parametrize("seen_before", [False, True])
def test_a_gallery_file_replaced_by_a_link_out_after_the_start_is_not_served(service, gallery, seen_before):
    i = _index(service)
    if seen_before:  # its thumbnail made once already: a thumbnail kept in memory is no way around the check
        assert service.get(f"/gallery/{i}/thumbnail").status_code == 200
    (gallery / IMAGE).unlink()
    (gallery / IMAGE).symlink_to(gallery.parent / "outside" / "Person_A_0001.jpg")
    _refused(service.get(f"/gallery/{i}/thumbnail"), 403,
             f"gallery image {i} ({IMAGE}) is not served: it now leads to a file outside the gallery folder")
    assert service.get(f"/gallery/{_index(service, 'Person_B/Person_B_0001.jpg')}/thumbnail").status_code == 200


@needs_extra
def test_a_person_folder_replaced_by_a_link_out_is_not_served(service, gallery):
    i = _index(service)
    shutil.rmtree(gallery / "Person_A")
    (gallery / "Person_A").symlink_to(gallery.parent / "outside", target_is_directory=True)
    _refused(service.get(f"/gallery/{i}/thumbnail"), 403, f"gallery image {i} ({IMAGE})", "outside the gallery")


@needs_extra
def test_a_link_that_stays_inside_the_gallery_is_served(service, gallery):
    i = _index(service)
    (gallery / IMAGE).unlink()
    (gallery / IMAGE).symlink_to(gallery / "Person_A" / "Person_A_0002.jpg")
    r = service.get(f"/gallery/{i}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"


@needs_extra
def test_a_link_swapped_in_only_while_the_file_is_opened_is_caught(service, gallery, monkeypatch):
    """The race a check-then-open would lose: the outside file is opened, the path is put back at once."""
    i, path, real_open = _index(service), gallery / IMAGE, os.open
    kept = gallery.parent / "kept.jpg"

    def open_during_a_swap(p, flags, *a, **kw):
        if not str(p).endswith(IMAGE):
            return real_open(p, flags, *a, **kw)
        path.rename(kept)
        path.symlink_to(gallery.parent / "outside" / "Person_A_0001.jpg")
        try:
            return real_open(p, flags, *a, **kw)
        finally:
            path.unlink()
            kept.rename(path)

    monkeypatch.setattr(os, "open", open_during_a_swap)
    _refused(service.get(f"/gallery/{i}/thumbnail"), 409, f"gallery image {i} ({IMAGE}) was replaced while it "
                                                          "was being read")
    monkeypatch.undo()
    assert service.get(f"/gallery/{i}/thumbnail").status_code == 200  # the file as it is again


@needs_extra
def test_a_gallery_file_gone_or_no_longer_a_file_is_named(service, gallery):
    i, j = _index(service), _index(service, "Person_A/Person_A_0002.jpg")
    (gallery / IMAGE).unlink()
    _refused(service.get(f"/gallery/{i}/thumbnail"), 404, f"gallery image {i} ({IMAGE}) no longer exists")
    (gallery / "Person_A" / "Person_A_0002.jpg").unlink()
    os.mkfifo(gallery / "Person_A" / "Person_A_0002.jpg")  # opening a FIFO to read would wait for a writer
    _refused(service.get(f"/gallery/{j}/thumbnail"), 404, f"gallery image {j} (Person_A/Person_A_0002.jpg) is no "
                                                          "longer a regular file")


@needs_extra
def test_a_link_out_at_the_start_is_said_to_be_refused_not_missing(finished_run, gallery):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    (gallery / "Person_A" / "Person_A_0009.jpg").symlink_to(gallery.parent / "outside" / "Person_A_0001.jpg")
    with TestClient(create_app(finished_run, gallery=gallery, device="cpu")) as client:
        i, n = _index(client, "Person_A/Person_A_0009.jpg"), len(client.app.state.service.gallery.names)
        message = _refused(client.get(f"/gallery/{i}/thumbnail"), 403,
                           f"gallery image {i} (Person_A/Person_A_0009.jpg) is not served: it leads, through a "
                           "link, to a file outside the gallery folder")
        assert "no gallery image" not in message
        _refused(client.get(f"/gallery/{n}/thumbnail"), 404,
                 f"no gallery image {n}: the gallery holds {n} images, numbered 0 to {n - 1}")


# --- tokens ------------------------------------------------------------------------------------------------

ODD_TOKENS = ["with a space inside it", 'semi;colon,comma"quote', "per%25cent+plus=equals",
              "n\u00e4ive-t\u00f8ken-\u2713"]


def _guarded(token: str):
    """Only the guard in front of a page: what the token does, without a run behind it."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import Guard

    app = FastAPI()
    app.get("/")(lambda: {"page": True})
    app.get("/info")(lambda: {"info": True})
    app.add_middleware(Guard, token=token, max_body=1000)
    return TestClient(app)


@needs_extra
@pytest.mark.parametrize("token", ODD_TOKENS)
def test_the_page_logs_in_with_any_token_the_service_takes(token):
    with _guarded(token) as client:
        r = client.get(f"/?token={quote(token, safe='')}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert r.headers["set-cookie"].startswith(f"cnnlab_token={quote(token, safe='')};")  # no quotes around
        assert client.get("/").json() == {"page": True} and client.get("/info").json() == {"info": True}
        client.cookies.clear()
        assert client.get("/info").status_code == 401
        assert client.get("/info", headers={"Authorization": f"Bearer {token}".encode()}).status_code == 200


@needs_extra
def test_the_page_logs_in_with_a_spaced_token_on_a_real_run(finished_run):
    from fastapi.testclient import TestClient

    from cnnlab.serve.app import create_app

    token = "open sesame, twenty chars"
    with TestClient(create_app(finished_run, token=token, device="cpu")) as client:
        r = client.get("/?token=open+sesame%2C+twenty+chars")  # as a browser's form or address bar sends it
        assert r.status_code == 200 and r.url.path == "/" and "text/html" in r.headers["content-type"]
        assert client.get("/info").json()["study"] == "faces"


@pytest.mark.parametrize("token, why", [
    ("x", "needs at least 16 characters other than whitespace, and it has 1"),
    ("a" + " " * 20 + "b", "needs at least 16 characters other than whitespace, and it has 2"),
    ("fifteen-chars-x", "and it has 15"),
    (" " * 20, "starts or ends with whitespace, which an HTTP header cannot carry"),
    ("sixteen-chars-ok\n", "starts or ends with whitespace"),
    ("sixteen\x07chars-ok\x1b", "holds control characters ('\\x07', '\\x1b'), which an HTTP header cannot carry"),
])
def test_a_token_for_the_network_must_be_strong_and_sendable(monkeypatch, token, why):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(CnnlabError, match="token given by token ") as e:  # the parameter; the command: --token
        resolve_token("0.0.0.0", token)
    assert why in str(e.value) and "token given by --token " in e.value.worded(flag)
    monkeypatch.setenv(TOKEN_ENV, token)
    with pytest.raises(CnnlabError, match=f"token given by {TOKEN_ENV}"):
        resolve_token("192.168.1.20", None)


def test_strong_tokens_pass_and_loopback_takes_short_ones(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert resolve_token("0.0.0.0", "0123456789abcdef") == "0123456789abcdef"
    assert resolve_token("::", "with a space inside it") == "with a space inside it"
    assert resolve_token("127.0.0.1", "tok") == "tok"  # this machine only: the user's own choice
    with pytest.raises(CnnlabError, match="starts or ends with whitespace"):
        resolve_token("127.0.0.1", "tok ")  # no header could ever carry it back


@needs_extra
def test_the_command_says_the_token_rule_once(finished_run, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["serve", str(finished_run), "--host", "0.0.0.0", "--port", "0", "--token", "x"]) == 2
    err = capsys.readouterr().err
    assert err == ("cnnlab: error: --host 0.0.0.0 lets other machines connect, so the token given by --token needs at "
                   "least 16 characters other than whitespace, and it has 1: make one with e.g. openssl rand -hex "
                   "16\n")


@needs_extra
def test_the_app_refuses_a_token_no_header_can_carry(finished_run):
    from cnnlab.serve.app import create_app

    with pytest.raises(CnnlabError, match="the token starts or ends with whitespace"):
        create_app(finished_run, token=" padded ", device="cpu")
