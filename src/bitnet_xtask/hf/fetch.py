"""`fetch_checkpoint`: the files of a Hugging Face checkpoint that crossval runs, fetched
with download-model (resumable, cache-aware, SHA-256 verified, atomic: all of its
guarantees, file by file).

What is fetched, as `transformers.AutoModelForCausalLM.from_pretrained` and the pinned
converter read a checkpoint: `config.json`; the weights, `model.safetensors` or, for a
sharded checkpoint, `model.safetensors.index.json` and every shard its `weight_map`
names; the tokenizer files (`hf.checkpoint.TOKENIZER_FILES`) the repository has, at
least `tokenizer.json` or `tokenizer.model`. PyTorch `.bin` weights are not fetched:
safetensors only (unpickling runs code). The names are `hf.checkpoint`'s, the rule the
fetched folder is then read by.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bitnet_xtask.download import download_files
from bitnet_xtask.download.options import DownloadOptions, FileSpec
from bitnet_xtask.errors import NotFoundError
from bitnet_xtask.events import NullReporter, Reporter
from bitnet_xtask.fs import remove
from bitnet_xtask.hf.checkpoint import CONFIG, INDEX, TOKENIZER_FILES, WEIGHTS, shard_names

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from bitnet_xtask.download.options import HubOptions

TOKENIZERS = TOKENIZER_FILES[:2]
"""A checkpoint needs one of these: transformers reads either, the converter both."""
assert TOKENIZERS == ("tokenizer.json", "tokenizer.model")


def fetch_checkpoint(
    repo_id: str, *, reporter: Reporter | None = None, **options: Unpack[HubOptions]
) -> Path:
    """Fetch the checkpoint's files into download-model's folder for `repo_id` and return
    that folder; the files already there are revalidated, not fetched again."""
    opts = DownloadOptions(repo_id=repo_id, **options)
    reporter = reporter or NullReporter()
    config = _fetch(opts, CONFIG, reporter)
    assert config is not None  # a required file raises rather than coming back None
    folder = config.parent
    if _fetch(opts, INDEX, reporter, folder) is not None:
        shards = shard_names(folder / INDEX)
        download_files([FileSpec(shard) for shard in shards], opts, reporter)
        remove(folder / WEIGHTS)  # another revision's single file would be read first
    else:
        _fetch(opts, WEIGHTS, reporter)
    tokenizers = [_fetch(opts, name, reporter, folder) for name in TOKENIZERS]
    if not any(tokenizers):
        raise NotFoundError(
            f"{repo_id} has neither {' nor '.join(TOKENIZERS)}",
            "crossval needs the checkpoint's own tokenizer; check --hf-id and --hf-rev",
        )
    for name in TOKENIZER_FILES[2:]:
        _fetch(opts, name, reporter, folder)
    return folder


def _fetch(
    options: DownloadOptions, name: str, reporter: Reporter, optional_in: Path | None = None
) -> Path | None:
    """One file of the checkpoint. An optional one (`optional_in`: the checkpoint's
    folder) the repository lacks (404) is None, and a copy of it left there by another
    revision is removed: transformers would read it."""
    try:
        return download_files([FileSpec(name)], options, reporter)[0].path
    except NotFoundError:
        if optional_in is None:
            raise
        remove(optional_in / name)
        return None
