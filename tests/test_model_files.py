"""``--model elodie32``: fetched once from a server into the user's cache, then used offline;
clear errors when the server is unreachable or sends something else (a local HTTP server on
127.0.0.1 plays the ULySS site)."""
from __future__ import annotations

import dataclasses
import functools
import http.server
import threading

import numpy as np
import pytest
from test_io_tgm import TGM_HEADER, random_coef, write_tgm

from jaxlasp import api
from jaxlasp.cli import main
from jaxlasp.io import model_files
from jaxlasp.io.model_files import ModelUnavailable, named_model_path

NAME = "elodie32"


@pytest.fixture
def server(tmp_path):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base URL); counts requests."""
    folder = tmp_path / "site"
    folder.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv(model_files.MODEL_DIR_ENV, str(folder))
    return folder


def test_fetched_once_then_read_offline(server, cache, monkeypatch):
    site, url, requests = server
    coef = random_coef(seed=1)
    write_tgm(site / "elodie32_flux_tgm.fits", coef, TGM_HEADER)
    monkeypatch.setenv("JAXLASP_ELODIE32_URL", f"{url}/elodie32_flux_tgm.fits")

    emulator = api.load_model(NAME)
    assert (cache / "elodie32_flux_tgm.fits").read_bytes() == \
        (site / "elodie32_flux_tgm.fits").read_bytes()
    np.testing.assert_array_equal(np.asarray(emulator.coef), coef)
    assert requests == ["/elodie32_flux_tgm.fits"]

    monkeypatch.setenv("JAXLASP_ELODIE32_URL", "http://127.0.0.1:9/gone")  # offline from now on
    again = api.load_model(NAME)
    np.testing.assert_array_equal(np.asarray(again.coef), coef)
    assert requests == ["/elodie32_flux_tgm.fits"]
    assert sorted(p.name for p in cache.iterdir()) == ["elodie32_flux_tgm.fits"]


def test_unreachable_server_says_what_to_download_and_where(cache, monkeypatch, capsys):
    monkeypatch.setenv("JAXLASP_ELODIE32_URL", "http://127.0.0.1:9/elodie32_flux_tgm.fits")
    with pytest.raises(ModelUnavailable, match=r"by hand.*ULySS.*--model PATH"):
        named_model_path(NAME)
    assert main(["info", NAME]) == 2
    err = capsys.readouterr().err
    assert "cannot download the elodie32 model" in err and str(cache) in err
    assert not cache.exists() or not any(cache.iterdir())


def test_a_page_that_is_not_a_model_is_refused_and_not_kept(server, cache, monkeypatch):
    site, url, _ = server
    (site / "elodie32_flux_tgm.fits").write_text("<html>moved</html>")
    monkeypatch.setenv("JAXLASP_ELODIE32_URL", f"{url}/elodie32_flux_tgm.fits")
    with pytest.raises(ModelUnavailable, match="did not send a TGM model file"):
        named_model_path(NAME)
    assert not cache.exists() or not any(cache.iterdir())


def test_a_pinned_digest_is_checked(server, cache, monkeypatch):
    site, url, _ = server
    write_tgm(site / "elodie32_flux_tgm.fits", random_coef(), TGM_HEADER)
    pinned = dataclasses.replace(model_files.NAMED_MODELS[NAME],
                                 url=f"{url}/elodie32_flux_tgm.fits", sha256="0" * 64)
    monkeypatch.setitem(model_files.NAMED_MODELS, NAME, pinned)
    monkeypatch.delenv("JAXLASP_ELODIE32_URL", raising=False)
    with pytest.raises(ModelUnavailable, match="SHA-256"):
        named_model_path(NAME)
    assert not cache.exists() or not any(cache.iterdir())


def test_a_file_named_like_the_model_is_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tgm(tmp_path / NAME, random_coef(), TGM_HEADER)
    assert not model_files.is_named_model(NAME)
