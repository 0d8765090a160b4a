"""Who may use the studio: `huabu studio` refuses to listen beyond this machine without a login, and with one,
gradio's login guards the page's API and files (checked against a live studio on 127.0.0.1)."""

from __future__ import annotations

import pytest
from ui_support import serving, ui_settings


@pytest.fixture
def launches(monkeypatch, huabu_env):
    """`huabu studio` runs whose launch is recorded instead of served."""
    from huabu.ui import app

    monkeypatch.delenv("HUABU_STUDIO_AUTH", raising=False)
    launched = []
    monkeypatch.setattr(app.Studio, "launch", lambda self, host, port, quiet, auth: launched.append((host, auth)))
    return launched


@pytest.mark.parametrize("options", [["--host", "0.0.0.0"], ["--listen"], ["--host", "192.168.1.5"],
                                     ["--host", "studio.example"], ["--listen", "--auth-file", "/dev/null"]])
def test_listening_beyond_loopback_needs_a_login(launches, capsys, options):
    from huabu.cli import main as cli

    assert cli.main(["studio", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to serve the studio on ") and "--auth user:password" in err
    assert err.count("\n") == 1 and launches == []


def test_login_options(launches, monkeypatch, tmp_path, capsys):
    from huabu.cli import main as cli

    logins = tmp_path / "logins.txt"
    logins.write_text("# studio users\nann:s3cret:with,colon\n\nbo:pw\n", encoding="utf-8")
    assert cli.main(["studio", "--listen", "--auth", "ann:secret,bo:pw"]) == 0
    assert cli.main(["studio", "--host", "10.0.0.2", "--auth-file", str(logins)]) == 0
    monkeypatch.setenv("HUABU_STUDIO_AUTH", "cy:pw")
    assert cli.main(["studio", "--listen"]) == 0
    monkeypatch.delenv("HUABU_STUDIO_AUTH")
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):  # this machine only: no login needed
        assert cli.main(["studio", "--host", host]) == 0
    assert launches == [("0.0.0.0", [("ann", "secret"), ("bo", "pw")]),
                        ("10.0.0.2", [("ann", "s3cret:with,colon"), ("bo", "pw")]),
                        ("0.0.0.0", [("cy", "pw")]),
                        ("127.0.0.1", None), ("127.0.0.2", None), ("localhost", None), ("::1", None)]
    assert "login required" in capsys.readouterr().out


@pytest.mark.parametrize("options, words", [
    (["--auth", "ann"], "--auth must look like user:password"),
    (["--auth", "ann:pw,:pw"], "--auth must look like user:password"),
    (["--auth-file", "{dir}/logins.txt"], "line 2 of"),
    (["--auth-file", "{dir}/missing.txt"], "cannot read --auth-file"),
])
def test_bad_logins_are_one_line(launches, capsys, tmp_path, options, words):
    from huabu.cli import main as cli

    (tmp_path / "logins.txt").write_text("ann:pw\nbo\n", encoding="utf-8")
    assert cli.main(["studio", "--listen", *[o.format(dir=tmp_path) for o in options]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1 and launches == []


def test_a_studio_with_a_login_refuses_anonymous_calls(model_store, tmp_path):
    import httpx
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError
    from PIL import Image

    from huabu.ui.app import Studio

    studio = Studio(ui_settings(model_store, tmp_path / "home"), "en")
    picture = studio.settings.outputs_dir / "kept.png"
    picture.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(picture)
    with serving(studio, auth=[("ann", "secret")]) as url:
        with httpx.Client(base_url=url) as anonymous:
            for path in ("config", "gradio_api/info", f"gradio_api/file={picture}"):
                assert anonymous.get(path).status_code == 401, path
            refused = anonymous.post("gradio_api/run/gallery_search", json={"data": ["", ""]})
            assert refused.status_code == 401 and "Not authenticated" in refused.text
        with pytest.raises(AuthenticationError):
            Client(url, verbose=False)
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, verbose=False, auth=("ann", "wrong"))
        client = Client(url, verbose=False, auth=("ann", "secret"))
        assert client.predict("", "", api_name="/gallery_search") == []  # an empty gallery, listed
        with httpx.Client(base_url=url) as user:
            assert user.post("login", data={"username": "ann", "password": "secret"}).status_code == 200
            assert user.get(f"gradio_api/file={picture}").content == picture.read_bytes()


@pytest.mark.parametrize("login", [None, [("ann", "secret")]], ids=["open", "login"])
def test_a_loopback_studio_answers_loopback_host_names_only(model_store, tmp_path, login):
    """DNS rebinding: a page on evil.example re-pointed to 127.0.0.1 calls the studio as its own origin; only the
    Host header gives it away. Host x Origin x method x content type: foreign hosts always get the one-line 421."""
    import httpx

    from huabu.ui.app import Studio

    studio = Studio(ui_settings(model_store, tmp_path / "home"), "en")
    with serving(studio, auth=login) as url:
        port = url.rstrip("/").rsplit(":", 1)[1]
        calls = [("GET", "config", None, None), ("GET", "gradio_api/info", None, None),
                 ("POST", "gradio_api/call/gallery_search", {"data": ["", ""]}, "application/json"),
                 ("POST", "gradio_api/call/txt2img", {"data": []}, "application/json"),
                 ("POST", "gradio_api/call/gallery_search", "data=x", "text/plain"),
                 ("POST", "login", "username=ann&password=secret", "application/x-www-form-urlencoded"),
                 ("OPTIONS", "gradio_api/call/gallery_search", None, None)]
        with httpx.Client(base_url=url, timeout=30) as client:
            for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.nip.io:{port}", f"[::2]:{port}"):
                for origin in (f"http://{host}", None, url.rstrip("/")):
                    for method, path, body, kind in calls:
                        headers = {"Host": host, **({"Origin": origin} if origin else {}),
                                   **({"Content-Type": kind} if kind else {})}
                        payload = {"json": body} if isinstance(body, dict) else {"content": body}
                        answer = client.request(method, path, headers=headers, **payload)
                        # (gradio's CORS layer, outside ours, may still label the refusal readable: it holds nothing)
                        assert answer.status_code == 421, (host, origin, method, path, answer.status_code)
                        assert answer.json()["detail"].startswith("this server answers to localhost only")
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
                status = client.get("config", headers={"Host": host}).status_code
                assert status == (401 if login else 200), (host, status)
