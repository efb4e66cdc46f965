"""Downloads and archives (wetlite section 7), for real against a local server.

Every test talks to tests/httpserver.FileServer on 127.0.0.1; nothing leaves
the machine.  Retry delays and timeouts are shrunk so the file runs in seconds.
"""
import hashlib
import io
import os
import socket
import tarfile
import time
import zipfile

import pytest

from conftest import tree, wetlite
from httpserver import FileServer, tar_bytes, tar_info, zip_bytes

DATA = bytes(range(256)) * 800      # 204800 bytes: several read chunks
SHA = hashlib.sha256(DATA).hexdigest()

_PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
               "no_proxy", "NO_PROXY")


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    """Tiny backoff and timeout; no proxy or timeout settings from the caller's shell."""
    monkeypatch.setattr(wetlite, "_BACKOFF_SECONDS", 0.01)
    monkeypatch.setattr(wetlite, "_DOWNLOAD_TIMEOUT", 0.5)
    for name in _PROXY_VARS + ("WETLITE_DOWNLOAD_TIMEOUT",):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


leftovers = tree


def dead_port():
    """A local port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


# -- success ----------------------------------------------------------------------


def test_download_writes_file_and_returns_sha256(server, tmp_path):
    server.add("/files/blob.bin", DATA)
    dest = str(tmp_path / "blob.bin")
    digest = wetlite._download(server.url + "/files/blob.bin", dest)
    assert digest == SHA
    with open(dest, "rb") as f:
        assert f.read() == DATA
    assert leftovers(tmp_path) == ["blob.bin"]          # no .part left
    (req,) = server.requests
    assert req.path == "/files/blob.bin"
    assert req.header("User-Agent") == "wetlite/" + wetlite.__version__
    assert req.header("Range") is None
    assert not req.proxied


def test_download_replaces_an_existing_file(server, tmp_path):
    server.add("/f", DATA)
    dest = tmp_path / "f"
    dest.write_bytes(b"old contents")
    wetlite._download(server.url + "/f", str(dest))
    assert dest.read_bytes() == DATA


def test_download_follows_redirects(server, tmp_path):
    server.add("/real/blob", DATA)
    server.add("/latest/blob", redirect="/real/blob")
    dest = str(tmp_path / "blob")
    assert wetlite._download(server.url + "/latest/blob", dest) == SHA
    assert server.paths() == ["/latest/blob", "/real/blob"]


def test_download_without_content_length(server, tmp_path):
    server.add("/f", DATA, content_length=False)
    dest = str(tmp_path / "f")
    assert wetlite._download(server.url + "/f", dest) == SHA


# -- permanent HTTP errors: no retry, nothing left -----------------------------------


@pytest.mark.parametrize("status", [404, 403, 401])
def test_permanent_http_error_is_not_retried(server, tmp_path, status):
    server.add("/f", status=status)
    dest = str(tmp_path / "f")
    with pytest.raises(wetlite.DownloadError) as info:
        wetlite._download(server.url + "/f", dest)
    err = info.value
    assert isinstance(err, wetlite.ToolError)
    assert err.status == status
    assert err.url == server.url + "/f"
    assert str(status) in str(err) and server.url + "/f" in str(err)
    assert len(server.requests_for("/f")) == 1
    assert leftovers(tmp_path) == []


def test_missing_file_message_suggests_checking_version(server, tmp_path):
    with pytest.raises(wetlite.DownloadError) as info:
        wetlite._download(server.url + "/nope", str(tmp_path / "x"))
    assert info.value.status == 404
    assert "version" in str(info.value)


# -- transient errors: retried with backoff --------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_errors_are_retried_then_succeed(server, tmp_path, status):
    server.add("/f", DATA, fail=2, fail_status=status)
    dest = str(tmp_path / "f")
    assert wetlite._download(server.url + "/f", dest) == SHA
    assert len(server.requests_for("/f")) == 3
    assert leftovers(tmp_path) == ["f"]


def test_persistent_500_gives_up_after_all_attempts(server, tmp_path):
    server.add("/f", DATA, fail=True)
    with pytest.raises(wetlite.DownloadError) as info:
        wetlite._download(server.url + "/f", str(tmp_path / "f"))
    assert len(server.requests_for("/f")) == wetlite._DOWNLOAD_ATTEMPTS
    assert "500" in str(info.value)
    assert "%d attempts" % wetlite._DOWNLOAD_ATTEMPTS in str(info.value)
    assert leftovers(tmp_path) == []


def test_persistent_500_error_carries_the_http_status(server, tmp_path):
    # The last HTTP status should survive the retries, as it does for a 404,
    # so callers can tell "server overloaded" from "network down".
    server.add("/f", DATA, fail=True, fail_status=503)
    with pytest.raises(wetlite.DownloadError) as info:
        wetlite._download(server.url + "/f", str(tmp_path / "f"))
    assert info.value.status == 503


def test_backoff_doubles_between_attempts(server, tmp_path, monkeypatch):
    monkeypatch.setattr(wetlite, "_BACKOFF_SECONDS", 0.25)
    delays = []
    monkeypatch.setattr(time, "sleep", delays.append)     # wetlite does `import time` on use
    server.add("/f", DATA, fail=True)
    with pytest.raises(wetlite.DownloadError):
        wetlite._download(server.url + "/f", str(tmp_path / "f"))
    assert delays == [0.25 * 2 ** i for i in range(wetlite._DOWNLOAD_ATTEMPTS - 1)]


# -- truncated bodies -------------------------------------------------------------------


def test_truncated_every_time_is_retried_then_fails(server, tmp_path):
    server.add("/f", DATA, truncate=True)
    dest = str(tmp_path / "f")
    with pytest.raises(wetlite.DownloadError) as info:
        wetlite._download(server.url + "/f", dest)
    assert len(server.requests_for("/f")) == wetlite._DOWNLOAD_ATTEMPTS
    assert "truncated" in str(info.value)
    assert leftovers(tmp_path) == []


def test_truncated_once_resumes_with_range(server, tmp_path):
    cut = 70000
    server.add("/f", DATA, truncate=1, truncate_at=cut, ranges=True)
    dest = str(tmp_path / "f")
    assert wetlite._download(server.url + "/f", dest) == SHA
    first, second = server.requests_for("/f")
    assert first.header("Range") is None
    assert second.header("Range") == "bytes=%d-" % cut
    with open(dest, "rb") as f:
        assert f.read() == DATA
    assert leftovers(tmp_path) == ["f"]


def test_truncated_once_restarts_when_server_ignores_range(server, tmp_path):
    server.add("/f", DATA, truncate=1, truncate_at=50000, ranges=False)
    dest = str(tmp_path / "f")
    assert wetlite._download(server.url + "/f", dest) == SHA
    assert len(server.requests_for("/f")) == 2
    with open(dest, "rb") as f:
        assert f.read() == DATA


# -- slow servers -------------------------------------------------------------------------


@pytest.mark.parametrize("before_headers", [False, True], ids=["stall-after-headers", "stall-before-headers"])
def test_slow_server_times_out(server, tmp_path, before_headers):
    server.add("/f", DATA, stall=30, stall_before_headers=before_headers)
    dest = str(tmp_path / "f")
    start = time.monotonic()
    with pytest.raises(wetlite.DownloadError) as info:
        wetlite._download(server.url + "/f", dest)
    elapsed = time.monotonic() - start
    assert "timed out" in str(info.value)
    assert len(server.requests_for("/f")) == wetlite._DOWNLOAD_ATTEMPTS
    assert elapsed < 0.5 * wetlite._DOWNLOAD_ATTEMPTS + 5
    assert leftovers(tmp_path) == []


def test_slow_once_then_ok_succeeds(server, tmp_path):
    server.add("/f", DATA, stall=30, stall_times=1)
    assert wetlite._download(server.url + "/f", str(tmp_path / "f")) == SHA
    assert len(server.requests_for("/f")) == 2


def test_timeout_environment_variable(server, tmp_path, monkeypatch):
    monkeypatch.setattr(wetlite, "_DOWNLOAD_TIMEOUT", 60.0)
    monkeypatch.setattr(wetlite, "_DOWNLOAD_ATTEMPTS", 1)
    monkeypatch.setenv("WETLITE_DOWNLOAD_TIMEOUT", "0.3")
    server.add("/f", DATA, stall=30)
    start = time.monotonic()
    with pytest.raises(wetlite.DownloadError):
        wetlite._download(server.url + "/f", str(tmp_path / "f"))
    assert time.monotonic() - start < 10


def test_timeout_environment_variable_must_be_a_number(server, tmp_path, monkeypatch):
    monkeypatch.setenv("WETLITE_DOWNLOAD_TIMEOUT", "soon")
    server.add("/f", DATA)
    with pytest.raises(wetlite.WetliteError) as info:
        wetlite._download(server.url + "/f", str(tmp_path / "f"))
    assert "soon" in str(info.value) and "WETLITE_DOWNLOAD_TIMEOUT" in str(info.value)
    assert leftovers(tmp_path) == []


# -- endless, huge and trickling downloads ------------------------------------------------------


def finishes(fn, seconds=60):
    """Run ``fn()`` in a thread; return what it raised (or None); fail if it hangs."""
    import threading
    outcome = []

    def run():
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "still downloading after %d s" % seconds
    return outcome[0]


def test_endless_download_stops_at_the_size_limit(server, tmp_path, monkeypatch):
    monkeypatch.setenv("WETLITE_DOWNLOAD_LIMIT", "1M")
    server.add("/f", DATA, endless=True)
    err = finishes(lambda: wetlite._download(server.url + "/f", str(tmp_path / "f")))
    assert isinstance(err, wetlite.DownloadError), err
    assert "more than 1.0 MB" in str(err) and "WETLITE_DOWNLOAD_LIMIT" in str(err)
    assert len(server.requests_for("/f")) == 1          # not worth a retry
    assert leftovers(tmp_path) == []


def test_announced_size_above_the_limit_is_refused_before_reading(server, tmp_path, monkeypatch):
    monkeypatch.setenv("WETLITE_DOWNLOAD_LIMIT", "100k")
    server.add("/f", DATA)
    with pytest.raises(wetlite.DownloadError) as info:
        wetlite._download(server.url + "/f", str(tmp_path / "f"))
    assert "announces 204.8 kB" in str(info.value)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("value", ["lots", "0", "-5M", "1.5G"])
def test_download_limit_variable_must_be_a_size(server, tmp_path, monkeypatch, value):
    monkeypatch.setenv("WETLITE_DOWNLOAD_LIMIT", value)
    server.add("/f", DATA)
    with pytest.raises(wetlite.SpecError) as info:
        wetlite._download(server.url + "/f", str(tmp_path / "f"))
    assert "WETLITE_DOWNLOAD_LIMIT" in str(info.value) and repr(value) in str(info.value)


def test_a_trickle_counts_as_a_stall(server, tmp_path):
    # One byte every 50 ms never lets the stall timeout (0.5 s here) pass,
    # but it is far below the minimum rate.
    server.add("/f", DATA, trickle=0.05)
    err = finishes(lambda: wetlite._download(server.url + "/f", str(tmp_path / "f")))
    assert isinstance(err, wetlite.DownloadError), err
    assert "too slow" in str(err)
    assert len(server.requests_for("/f")) == wetlite._DOWNLOAD_ATTEMPTS
    assert leftovers(tmp_path) == []


def test_overall_deadline(server, tmp_path, monkeypatch):
    monkeypatch.setattr(wetlite, "_DOWNLOAD_MIN_RATE", 1, raising=False)     # the trickle below is "fast enough"
    monkeypatch.setenv("WETLITE_DOWNLOAD_DEADLINE", "1.5")
    server.add("/f", DATA, trickle=0.02)
    err = finishes(lambda: wetlite._download(server.url + "/f", str(tmp_path / "f")))
    assert isinstance(err, wetlite.DownloadError), err
    assert "did not finish within 1.5 s" in str(err) and "WETLITE_DOWNLOAD_DEADLINE" in str(err)
    assert leftovers(tmp_path) == []


def test_overall_deadline_covers_a_stall_before_the_headers(server, tmp_path, monkeypatch):
    monkeypatch.setattr(wetlite, "_DOWNLOAD_TIMEOUT", 30.0)
    monkeypatch.setenv("WETLITE_DOWNLOAD_DEADLINE", "1")
    server.add("/f", DATA, stall=60, stall_before_headers=True)
    err = finishes(lambda: wetlite._download(server.url + "/f", str(tmp_path / "f")), seconds=20)
    assert isinstance(err, wetlite.DownloadError), err
    assert "did not finish within 1 s" in str(err)


@pytest.mark.parametrize("name", ["WETLITE_DOWNLOAD_TIMEOUT", "WETLITE_DOWNLOAD_DEADLINE"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_download_seconds_must_be_finite_and_positive(server, tmp_path, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    server.add("/f", DATA)
    with pytest.raises(wetlite.SpecError) as info:
        wetlite._download(server.url + "/f", str(tmp_path / "f"))
    assert name in str(info.value)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (certfile, keyfile)."""
    import shutil
    import subprocess
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    proc = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                           "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        pytest.skip("openssl could not make a certificate: %s" % proc.stdout.decode()[-300:])
    return cert, key


