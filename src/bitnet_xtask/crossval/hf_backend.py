"""The `hf:<checkpoint dir>` backend: the model's own definition, run by transformers.

The NumPy reference and the engines compute a GGUF's graph; this backend runs the Hugging
Face checkpoint the GGUF was converted from, through the modeling code transformers ships
for its family (`models/llama/modeling_llama.py`, `models/bitnet/modeling_bitnet.py`),
on the CPU. So a deviation every engine shares from the model's definition (BitNet's
squared ReLU computed as SiLU) shows against it. The `model` a call is given is the GGUF
twin the other backends run; this backend does not read it.

torch and transformers are an optional extra (`pip install 'bitnet-xtask[hf]'`),
imported at the first evaluation; `open_hf_backend` checks the checkpoint and that they
are installed before anything runs. The model is loaded once (`from_pretrained`,
safetensors only, no remote code, no network) and kept until `close()`. It runs in
float32 by default, or in the dtype the checkpoint declares (`dtype="checkpoint"`);
logits are written as float32 either way. It runs in this process: no engine deadline
applies. With a trace request the prompt's module outputs are recorded through forward
hooks (`hf_trace`), and `step_runner` re-runs single steps for the trace comparison.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from bitnet_xtask.crossval.backends import Evaluation, save_npy
from bitnet_xtask.crossval.engine_process import BackendError
from bitnet_xtask.crossval.eval_options import DEFAULT_OPTIONS, EvalOptions
from bitnet_xtask.crossval.logits_file import LogitsFile
from bitnet_xtask.crossval.traces import TraceWriter, read_trace
from bitnet_xtask.errors import UsageError
from bitnet_xtask.hf.checkpoint import Checkpoint, read_checkpoint
from bitnet_xtask.hf.extra import INSTALL_HINT, require

if TYPE_CHECKING:
    from bitnet_xtask.crossval.hf_trace import HFStepRunner

EXTRA = ("torch", "transformers")
#: What `dtype` may be: float32, or whatever the checkpoint declares (`dtype="auto"`).
DTYPES = ("float32", "checkpoint")


def require_extra() -> None:
    """UsageError (exit 2) unless torch and transformers can be imported."""
    require(EXTRA, "the hf: backend")


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@dataclass
class HFBackend:
    """A Hugging Face checkpoint, run by transformers on the CPU."""

    tokenizes: ClassVar[bool] = True

    spec: str
    checkpoint: Checkpoint
    threads: int | None = None
    dtype: str = "float32"  # one of DTYPES
    _model: Any = field(default=None, repr=False)  # a transformers PreTrainedModel
    _tokenizer: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UsageError(f"{self.spec}: unknown dtype {self.dtype!r}",
                             f"use one of {', '.join(DTYPES)}")  # fmt: skip

    def identity(self) -> dict[str, Any]:
        return {
            "kind": "hf",
            "directory": str(self.checkpoint.directory),
            "transformers": _version("transformers"),
            "torch": _version("torch"),
            "dtype": self.dtype,
            "compute_dtype": self._compute_dtype(),
            "checkpoint": self.checkpoint.identity(),
        }

    def _compute_dtype(self) -> str | None:
        """The dtype the model runs in (once loaded, what it loaded as; before, what it
        will be: None when the checkpoint declares none and its weights decide)."""
        if self._model is not None:
            return str(self._model.dtype).removeprefix("torch.")
        return "float32" if self.dtype == "float32" else self.checkpoint.dtype

    def close(self) -> None:
        self._model = self._tokenizer = None

    def _network(self) -> Any:
        if self._model is None:
            self._model = _load_model(self.checkpoint.directory, self.dtype, self.threads)
        return self._model

    def tokenize(self, model: Path, prompt: str, workdir: Path) -> list[int] | None:
        """The checkpoint's own tokenizer's ids, with the special tokens (BOS) its
        tokenizer config adds."""
        if self._tokenizer is None:
            self._tokenizer = _load_tokenizer(self.checkpoint.directory)
        return [int(i) for i in self._tokenizer(prompt)["input_ids"]]

    def evaluate(
        self,
        model: Path,
        tokens: list[int],
        n_predict: int,
        workdir: Path,
        options: EvalOptions = DEFAULT_OPTIONS,
    ) -> Evaluation:
        started = time.monotonic()
        if not tokens:
            raise BackendError(f"{self.spec}: no token ids to evaluate")
        network = self._network()
        vocab = int(network.get_input_embeddings().num_embeddings)
        if bad := [t for t in tokens if not 0 <= t < vocab]:
            raise BackendError(
                f"{self.spec}: token id {bad[0]} is outside the vocabulary (0..{vocab - 1})"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        trace = None
        if options.trace is None:
            logits, continuation = forward(network, tokens, n_predict)
        else:
            from bitnet_xtask.crossval.hf_trace import PromptHooks, architecture

            arch = architecture(model)
            with TraceWriter(workdir / "trace", self.spec, len(tokens), options.trace) as writer:
                hooks = PromptHooks(network, arch, writer)
                logits, continuation = forward(network, tokens, n_predict, hooks)
            trace = read_trace(workdir / "trace", len(tokens))
        path = workdir / "logits.npy"
        save_npy(path, logits)
        return Evaluation(LogitsFile.npy(path), continuation, time.monotonic() - started, trace)

    def step_runner(self, model: Path) -> HFStepRunner:
        """Re-runs single steps of this checkpoint (`HFStepRunner.rerun`), mapped by the
        architecture of `model`, its GGUF twin; loads the network if it is not loaded."""
        from bitnet_xtask.crossval.hf_trace import HFStepRunner, architecture

        return HFStepRunner(self._network(), architecture(model), self.spec)


def open_hf_backend(spec: str, directory: Path, threads: int | None, dtype: str) -> HFBackend:
    """The `hf:<dir>` backend, refused (exit 2) before anything runs when the directory
    is not a supported checkpoint or the extra is missing."""
    checkpoint = read_checkpoint(directory)
    require_extra()
    if (checkpoint.quantization or {}).get("quant_method") == "bitnet":
        # transformers' BitNet quantizer refuses to load without it (quantizer_bitnet.py:46)
        require(("accelerate",), "a checkpoint that declares BitNet quantization")
    return HFBackend(spec, checkpoint, threads, dtype)


def _import_extra() -> tuple[Any, Any]:
    """torch and transformers (installed, `require_extra` said; but one may still fail
    to import, a broken wheel)."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise UsageError(f"the hf: backend needs torch and transformers: {exc}",
                         INSTALL_HINT) from None  # fmt: skip
    return torch, transformers


