"""Resumable, verified, durable downloads from Hugging Face or a mirror.

The public names load on first use (PEP 562), so commands that never download (like
`gpu-preflight`) don't pay for importing the HTTP stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .defaults import DEFAULT_FILE, DEFAULT_REPO

if TYPE_CHECKING:
    from .api import download_files, download_model, download_url
    from .manifest import read_manifest
    from .many import FileRequest, download_many
    from .options import DownloadOptions, FileSpec
    from .plan import plan_download
    from .results import DownloadPlan, DownloadResult

_LAZY = {
    "DownloadOptions": "options",
    "DownloadPlan": "results",
    "DownloadResult": "results",
    "FileRequest": "many",
    "FileSpec": "options",
    "download_files": "api",
    "download_many": "many",
    "download_model": "api",
    "download_url": "api",
    "plan_download": "plan",
    "read_manifest": "manifest",
}

__all__ = [
    "DEFAULT_FILE",
    "DEFAULT_REPO",
    "DownloadOptions",
    "DownloadPlan",
    "DownloadResult",
    "FileRequest",
    "FileSpec",
    "download_files",
    "download_many",
    "download_model",
    "download_url",
    "plan_download",
    "read_manifest",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