def test_https_to_https_redirect_is_followed(server, tmp_path, monkeypatch, certificate):
    monkeypatch.setenv("SSL_CERT_FILE", certificate[0])
    with FileServer(tls=certificate) as secure:
        secure.add("/real", DATA)
        secure.add("/moved", redirect=secure.url + "/real")
        assert wetlite._download(secure.url + "/moved", str(tmp_path / "f")) == SHA


def test_https_to_http_redirect_is_refused(server, tmp_path, monkeypatch, certificate):
    monkeypatch.setenv("SSL_CERT_FILE", certificate[0])
    server.add("/f", DATA)
    with FileServer(tls=certificate) as secure:
        secure.add("/f", redirect=server.url + "/f")
        with pytest.raises(wetlite.DownloadError) as info:
            wetlite._download(secure.url + "/f", str(tmp_path / "f"))
    assert "refusing the redirect" in str(info.value) and server.url + "/f" in str(info.value)
    assert server.requests_for("/f") == []
    assert leftovers(tmp_path) == []


# -- proxies ------------------------------------------------------------------------------


def test_proxies_argument_is_used(server, tmp_path):
    server.add("/dir/blob", DATA)
    dest = str(tmp_path / "blob")
    digest = wetlite._download("http://example.invalid/dir/blob", dest, proxies={"http": server.url})
    assert digest == SHA
    (req,) = server.requests
    assert req.proxied
    assert req.target == "http://example.invalid/dir/blob"
    assert req.header("Host") == "example.invalid"
    assert req.header("User-Agent") == "wetlite/" + wetlite.__version__


