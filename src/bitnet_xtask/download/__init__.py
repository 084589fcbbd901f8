"""Resumable, verified, durable downloads from Hugging Face or a mirror."""

from .api import (
    DEFAULT_FILE,
    DEFAULT_REPO,
    DownloadOptions,
    DownloadPlan,
    DownloadResult,
    FileSpec,
    download_files,
    download_model,
    plan_download,
)
from .manifest import read_manifest

__all__ = [
    "DEFAULT_FILE",
    "DEFAULT_REPO",
    "DownloadOptions",
    "DownloadPlan",
    "DownloadResult",
    "FileSpec",
    "download_files",
    "download_model",
    "plan_download",
    "read_manifest",
]
