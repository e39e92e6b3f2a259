"""The one exception type the core raises to say "answer this errno"."""

import errno as errno_mod
import os


class FsError(Exception):
    """A POSIX error answer. The FUSE adapter turns it into FUSEError(errno)."""

    def __init__(self, errno: int, detail: str = "") -> None:
        super().__init__(errno, detail)
        self.errno = errno
        self.detail = detail

    def __str__(self) -> str:
        name = errno_mod.errorcode.get(self.errno, str(self.errno))
        text = os.strerror(self.errno)
        return f"{name} ({text}){': ' + self.detail if self.detail else ''}"


class OptionError(ValueError):
    """A bad mount option; the message names it and is shown to the user as is."""