def test_http_proxy_environment_variable_is_used_by_default(server, tmp_path, monkeypatch):
    monkeypatch.setenv("http_proxy", server.url)
    server.add("/dir/blob", DATA)
    assert wetlite._download("http://example.invalid/dir/blob", str(tmp_path / "blob")) == SHA
    (req,) = server.requests
    assert req.proxied and req.target == "http://example.invalid/dir/blob"


def test_explicit_proxies_replace_the_environment(server, tmp_path, monkeypatch):
    # An explicit dict wins: the dead proxy from the environment is not used.
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % dead_port())
    server.add("/f", DATA)
    assert wetlite._download(server.url + "/f", str(tmp_path / "f"), proxies={}) == SHA
    (req,) = server.requests
    assert not req.proxied


def test_unreachable_proxy_fails_cleanly(tmp_path):
    proxy = "http://127.0.0.1:%d" % dead_port()
    with pytest.raises(wetlite.DownloadError) as info:
        wetlite._download("http://example.invalid/f", str(tmp_path / "f"), proxies={"http": proxy})
    assert "example.invalid" in str(info.value)
    assert leftovers(tmp_path) == []


# -- credentials in URLs ------------------------------------------------------------------


@pytest.mark.parametrize("url, shown", [
    ("https://user:secret@host.example/a/b", "https://***@host.example/a/b"),
    ("https://token@host.example/a", "https://***@host.example/a"),
    ("http://host.example:8080/a/b?x=1", "http://host.example:8080/a/b?x=1"),
    ("https://host.example/path/with@sign", "https://host.example/path/with@sign"),
])
def test_mask_url(url, shown):
    assert wetlite._mask_url(url) == shown


