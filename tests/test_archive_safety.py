"""Archive safety: the gaps a test missed once, each with a test that would catch it.

wetlite reads archives member by member (_extract_binary) and checks each one
itself.  Python 3.8.17+, 3.9.17+, 3.10.12+, 3.11.4+ and 3.12+ also have tarfile's
data_filter (PEP 706), which refuses much of the same; a host without it has
only wetlite's checks.  So these tests run with data_filter and without it, and
check *wetlite's* message, so that a filter cannot hide a gap in its checks.
"""
import tarfile
import zipfile

import pytest

import test_download
from conftest import wetlite
from httpserver import tar_bytes, tar_info, zip_bytes

GOOD = test_download.GOOD
LIMIT = test_download.LIMIT
_check_refused = test_download._check_refused


@pytest.fixture(params=["data_filter", "no_data_filter"], autouse=True)
def filtering(request, monkeypatch):
    """Every test here runs with tarfile's data_filter (where this Python has it) and without it."""
    if request.param == "no_data_filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        assert not hasattr(tarfile, "data_filter")
    return request.param


def test_tar_symlink_to_exactly_the_parent_refused(tmp_path):
    # "link -> .." resolves to exactly "..", not to something under "../".
    data = tar_bytes([GOOD, tar_info("link", tarfile.SYMTYPE, "..")])
    err = _check_refused(tmp_path, data, ".tar.gz")
    assert "'link' links outside the archive" in str(err)
    nested = tmp_path / "nested"
    nested.mkdir()
    data = tar_bytes([GOOD, tar_info("ok/link", tarfile.SYMTYPE, "../..")])
    err = _check_refused(nested, data, ".tar.gz")
    assert "'ok/link' links outside the archive" in str(err)


def test_tar_hardlink_target_is_read_from_the_archive_root(tmp_path):
    # A hard link's target names a member from the archive's root: "ok/deep/hard -> ../outside" is
    # outside, although it would be inside read from the member's own directory (ok/outside).
    data = tar_bytes([GOOD, tar_info("ok/deep/hard", tarfile.LNKTYPE, "../outside")])
    err = _check_refused(tmp_path, data, ".tar.gz", tmp_path / "box" / "outside")
    assert "'ok/deep/hard' links outside the archive" in str(err)


def test_tar_hardlink_inside_from_a_subdirectory_is_fine(tmp_path):
    # The converse: "deep/er/hard -> ok/readme.txt" names a member from the root, so it is inside.
    archive = tmp_path / "a.tar"
    archive.write_bytes(tar_bytes([GOOD, tar_info("deep/er/hard", tarfile.LNKTYPE, "ok/readme.txt"),
                                   ("pixi", b"binary")], ""))
    wetlite._extract_binary(str(archive), ("pixi",), str(tmp_path / "out"), LIMIT)
    assert (tmp_path / "out").read_bytes() == b"binary"


@pytest.mark.parametrize("target", ["readme.txt", "ok/readme.txt", "./x", "../outside", "/etc/passwd"])
def test_zip_symlink_refused_whatever_it_points_to(tmp_path, target):
    # zipfile would write a link as a plain file holding its target: any link is refused,
    # an inside one too.
    info = zipfile.ZipInfo("link")
    info.external_attr = 0o120777 << 16
    err = _check_refused(tmp_path, zip_bytes([GOOD, (info, target)]), ".zip")
    assert "'link'" in str(err)
    if not target.startswith(("/", "..")):
        assert "is a symbolic link" in str(err)
