"""HttpServer: routes, a fallback, files, 404, quiet logs."""

import urllib.error
import urllib.request

import pytest

from services.http import HttpServer


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def test_routes_then_fallback_then_404(capsys):
    routes = {"/hello": lambda: (200, b"hi\n", "text/plain")}

    def numbered(path: str):
        return (200, path.encode(), "image/jpeg") if path.endswith(".jpg") else None

    with HttpServer(routes, fallback=numbered) as server:
        assert get(f"{server.url}/hello?x=1") == (200, b"hi\n", "text/plain")
        assert get(f"{server.url}/7.jpg") == (200, b"/7.jpg", "image/jpeg")
        assert get(f"{server.url}/nope")[0] == 404
    assert capsys.readouterr().err == ""  # no log line per request


def test_files_after_routes_and_never_outside_the_folder(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "a.txt").write_bytes(b"file a")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    routes = {"/a.txt": lambda: (200, b"route a", "text/plain")}
    with HttpServer(routes, files=tmp_path / "root", keep_alive=True) as server:
        assert get(f"{server.url}/a.txt")[1] == b"route a"
        (tmp_path / "root" / "b.txt").write_bytes(b"file b")
        assert get(f"{server.url}/b.txt")[:2] == (200, b"file b")
        assert get(f"{server.url}/../secret.txt")[1] != b"secret"
        assert get(f"{server.url}/missing.jpg")[0] == 404


def test_without_files_nothing_of_the_working_folder_is_served(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.txt").write_bytes(b"cwd")
    with HttpServer() as server:
        assert get(f"{server.url}/here.txt")[0] == 404
        request = urllib.request.Request(f"{server.url}/here.txt", method="HEAD")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=5)
        assert err.value.code == 501


def test_a_handler_of_its_own_serves_no_files(tmp_path):
    from services.http import RouteHandler

    class Mine(RouteHandler):
        pass

    with pytest.raises(ValueError, match="serves no files"):
        HttpServer(files=tmp_path, handler=Mine)