def test_mask_url_password_containing_at_sign():
    # urllib.parse splits userinfo at the LAST '@' of the netloc, so this
    # password is "p@ss:word"; none of it may show.
    masked = wetlite._mask_url("https://user:p@ss:word@host.example/a")
    assert "ss:word" not in masked and "user" not in masked
    assert masked.endswith("host.example/a")


def test_download_error_masks_credentials(server, tmp_path):
    # Through the proxy helper, so the fake host name is never resolved.
    url = "http://user:secret@example.invalid/missing"
    with pytest.raises(wetlite.DownloadError) as info:
        wetlite._download(url, str(tmp_path / "f"), proxies={"http": server.url})
    assert "secret" not in str(info.value)
    assert "secret" not in (info.value.url or "")
    assert "***@example.invalid/missing" in info.value.url
    assert leftovers(tmp_path) == []


def test_credentials_in_url_are_sent_as_basic_auth(server, tmp_path):
    # A mirror URL with user:password@ (Artifactory, Nexus) must reach the
    # server with the credentials as HTTP Basic auth, and the credentials must
    # not travel in the request line.  (Through the proxy helper, so nothing
    # is resolved; without a proxy, urllib takes "user:secret@127.0.0.1" for
    # a host name and the download fails with a DNS error.)
    import base64
    server.add("/f", DATA)
    url = "http://user:secret@example.invalid/f"
    assert wetlite._download(url, str(tmp_path / "f"), proxies={"http": server.url}) == SHA
    (req,) = server.requests_for("/f")
    assert req.header("Authorization") == "Basic " + base64.b64encode(b"user:secret").decode("ascii")
    assert "secret" not in req.target