def _load_model(directory: Path, dtype: str, threads: int | None) -> Any:
    """`AutoModelForCausalLM.from_pretrained` on the CPU, in eval mode."""
    torch, transformers = _import_extra()
    if threads:
        torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()  # a bar per load, on stderr
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(directory),
            dtype=torch.float32 if dtype == "float32" else "auto",
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=False,
        )
    except (OSError, ValueError, ImportError, RuntimeError, KeyError) as exc:
        raise BackendError(f"transformers cannot load {directory}: {exc}") from None
    return model.eval()  # on the CPU: no device_map


def _load_tokenizer(directory: Path) -> Any:
    _, transformers = _import_extra()
    try:
        return transformers.AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, ImportError, RuntimeError, KeyError) as exc:
        raise BackendError(
            f"transformers cannot load the tokenizer of {directory}: {exc}",
            "a checkpoint dir needs its tokenizer files (tokenizer.json or tokenizer.model) "
            "to tokenize; or give the ids with --tokens-file",
        ) from None


def _cache_argument(network: Any) -> str:
    """The name `forward` takes the KV cache by: `cache` since transformers 5.24 renamed
    it (utils/generic.py maps the old `past_key_values` onto it, with a warning)."""
    import inspect

    return (
        "cache" if "cache" in inspect.signature(network.forward).parameters else "past_key_values"
    )


def _argmax(row: Any) -> int:
    """The first maximum of a logits row, as numpy (`ReferenceModel.greedy`) takes it."""
    return int(np.argmax(row.float().numpy()))


def forward(
    network: Any,
    tokens: list[int],
    n_predict: int,
    prompt_hooks: AbstractContextManager[object] | None = None,
) -> tuple[npt.NDArray[np.float32], list[int]]:
    """Teacher-forced float32 logits of every position of `tokens` (n_tokens, n_vocab),
    and `n_predict` tokens of greedy continuation, each step fed through the KV cache.
    `prompt_hooks` (the trace's `PromptHooks`) is entered for the prompt's forward call
    alone: the continuation's steps are not traced."""
    torch, _ = _import_extra()
    cache_name = _cache_argument(network)
    with torch.inference_mode():
        prompt = torch.tensor([tokens], dtype=torch.long)
        with prompt_hooks or nullcontext():
            out = network(input_ids=prompt, use_cache=n_predict > 0)
        logits = np.ascontiguousarray(out.logits[0].float().numpy(), dtype=np.float32)
        continuation: list[int] = []
        while len(continuation) < n_predict:
            continuation.append(_argmax(out.logits[0, -1]))
            if len(continuation) < n_predict:
                step = torch.tensor([[continuation[-1]]], dtype=torch.long)
                out = network(input_ids=step, use_cache=True, **{cache_name: out[cache_name]})
    return logits, continuation
