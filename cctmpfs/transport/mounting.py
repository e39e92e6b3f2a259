"""Mounting: what goes wrong is a MountError, whose message the user sees.

Threading: used by the main thread only, before and after serving.
"""

from __future__ import annotations


class MountError(Exception):
    """The mount could not be made; the message is shown to the user."""