# -- progress bar ---------------------------------------------------------------------------


def test_progress_bar_on_a_terminal(server, tmp_path):
    server.add("/f", DATA)
    stream = FakeTTY()
    wetlite._download(server.url + "/f", str(tmp_path / "f"), label="pixi v0.99.0", progress_stream=stream)
    text = stream.getvalue()
    assert text.startswith("\r")
    assert "pixi v0.99.0" in text
    assert "100%" in text
    assert "204.8 kB" in text                   # bytes done / total
    assert "/s" in text                          # a rate
    assert text.endswith("\n")


def test_progress_bar_without_total_shows_bytes_and_rate(server, tmp_path):
    server.add("/f", DATA, content_length=False)
    stream = FakeTTY()
    wetlite._download(server.url + "/f", str(tmp_path / "f"), label="blob", progress_stream=stream)
    text = stream.getvalue()
    assert "\rblob " in text and "204.8 kB" in text and "/s" in text
    assert "%" not in text


def test_no_progress_bar_on_a_pipe(server, tmp_path):
    server.add("/f", DATA)
    stream = io.StringIO()
    wetlite._download(server.url + "/f", str(tmp_path / "f"), label="blob", progress_stream=stream)
    assert stream.getvalue() == ""


def test_no_progress_bar_on_captured_stderr_by_default(server, tmp_path, capsys):
    server.add("/f", DATA)
    wetlite._download(server.url + "/f", str(tmp_path / "f"), label="blob")
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# -- safe extraction --------------------------------------------------------------------------

LIMIT = 1 << 20


def _check_refused(tmp_path, archive_bytes, suffix, *escape_targets, wanted=("ok/readme.txt",)):
    """Extract into tmp/box/out and check: ToolError, and no file anywhere."""
    archive = tmp_path / ("archive" + suffix)
    archive.write_bytes(archive_bytes)
    box = tmp_path / "box"
    box.mkdir()
    (box / "keep.txt").write_bytes(b"untouched")
    with pytest.raises(wetlite.ToolError) as info:
        wetlite._extract_binary(str(archive), wanted, str(box / "out"), LIMIT)
    assert str(archive) in str(info.value)
    assert sorted(os.listdir(str(box))) == ["keep.txt"]
    assert (box / "keep.txt").read_bytes() == b"untouched"
    assert sorted(os.listdir(str(tmp_path))) == ["archive" + suffix, "box"]
    for target in escape_targets:
        assert not os.path.lexists(target), target
    return info.value


GOOD = ("ok/readme.txt", b"harmless")


def extract(tmp_path, data, suffix, wanted, limit=LIMIT):
    archive = tmp_path / ("a" + suffix)
    archive.write_bytes(data)
    out = tmp_path / "out"
    digest = wetlite._extract_binary(str(archive), wanted, str(out), limit)
    return out, digest


