"""``cnnlab serve`` itself: who may start it where, what it says without its extra, a real process and port."""

import json
import urllib.error
import urllib.request

import pytest

from cnnlab.commands.main import flag, main
from cnnlab.errors import CnnlabError
from cnnlab.serve.server import TOKEN_ENV, is_loopback, resolve_token
from tests.serve.conftest import faces_of, image_bytes, needs_extra, running_service


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                            ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.20", False), ("example.org", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_any_other_address_needs_a_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert resolve_token("127.0.0.1", None) is None
    with pytest.raises(CnnlabError, match=r"^host 0.0.0.0 lets other machines connect.*give token TOKEN \(or set "
                                          r"CNNLAB_SERVE_TOKEN\)") as e:
        resolve_token("0.0.0.0", None)
    assert e.value.worded(flag).startswith("--host 0.0.0.0 lets other machines connect, so the service needs a "
                                           "token: give --token TOKEN (or set CNNLAB_SERVE_TOKEN)")
    assert resolve_token("0.0.0.0", "t0ken-of-16-chars") == "t0ken-of-16-chars"
    monkeypatch.setenv(TOKEN_ENV, "from-env-16-chars")
    assert resolve_token("0.0.0.0", None) == resolve_token("127.0.0.1", None) == "from-env-16-chars"


@needs_extra
def test_the_command_refuses_to_start_open_to_the_network(finished_run, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["serve", str(finished_run), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: --host 0.0.0.0 lets other machines connect, so the service needs a token")


def test_without_the_extra_the_command_says_what_to_install(finished_run, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("fastapi", "uvicorn", "multipart")
                        else real(name, *a))
    assert main(["serve", str(finished_run)]) == 2
    assert capsys.readouterr().err == ("cnnlab: error: cnnlab serve needs fastapi, uvicorn, python-multipart, which are "
                                       "not installed: pip install \"cnnlab[serve]\" (in a checkout: pip install -e "
                                       "\".[serve]\")\n")
    present = {"fastapi": object(), "uvicorn": object(), "multipart": None}  # only python-multipart missing
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: present[name] if name in present
                        else real(name, *a))
    assert main(["serve", str(finished_run)]) == 2
    assert "needs python-multipart, which is not installed: pip install" in capsys.readouterr().err


@needs_extra
def test_a_port_in_use_is_named(finished_run, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(finished_run), "--port", str(port), "--device", "cpu"]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@needs_extra
def test_the_command_serves_on_a_free_port_until_ctrl_c(finished_run, tmp_path):
    with running_service(finished_run, "--gallery", faces_of(finished_run), "--token", "tok", tmp_path=tmp_path) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "health", timeout=30) as r:
            assert json.load(r) == {"status": "ok", "study": "faces"}
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "info", timeout=30)
        assert e.value.code == 401
        boundary = "cnnlab-test"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.png\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + image_bytes() + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(url + "identify?k=2", data=body, method="POST", headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": "Bearer tok"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert [m["rank"] for m in json.load(r)["matches"]] == [1, 2]


def test_the_listening_socket_says_it_is_tcp_so_answers_are_not_held_back():
    """asyncio turns Nagle off (TCP_NODELAY) only on sockets created as IPPROTO_TCP; with protocol 0 each answer
    on a kept-alive connection waited about 40 ms for the client's delayed ACK."""
    import socket

    from cnnlab.serve.server import _listen

    sock = _listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
