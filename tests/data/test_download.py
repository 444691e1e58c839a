"""Downloader: MD5 checks, resumable downloads from a local server, safe extraction, the CLI."""

import hashlib
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from diffusion.data import download
from diffusion.data.download import download_file, safe_extract, verify_md5
from diffusion.errors import UserError

try:
    from tests.data.fixtures import make_cub, make_tar
except ImportError:  # pytest run without the repository root on sys.path
    from fixtures import make_cub, make_tar

PAYLOAD = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def server():
    """A local HTTP server for /file (with optional Range support) that records Range headers."""
    state = {"body": PAYLOAD, "ranges": [], "honour_range": True}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/file":
                self.send_error(404)
                return
            body, status = state["body"], 200
            requested = self.headers.get("Range")
            state["ranges"].append(requested)
            if requested and state["honour_range"]:
                start = int(requested.split("=")[1].rstrip("-"))
                body, status = body[start:], 206
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/file"
    yield state
    httpd.shutdown()
    httpd.server_close()


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_verify_md5_accepts_and_rejects(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"hello")
    verify_md5(path, md5_of(b"hello"))
    with pytest.raises(UserError, match="expected"):
        verify_md5(path, "0" * 32)
    assert not path.exists()


def test_download_checks_md5_and_leaves_no_partial_file(tmp_path, server):
    dest = download_file(server["url"], tmp_path / "file.bin", md5=md5_of(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "file.bin.part").exists()
    assert download_file(server["url"], dest, md5=md5_of(PAYLOAD)) == dest  # present: no request
    assert server["ranges"] == [None]


def test_download_resumes_a_partial_file(tmp_path, server):
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:5000])
    dest = download_file(server["url"], tmp_path / "file.bin", md5=md5_of(PAYLOAD))
    assert server["ranges"] == ["bytes=5000-"] and dest.read_bytes() == PAYLOAD


def test_download_restarts_when_the_server_ignores_ranges(tmp_path, server):
    server["honour_range"] = False
    (tmp_path / "file.bin.part").write_bytes(b"x" * 5000)
    dest = download_file(server["url"], tmp_path / "file.bin", md5=md5_of(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def test_download_with_wrong_md5_removes_the_partial_file(tmp_path, server):
    with pytest.raises(UserError, match="MD5"):
        download_file(server["url"], tmp_path / "file.bin", md5="0" * 32)
    assert not list(tmp_path.iterdir())


def test_unreachable_server_is_one_user_error(tmp_path, server):
    with pytest.raises(UserError) as error:
        download_file(server["url"].replace("/file", "/missing"), tmp_path / "x.bin")
    assert "HTTP 404" in str(error.value) and "\n" not in str(error.value)


def test_safe_extract_good_archive_with_an_inner_link(tmp_path):
    archive = make_tar(tmp_path / "good.tgz", {"top/a.txt": b"A", "top/sub/b.txt": b"B"},
                       links=[("top/link.txt", "sub/b.txt", tarfile.SYMTYPE)])
    names = safe_extract(archive, tmp_path / "out")
    assert set(names) == {"top/a.txt", "top/sub/b.txt", "top/link.txt"}
    assert (tmp_path / "out" / "top" / "a.txt").read_bytes() == b"A"
    assert (tmp_path / "out" / "top" / "link.txt").read_bytes() == b"B"


@pytest.mark.parametrize("files, links, reason", [
    ({"ok.txt": b"fine", "../evil.txt": b"x"}, [], "outside"),
    ({"ok.txt": b"fine", "a/../../evil.txt": b"x"}, [], "outside"),
    ({"/tmp/absolute-evil.txt": b"x"}, [], "absolute"),
    ({}, [("link", "../../evil", tarfile.SYMTYPE)], "symbolic link"),
    ({}, [("link", "/etc/passwd", tarfile.SYMTYPE)], "absolute"),
    ({}, [("hard", "../evil.txt", tarfile.LNKTYPE)], "hard link"),
    ({}, [("device", "", tarfile.CHRTYPE)], "device"),
])
def test_safe_extract_refuses_escapes_and_writes_nothing(tmp_path, files, links, reason):
    archive = make_tar(tmp_path / "bad.tgz", files, links)
    target = tmp_path / "deep" / "out"
    with pytest.raises(UserError, match=reason):
        safe_extract(archive, target)
    assert not target.exists()  # checked before anything was written
    assert not list(tmp_path.rglob("evil*")) and not list(tmp_path.rglob("ok.txt"))


def test_safe_extract_on_a_damaged_archive_is_a_user_error(tmp_path):
    (tmp_path / "junk.tgz").write_bytes(b"\x1f\x8b" + b"junk" * 100)
    with pytest.raises(UserError, match="tar archive"):
        safe_extract(tmp_path / "junk.tgz", tmp_path / "out")


def test_download_birds_end_to_end_from_a_local_server(tmp_path, server, monkeypatch, capsys):
    archive = make_tar(tmp_path / "CUB.tgz", {"CUB_200_2011/images.txt": b"1 a/b.jpg\n",
                                              "attributes.txt": b"1 has_bill_shape\n"})
    server["body"] = archive.read_bytes()
    monkeypatch.setattr(download, "CUB_URL", server["url"])
    monkeypatch.setattr(download, "CUB_MD5", md5_of(server["body"]))
    target = download.download_birds(tmp_path / "data")
    assert (target / "images.txt").read_bytes() == b"1 a/b.jpg\n"
    assert "text_c10" in capsys.readouterr().out


def test_cli_with_data_present_prints_where_captions_go(tmp_path, capsys):
    make_cub(tmp_path, captions=None, images_per_class=1)
    assert download.main(["birds", "--data-dir", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert "already" in output and "reedscot/cvpr2016" in output


def test_cli_bad_input_is_one_line_without_traceback():
    result = subprocess.run([sys.executable, "-m", "diffusion.data.download", "flowers"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and "birds" in result.stderr


def test_cli_names_match_the_torchvision_specs():
    from diffusion.data.torchvision_sets import SPECS

    assert tuple(SPECS) == download.TORCHVISION_SETS