def test_extract_the_wanted_member_of_a_tar_gz_and_nothing_else(tmp_path):
    data = tar_bytes([("pixi", b"#!/bin/sh\n"), GOOD, tar_info("ok/link", tarfile.SYMTYPE, "readme.txt")])
    out, digest = extract(tmp_path, data, ".tar.gz", ("pixi",))
    assert out.read_bytes() == b"#!/bin/sh\n"
    assert digest == hashlib.sha256(b"#!/bin/sh\n").hexdigest()
    assert sorted(os.listdir(str(tmp_path))) == ["a.tar.gz", "out"]
    assert stat_mode(out) == 0o600


def stat_mode(path):
    return os.stat(str(path)).st_mode & 0o777


def test_extract_from_tar_bz2_by_path(tmp_path):
    data = tar_bytes([("info/index.json", b"{}"), ("bin/micromamba", b"binary")], "bz2")
    out, _ = extract(tmp_path, data, ".tar.bz2", ("bin/micromamba",))
    assert out.read_bytes() == b"binary"


def test_extract_a_bare_name_at_any_depth(tmp_path):
    data = tar_bytes([("pixi-x86_64/README.md", b"docs"), ("pixi-x86_64/pixi", b"binary")])
    out, _ = extract(tmp_path, data, ".tar.gz", ("pixi",))
    assert out.read_bytes() == b"binary"


def test_extract_from_zip(tmp_path):
    out, _ = extract(tmp_path, zip_bytes([("pixi.exe", b"MZ..."), GOOD]), ".zip", ("pixi.exe",))
    assert out.read_bytes() == b"MZ..."


def test_extract_from_plain_tar(tmp_path):
    out, _ = extract(tmp_path, tar_bytes([GOOD, tar_info("ok/hard", tarfile.LNKTYPE, "ok/readme.txt")], ""),
                     ".tar", ("ok/readme.txt",))
    assert out.read_bytes() == b"harmless"


def test_extract_archive_without_the_member(tmp_path):
    with pytest.raises(wetlite.ToolError) as info:
        extract(tmp_path, tar_bytes([GOOD]), ".tar.gz", ("pixi",))
    assert "pixi" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_extract_unreadable_archive(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"this is not an archive at all")
    with pytest.raises(wetlite.ToolError) as info:
        wetlite._extract_binary(str(archive), ("pixi",), str(tmp_path / "out"), LIMIT)
    assert str(archive) in str(info.value)


# Decompression bombs: a few hundred bytes that unpack to many MB.  The cap
# stops them as soon as it is passed, and nothing of them reaches the disk.

BOMB = 8 << 20


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_bomb_before_the_wanted_member_is_refused(tmp_path, compression):
    data = tar_bytes([("info/junk", b"\0" * BOMB), ("bin/micromamba", b"binary")], compression)
    assert len(data) < BOMB // 100
    err = _check_refused(tmp_path, data, ".tar." + compression, wanted=("bin/micromamba",))
    assert "more than 1.0 MB" in str(err) and "WETLITE_DOWNLOAD_LIMIT" in str(err)


def test_bomb_as_the_wanted_member_is_refused(tmp_path):
    data = tar_bytes([("bin/micromamba", b"\0" * BOMB)], "bz2")
    _check_refused(tmp_path, data, ".tar.bz2", wanted=("bin/micromamba",))


def test_zip_bomb_is_refused(tmp_path):
    data = zip_bytes([("pixi.exe", b"\0" * BOMB)])
    assert len(data) < BOMB // 100
    _check_refused(tmp_path, data, ".zip", wanted=("pixi.exe",))


def test_too_many_members_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(wetlite, "_ARCHIVE_MEMBER_LIMIT", 50)
    data = tar_bytes([("f%d" % i, b"") for i in range(60)] + [GOOD])
    err = _check_refused(tmp_path, data, ".tar.gz")
    assert "more than 50 members" in str(err)


def test_a_member_within_the_limit_is_fine(tmp_path):
    data = tar_bytes([("bin/micromamba", b"\1" * (LIMIT - 10))], "bz2")
    out, _ = extract(tmp_path, data, ".tar.bz2", ("bin/micromamba",))
    assert out.stat().st_size == LIMIT - 10


