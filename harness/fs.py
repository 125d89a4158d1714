"""Real file systems that fail, for fault tests: a small tmpfs to fill up, and an ext4
image on a loop device that the kernel turns read-only.

No product code pretends anything: SQLite (or the recorder) meets ENOSPC from a real
full tmpfs, and EROFS/EIO from a real ext4 that hit an error with
``errors=remount-ro``. Every helper unmounts what it mounted, even when the test fails.
Root is needed (``mount``); :func:`can_mount` says whether this process may.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def can_mount() -> bool:
    """True when this process can mount file systems (root, with mount(8))."""
    return os.geteuid() == 0 and shutil.which("mount") is not None


def _umount(path: Path) -> None:
    # Lazy: a straggling open file (a child process not yet reaped) must not leave the
    # mount behind; it goes once the last file is closed.
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. ``"8m"``) mounted at ``path``; unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        _umount(path)


def fill(path: Path, *, block: int = 65536) -> int:
    """Write ``path`` until its file system says ENOSPC; returns the bytes written.

    The file system is then full to the last block: delete ``path`` to free it.
    """
    written = 0
    chunk = b"\0" * block
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk) or 0
            except OSError as exc:
                if exc.errno != 28:  # ENOSPC is the point; anything else is not
                    raise
                if block == 1:
                    break
                block = max(1, block // 16)  # top up the last partial block
                chunk = b"\0" * block
    return written


@dataclass
class Ext4:
    """An ext4 file system on a loop device, mounted with ``errors=remount-ro``."""

    mountpoint: Path
    device: str
    """e.g. ``/dev/loop3``."""

    def fail(self, message: str = "fault test") -> None:
        """Make the kernel record a file system error: with ``errors=remount-ro`` it
        turns the file system read-only at once, as after a real disk error; writes then
        fail (EROFS/EIO) until it is unmounted and checked."""
        name = os.path.basename(self.device)
        Path(f"/sys/fs/ext4/{name}/trigger_fs_error").write_text(message + "\n")

    def read_only(self) -> bool:
        """True when the kernel refuses new files (EROFS); after an error ext4 marks
        itself ``emergency_ro`` without the read-only flag ``statvfs`` shows."""
        probe = self.mountpoint / ".probe"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            return exc.errno == 30
        os.close(fd)
        probe.unlink()
        return False


@contextlib.contextmanager
def ext4_image(path: Path, size_mb: int = 16) -> Iterator[Ext4]:
    """A fresh ext4 image of ``size_mb`` MB mounted at ``path`` through a loop device;
    unmounted (and the loop device released) on exit."""
    path.mkdir(parents=True, exist_ok=True)
    image = path.parent / f"{path.name}.ext4"
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(path)],
                   check=True, capture_output=True)
    try:
        device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(path)], check=True,
                                capture_output=True, text=True).stdout.strip()
        yield Ext4(path, device)
    finally:
        _umount(path)
        with contextlib.suppress(OSError):
            image.unlink()
