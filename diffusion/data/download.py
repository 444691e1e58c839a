"""Fetch datasets: ``python -m diffusion.data.download birds [--data-dir data]``.

``birds`` downloads CUB_200_2011.tgz (1.1 GB) from the Caltech data site into ``<data-dir>``
through a ``.part`` file that a rerun resumes, checks its published MD5, extracts it safely and
then says where the Reed et al. captions go (they are on Google Drive, which needs a browser).
``mnist``, ``fashion_mnist`` and ``cifar10`` are fetched by torchvision into
``<data-dir>/<name>``, where the dataset configs look for them.

Extraction refuses, before anything is written, any archive member that is an absolute path,
climbs out of the target with ``..``, is a link pointing outside it, or is a device or FIFO;
the standard library's ``filter="data"`` then applies its own checks as well.
"""

import argparse
import hashlib
import http.client
import os
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from diffusion.errors import UserError

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1"
CUB_MD5 = "97eceeb196236b17998738112f37df78"
CAPTIONS_HELP = """\
Captions: CUB has none of its own. Text-to-image work uses the ten captions per image of
Reed et al. 2016 ("Learning Deep Representations of Fine-Grained Visual Descriptions"):
  1. open https://github.com/reedscot/cvpr2016 and follow its link to the Google Drive
     archive of the CUB data ("cub_icml" / cvpr2016_cub);
  2. extract its text_c10/ folder to {target}/text_c10
     (beside it, {data_dir}/text_c10 or {data_dir}/cvpr2016_cub/text_c10, works too).
Without it, dataset=birds makes captions from the class names and says so."""

TORCHVISION_SETS = ("mnist", "fashion_mnist", "cifar10")  # the names of torchvision_sets.SPECS


def file_md5(path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path, md5: str, remove_on_mismatch: bool = True) -> None:
    """Raise `UserError` when the file's MD5 is not `md5`; the bad file is deleted by default."""
    actual = file_md5(path)
    if actual != md5.lower():
        removed = ""
        if remove_on_mismatch:
            Path(path).unlink(missing_ok=True)
            removed = "; the file was removed, run the command again to download it afresh"
        raise UserError(f"{path} has MD5 {actual}, expected {md5}{removed}")


def download_file(url: str, dest, md5: str | None = None) -> Path:
    """Download `url` to `dest` through `dest.part` (resumed if present), check MD5, rename."""
    from tqdm import tqdm

    dest = Path(dest)
    if dest.is_file() and (md5 is None or file_md5(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    total = None
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
            if offset and response.status != 206:
                offset = 0  # the server ignored the range request: start again
            total = int(response.headers.get("Content-Length", 0)) + offset or None
            with open(part, "ab" if offset else "wb") as file, tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    file.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as error:
        if not (error.code == 416 and offset):  # 416 with a partial file: it is already complete
            raise UserError(f"could not download {url} (HTTP {error.code} {error.reason}); "
                            f"download it by hand to {dest}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise UserError(f"could not download {url} ({reason}); check the network and run again "
                        f"(a partial {part} is resumed), or download it by hand to {dest}") from None
    if total and part.stat().st_size < total:  # the connection closed early without an error
        raise UserError(f"the download of {url} stopped at {part.stat().st_size} of {total} bytes; "
                        f"run again to resume it from {part}")
    if md5 is not None:
        verify_md5(part, md5)
    os.replace(part, dest)
    return dest


def safe_extract(archive, dest) -> list[str]:
    """Extract a tar archive into `dest` after checking every member; return the member names.

    Refuses (with `UserError`, writing nothing) absolute names, names that leave `dest`, symbolic
    or hard links whose target leaves `dest`, and device or FIFO members.
    """
    dest = Path(dest).resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                problem = _member_problem(member, dest)
                if problem:
                    raise UserError(f"refusing to extract {archive}: member {member.name!r} {problem}")
            dest.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: the library checks too
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError) as error:
        raise UserError(f"{archive} is not a readable tar archive ({error}); delete it and "
                        "download again") from None
    return [member.name for member in members]


def _member_problem(member: tarfile.TarInfo, dest: Path) -> str | None:
    """Why `member` must not be extracted into `dest`, or None when it is safe."""
    name = member.name
    if PurePosixPath(name).is_absolute() or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    target = (dest / name).resolve()
    if not _inside(target, dest):
        return "would be written outside the target folder"
    if member.isdev() or member.isfifo():
        return "is a device or FIFO"
    if member.issym():
        if PurePosixPath(member.linkname).is_absolute():
            return f"is a symbolic link to an absolute path ({member.linkname})"
        if not _inside((target.parent / member.linkname).resolve(), dest):
            return f"is a symbolic link pointing outside the target folder ({member.linkname})"
    if member.islnk() and not _inside((dest / member.linkname).resolve(), dest):
        return f"is a hard link pointing outside the target folder ({member.linkname})"
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def download_birds(data_dir) -> Path:
    """CUB-200-2011 into ``<data_dir>/CUB_200_2011``; returns that folder."""
    data_dir = Path(data_dir).expanduser()
    target = data_dir / "CUB_200_2011"
    if (target / "images.txt").is_file():
        print(f"CUB-200-2011 is already in {target}")
    else:
        archive = download_file(CUB_URL, data_dir / "CUB_200_2011.tgz", md5=CUB_MD5)
        print(f"extracting {archive} ...")
        safe_extract(archive, data_dir)
        if not (target / "images.txt").is_file():
            raise UserError(f"{archive} did not contain CUB_200_2011/images.txt; delete it and run again")
        print(f"CUB-200-2011 is in {target} (you may delete {archive})")
    print(CAPTIONS_HELP.format(target=target, data_dir=data_dir))
    return target


def download_torchvision_set(name: str, data_dir) -> Path:
    """MNIST / Fashion-MNIST / CIFAR-10 train and test files into ``<data_dir>/<name>``."""
    import torchvision  # imported here: the birds download and CLI errors need no torch

    from diffusion.data.torchvision_sets import SPECS

    root = Path(data_dir).expanduser() / name
    source = getattr(torchvision.datasets, SPECS[name].source)
    for train in (True, False):
        try:
            source(str(root), train=train, download=True)
        except Exception as error:  # torchvision's many network and file errors: one line for the user
            raise UserError(f"could not download {name} into {root} ({error})") from None
    print(f"{name} is in {root}")
    return root


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad input as a `UserError` (one line) instead of usage + exit."""

    def error(self, message):
        raise UserError(f"{message}; usage: python -m diffusion.data.download "
                        f"{{{','.join(['birds', *TORCHVISION_SETS])}}} [--data-dir DIR]")


def main(argv=None) -> int:
    parser = _OneLineParser(prog="python -m diffusion.data.download",
                            description="Download a dataset into the data folder.")
    parser.add_argument("dataset", choices=["birds", *TORCHVISION_SETS], help="which dataset")
    parser.add_argument("--data-dir", default="data", help="the data folder (paths.data_dir); default: data")
    try:
        args = parser.parse_args(argv)
        if args.dataset == "birds":
            download_birds(args.data_dir)
        else:
            download_torchvision_set(args.dataset, args.data_dir)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; run the command again to resume the download", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