@pytest.mark.parametrize("compression", ["gz", "bz2"])
def test_tar_dotdot_member_refused(tmp_path, compression):
    data = tar_bytes([GOOD, ("../evil", b"x"), ("../../evil2", b"x")], compression)
    err = _check_refused(tmp_path, data, ".tar." + compression, tmp_path / "box" / "evil", tmp_path / "evil2")
    assert "'..'" in str(err)


def test_an_unsafe_member_after_the_wanted_one_refuses_the_archive(tmp_path):
    data = tar_bytes([GOOD, ("ok/../../evil", b"x")])
    _check_refused(tmp_path, data, ".tar.gz", tmp_path / "box" / "evil")


def test_tar_absolute_member_refused(tmp_path):
    target = tmp_path / "abs_evil"
    data = tar_bytes([GOOD, (str(target), b"x")])
    err = _check_refused(tmp_path, data, ".tar.gz", target)
    assert "absolute" in str(err)


@pytest.mark.parametrize("linkname", ["../outside", "../../outside", "ok/../../outside", "/etc/passwd"])
def test_tar_symlink_pointing_outside_refused(tmp_path, linkname):
    data = tar_bytes([GOOD, tar_info("link", tarfile.SYMTYPE, linkname)])
    _check_refused(tmp_path, data, ".tar.gz")


def test_tar_symlink_in_subdir_pointing_outside_refused(tmp_path):
    data = tar_bytes([GOOD, tar_info("ok/deeper/link", tarfile.SYMTYPE, "../../../outside")])
    _check_refused(tmp_path, data, ".tar.gz")


def test_tar_symlink_as_the_wanted_member_refused(tmp_path):
    data = tar_bytes([tar_info("pixi", tarfile.SYMTYPE, "/bin/sh")])
    _check_refused(tmp_path, data, ".tar.gz", wanted=("pixi",))


def test_tar_symlink_then_write_through_it_refused(tmp_path):
    data = tar_bytes([GOOD, tar_info("up", tarfile.SYMTYPE, ".."), ("up/evil", b"x")])
    _check_refused(tmp_path, data, ".tar.gz", tmp_path / "box" / "evil")


def test_tar_chained_symlinks_escaping_refused(tmp_path):
    # Each link looks inside on its own ("a" -> ".", "a/b" -> ".." is dest
    # when read lexically), but a/b really is dest/b, whose ".." is outside.
    data = tar_bytes([
        GOOD,
        tar_info("a", tarfile.SYMTYPE, "."),
        tar_info("a/b", tarfile.SYMTYPE, ".."),
        ("a/b/evil", b"x"),
    ])
    _check_refused(tmp_path, data, ".tar.gz", tmp_path / "box" / "evil")


@pytest.mark.parametrize("linkname", ["../outside", "/etc/passwd", "ok/../../outside"])
def test_tar_hardlink_outside_refused(tmp_path, linkname):
    data = tar_bytes([GOOD, tar_info("hard", tarfile.LNKTYPE, linkname)])
    _check_refused(tmp_path, data, ".tar.gz")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE], ids=["chr", "blk", "fifo"])
def test_tar_device_files_refused(tmp_path, kind):
    data = tar_bytes([GOOD, tar_info("dev/null", kind, mode=0o666)])
    err = _check_refused(tmp_path, data, ".tar.gz")
    assert "dev/null" in str(err)


@pytest.mark.parametrize("name", ["../evil", "../../evil2", "ok/../../evil", "/abs_evil", "..\\evil"])
def test_zip_unsafe_names_refused(tmp_path, name):
    data = zip_bytes([GOOD, (name, b"x")])
    _check_refused(tmp_path, data, ".zip", tmp_path / "box" / "evil", tmp_path / "evil2", "/abs_evil")


def test_zip_symlink_refused(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (0o120777 << 16)
    data = zip_bytes([GOOD, (info, "/etc/passwd")])
    _check_refused(tmp_path, data, ".zip")


def test_extraction_never_writes_through_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_bytes([("pixi", b"binary")]))
    os.symlink(str(victim), str(tmp_path / "out"))
    with pytest.raises(wetlite.WetliteError):
        wetlite._extract_binary(str(archive), ("pixi",), str(tmp_path / "out"), LIMIT)
    assert victim.read_bytes() == b"precious"
