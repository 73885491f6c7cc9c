"""Conversion: round trip, manifest, dtype handling, and one clear error per kind of bad input."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import jdlm
from jdlm.checkpoint import sha256_file
from jdlm.convert import ConversionError, convert_checkpoint
from jdlm.convert.__main__ import main as convert_main
from tests.hf_fixtures import build_torch_model, write_hf_checkpoint


@pytest.fixture(scope="module")
def llada_src(tmp_path_factory):
    model = build_torch_model("llada", seed=3)
    return write_hf_checkpoint("llada", model, tmp_path_factory.mktemp("src") / "hf")


@pytest.fixture
def src(llada_src, tmp_path):
    """A private copy of the source checkpoint that a test may damage."""
    return shutil.copytree(llada_src, tmp_path / "hf")


def test_round_trip_is_deterministic_and_manifest_matches(llada_src, tmp_path):
    dst = convert_checkpoint("llada", llada_src, tmp_path / "out")
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["family"] == "llada" and manifest["dtype"] == "float32"
    for name, digest in manifest["source_files"].items():
        assert sha256_file(llada_src / name) == digest
    for name, digest in manifest["files"].items():
        assert sha256_file(dst / name) == digest
    params, tok = jdlm.load(dst)
    assert manifest["params"]["layers/0/q"] == list(params.weights["layers"][0]["q"].shape)
    tokens = jnp.arange(12)[None] % 200
    a = jdlm.forward(params, tokens).logits
    b = jdlm.forward(jdlm.load(dst)[0], tokens).logits
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert tok.decode(tok.encode("w5 w6 <eos> w7")) == "w5 w6"


def test_bf16_source_stays_bf16_and_dtype_casts(tmp_path):
    import ml_dtypes

    model = build_torch_model("dream", seed=4)
    src = write_hf_checkpoint("dream", model, tmp_path / "hf", dtype=ml_dtypes.bfloat16)
    kept = convert_checkpoint("dream", src, tmp_path / "bf16")
    assert jdlm.load_params(kept).dtype == jnp.bfloat16
    cast = convert_checkpoint("dream", src, tmp_path / "fp32", dtype="float32")
    assert jdlm.load_params(cast).dtype == jnp.float32


def test_truncated_shard_is_reported(src, tmp_path):
    f = src / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated"):
        convert_checkpoint("llada", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_shard_is_reported(tmp_path):
    model = build_torch_model("llada", seed=3)
    src = write_hf_checkpoint("llada", model, tmp_path / "hf", shards=2)
    os.remove(src / "model-00002-of-00002.safetensors")
    with pytest.raises(ConversionError, match="missing"):
        convert_checkpoint("llada", src, tmp_path / "out")


def test_unknown_model_type(src, tmp_path):
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="model_type 'gpt2' is not supported"):
        convert_checkpoint("llada", src, tmp_path / "out")


def test_family_mismatch(src, tmp_path):
    with pytest.raises(ConversionError, match="describes a 'llada' model"):
        convert_checkpoint("dream", src, tmp_path / "out")


def test_shape_mismatch_names_the_tensor(src, tmp_path):
    cfg = json.loads((src / "config.json").read_text())
    cfg["mlp_hidden_size"] = 96
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=r"ff_proj.weight has shape \[128, 64\], but config.json implies"):
        convert_checkpoint("llada", src, tmp_path / "out")


def test_missing_tokenizer(src, tmp_path):
    os.remove(src / "tokenizer.json")
    with pytest.raises(ConversionError, match="no tokenizer.json"):
        convert_checkpoint("llada", src, tmp_path / "out")


def test_destination_exists_needs_overwrite(llada_src, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    with pytest.raises(ConversionError, match="--overwrite"):
        convert_checkpoint("llada", llada_src, dst)
    convert_checkpoint("llada", llada_src, dst, overwrite=True)
    assert (dst / "manifest.json").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_interrupted_conversion_leaves_nothing(llada_src, tmp_path, monkeypatch):
    import jdlm.convert.convert as conv

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(conv, "write_manifest", boom)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint("llada", llada_src, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_one_line(src, tmp_path, capsys):
    os.remove(src / "tokenizer.json")
    assert convert_main(["llada", str(src), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_load_refuses_hf_directory_and_corrupt_params(llada_src, tmp_path):
    with pytest.raises(jdlm.CheckpointError, match="convert it first"):
        jdlm.load(llada_src)
    dst = convert_checkpoint("llada", llada_src, tmp_path / "out")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["jdlm_config"]["mlp_hidden"] = 96
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(jdlm.CheckpointError, match="do not match config.json"):
        jdlm.load(dst)


def _peak_rss_mb(code: str) -> float:
    """Peak resident memory (MB) of a fresh Python process running `code`."""
    import subprocess
    import sys

    # VmHWM (the process's own high-water mark) starts afresh at exec, unlike ru_maxrss, which a child inherits
    # from the process that forked it.
    report = "\nprint([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    out = subprocess.run([sys.executable, "-c", code + report], check=True, capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return int(out.stdout.split()[-1]) / 1024


def test_conversion_memory_stays_near_the_output_size(tmp_path):
    import ml_dtypes

    from jdlm.convert.safetensors_io import write_safetensors

    src = tmp_path / "hf"
    model = build_torch_model("llada", seed=0)
    write_hf_checkpoint("llada", model, src)
    cfg = json.loads((src / "config.json").read_text())
    D, F, V, L = 1024, 2816, 32768, 4
    cfg.update(d_model=D, n_heads=8, n_kv_heads=8, n_layers=L, mlp_hidden_size=F, embedding_size=V, vocab_size=V)
    (src / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape, dtype=np.float32).astype(ml_dtypes.bfloat16)

    t = "model.transformer"
    tensors = {f"{t}.wte.weight": r(V, D), f"{t}.ln_f.weight": r(D), f"{t}.ff_out.weight": r(V, D)}
    for i in range(L):
        b = f"{t}.blocks.{i}"
        tensors.update({f"{b}.attn_norm.weight": r(D), f"{b}.ff_norm.weight": r(D), f"{b}.ff_proj.weight": r(F, D),
                        f"{b}.up_proj.weight": r(F, D), f"{b}.ff_out.weight": r(D, F)})
        tensors.update({f"{b}.{n}.weight": r(D, D) for n in ("q_proj", "k_proj", "v_proj", "attn_out")})
    write_safetensors(src / "model.safetensors", tensors)
    size_mb = sum(a.nbytes for a in tensors.values()) / 2**20
    del tensors

    baseline = _peak_rss_mb("import jax, jax.numpy as jnp, orbax.checkpoint, jdlm.convert; "
                            "jnp.zeros(1).block_until_ready()")
    peak = _peak_rss_mb(f"from jdlm.convert import convert_checkpoint; convert_checkpoint('llada', {str(src)!r}, "
                        f"{str(tmp_path / 'out')!r})")
    print(f"output {size_mb:.0f} MB, baseline {baseline:.0f} MB, peak {peak:.0f} MB")
    # The output, plus orbax's write buffer (capped at 1 GB in flight), plus slack; whole-tree staging (the state
    # before streaming) took about 3.9x the output.
    assert peak - baseline < size_mb + min(size_mb, 1024) + 150


# ---------------------------------------------------------------- destinations: nothing lost


def _tree(path) -> dict:
    """{relative path: sha256} of every file under `path`: what must survive a refused conversion."""
    return {p.relative_to(path).as_posix(): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}


def _refuse_reading(monkeypatch):
    """Makes any read of the source fail loudly: a destination check must come first."""
    import jdlm.convert.convert as conv

    def read(*a, **k):
        raise AssertionError("the source was read before the destination was checked")

    monkeypatch.setattr(conv, "read_config_json", read)
    monkeypatch.setattr(conv, "SafetensorsCheckpoint", read)


@pytest.mark.parametrize("where, message", [("same", "is the source"), ("parent", "contains the source"),
                                            ("inside", "lies inside the source"), ("link", "is the source")])
def test_overwrite_never_deletes_the_source(src, tmp_path, monkeypatch, where, message):
    other = tmp_path / "other-model"  # a sibling that `convert ... PARENT --overwrite` used to delete
    other.mkdir()
    (other / "weights.bin").write_bytes(b"precious")
    (tmp_path / "link").symlink_to(src)
    dst = {"same": src, "parent": tmp_path, "inside": src / "jdlm", "link": tmp_path / "link"}[where]
    before = _tree(tmp_path)
    _refuse_reading(monkeypatch)
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint("llada", src, dst, overwrite=True)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("dst, message", [(".", "is the current folder"), ("~", "is the home folder"),
                                          ("/", "contains the source")])
def test_current_home_and_root_folders_are_refused(src, tmp_path, monkeypatch, dst, message):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home if dst == "." else tmp_path)
    _refuse_reading(monkeypatch)
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint("llada", src, dst, overwrite=True)
    from jdlm.checkpoint import (
        check_destination,  # "/" without a source: refused as the folder above them
    )

    with pytest.raises(jdlm.CheckpointError, match="current folder or contains it"):
        check_destination("/", overwrite=True)


def test_overwrite_replaces_only_a_jdlm_checkpoint(llada_src, tmp_path, monkeypatch):
    dst = tmp_path / "notes"
    dst.mkdir()
    (dst / "todo.txt").write_text("keep me")
    with pytest.raises(ConversionError, match="not a jdlm checkpoint"):
        convert_checkpoint("llada", llada_src, dst, overwrite=True)
    assert (dst / "todo.txt").read_text() == "keep me"
    dst = convert_checkpoint("llada", llada_src, tmp_path / "model")
    convert_checkpoint("llada", llada_src, dst, overwrite=True)  # a jdlm checkpoint may be replaced
    assert jdlm.load_params(dst).config.family == "llada"


def test_existing_destination_is_refused_before_reading(src, tmp_path, monkeypatch):
    dst = tmp_path / "out"
    dst.mkdir()
    _refuse_reading(monkeypatch)
    with pytest.raises(ConversionError, match="already exists"):
        convert_checkpoint("llada", src, dst)


def test_progress_bar_goes_to_stderr(llada_src, tmp_path, capsys):
    convert_checkpoint("llada", llada_src, tmp_path / "out", progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "converting tensors" in captured.err


# ---------------------------------------------------------------- damaged checkpoints do not load


def _flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _largest_params_file(directory):
    return max((p for p in (directory / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_a_flipped_byte_in_params_is_refused_on_load(llada_src, tmp_path, monkeypatch):
    dst = convert_checkpoint("llada", llada_src, tmp_path / "out")
    manifest = json.loads((dst / "manifest.json").read_text())
    params_files = {p.relative_to(dst).as_posix() for p in (dst / "params").rglob("*") if p.is_file()}
    assert params_files and params_files <= set(manifest["files"]) and params_files <= set(manifest["bytes"])
    damaged = _largest_params_file(dst)
    _flip_byte(damaged)
    with pytest.raises(jdlm.CheckpointError, match=f"{damaged.name} does not match its sha256.*convert"):
        jdlm.load(dst)
    jdlm.load(dst, verify=False)  # the opt-out for very large models: sizes only
    monkeypatch.setenv("JDLM_VERIFY", "0")
    jdlm.load(dst)


def test_a_truncated_params_file_is_refused_even_without_hashing(llada_src, tmp_path):
    dst = convert_checkpoint("llada", llada_src, tmp_path / "out")
    damaged = _largest_params_file(dst)
    damaged.write_bytes(damaged.read_bytes()[:-64])
    with pytest.raises(jdlm.CheckpointError, match=f"{damaged.name} has .* bytes where manifest.json records"):
        jdlm.load_params(dst, verify=False)


def test_an_edited_config_is_refused_on_load(llada_src, tmp_path):
    dst = convert_checkpoint("llada", llada_src, tmp_path / "out")
    text = (dst / "config.json").read_text()
    assert '"rope_theta": 10000.0' in text
    (dst / "config.json").write_text(text.replace('"rope_theta": 10000.0', '"rope_theta": 20000.0'))
    with pytest.raises(jdlm.CheckpointError, match="config.json does not match its sha256.*JDLM_VERIFY=0"):
        jdlm.load_params(dst)
    (dst / "config.json").write_text(text.replace('"rope_theta": 10000.0', '"rope_theta": 20000.25'))
    with pytest.raises(jdlm.CheckpointError, match="config.json has .* bytes where manifest.json records"):
        jdlm.load_params(dst)
    assert jdlm.load_params(dst, verify=False).config.rope_theta == 20000.25  # an edit on purpose: the opt-out


def test_save_records_and_checks_params_hashes(llada_src, tmp_path):
    from jdlm.checkpoint import save

    params = jdlm.load_params(convert_checkpoint("llada", llada_src, tmp_path / "converted"))
    dst = save(tmp_path / "saved", params)
    _flip_byte(_largest_params_file(dst))
    with pytest.raises(jdlm.CheckpointError, match="does not match its sha256"):
        jdlm.load_params(dst)


@pytest.mark.parametrize("name", ["tiny", "tiny-ar"])
def test_shipped_manifests_cover_params_and_hold_no_absolute_path(name):
    import re

    from jdlm.checkpoint import packaged_model_dir

    directory = packaged_model_dir(name)
    manifest = json.loads((directory / "manifest.json").read_text())
    on_disk = {p.relative_to(directory).as_posix() for p in directory.rglob("*")
               if p.is_file() and p.name != "manifest.json"}
    assert set(manifest["files"]) == set(manifest["bytes"]) == on_disk

    def strings(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield k
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node

    absolute = [s for s in strings(manifest) if re.match(r"^(/|~|[A-Za-z]:[\\/])", s)]
    assert absolute == []
    jdlm.load_params(name, verify=True)  # every recorded hash matches the shipped files


def test_corrupt_json_files_are_one_line_errors(llada_src, tmp_path):
    from jdlm.tokenizer import Tokenizer

    dst = convert_checkpoint("llada", llada_src, tmp_path / "out")
    config = jdlm.load_params(dst).config
    (dst / "tokenizer_config.json").write_text('{"chat_template": ')
    with pytest.raises(jdlm.TokenizerError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer.from_dir(dst, config)
    (dst / "manifest.json").write_text("{not json")
    with pytest.raises(jdlm.CheckpointError, match="manifest.json is corrupt"):
        jdlm.load_params(dst)
    from jdlm.cli.inspect import describe_checkpoint

    with pytest.raises(jdlm.CheckpointError, match="manifest.json is corrupt"):
        describe_checkpoint(str(dst))
    (dst / "config.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(jdlm.CheckpointError, match="config.json is not valid JSON"):
        jdlm.load_params(dst)


# ---------------------------------------------------------------- source checkpoints: one clear error each


@pytest.mark.parametrize("key, value", [("hidden_act", "gelu"), ("use_sliding_window", True),
                                        ("rope_scaling", {"type": "yarn", "factor": 4.0})])
def test_dream_options_jdlm_lacks_are_refused_by_name(key, value):
    from jdlm.config import ConfigError, from_hf

    hf = {"model_type": "Dream", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
          "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 256, "mask_token_id": 250,
          "eos_token_id": 1, "pad_token_id": 1, "hidden_act": "silu", "use_sliding_window": False, "rope_scaling": None}
    assert from_hf(hf).family == "dream"
    with pytest.raises(ConfigError, match=f"{key}=.* is not supported"):
        from_hf({**hf, key: value})


def _raw_safetensors(path, header: bytes, n: int | None = None, data: bytes = b"") -> None:
    import struct

    path.write_bytes(struct.pack("<Q", len(header) if n is None else n) + header + data)


def _entry(begin, end):
    return {"dtype": "F32", "shape": [(end - begin) // 4], "data_offsets": [begin, end]}


@pytest.mark.parametrize("case, message", [
    ("huge header", "more than the 100 MB"),
    ("deep nesting", "corrupt header"),
    ("not an object", "not a JSON object"),
    ("entry without offsets", "malformed"),
    ("overlapping offsets", "overlap"),
])
def test_bad_safetensors_headers(tmp_path, case, message):
    from jdlm.convert.safetensors_io import SafetensorsFile
    from jdlm.errors import SourceCheckpointError

    f = tmp_path / "model.safetensors"
    if case == "huge header":  # a sparse 3 GiB file whose header claims nearly all of it
        _raw_safetensors(f, b"{}", n=3 * 2**30 - 8)
        os.truncate(f, 3 * 2**30)
    elif case == "deep nesting":
        _raw_safetensors(f, b"[" * 200_000 + b"]" * 200_000)
    elif case == "not an object":
        _raw_safetensors(f, b"[1, 2]")
    elif case == "entry without offsets":
        _raw_safetensors(f, json.dumps({"a": {"dtype": "F32", "shape": [2]}}).encode())
    else:
        header = json.dumps({"a": _entry(0, 16), "b": _entry(8, 24)}).encode()
        _raw_safetensors(f, header, data=bytes(24))
    with pytest.raises(SourceCheckpointError, match=message):
        SafetensorsFile(f)


@pytest.mark.parametrize("shard", ["../elsewhere.safetensors", "/etc/model.safetensors"])
def test_shard_paths_outside_the_source_are_refused(tmp_path, shard):
    model = build_torch_model("llada", seed=3)
    src = write_hf_checkpoint("llada", model, tmp_path / "hf", shards=2)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="outside .*fix the index"):
        convert_checkpoint("llada", src, tmp_path / "out")


def test_mixed_dtypes_convert_to_float32_or_to_dtype(src, tmp_path, capsys):
    import ml_dtypes

    from tests.hf_fixtures import rewrite_tensors

    def mix(tensors):
        tensors["model.transformer.ln_f.weight"] = tensors["model.transformer.ln_f.weight"].astype(ml_dtypes.bfloat16)

    rewrite_tensors(src, mix)
    widened = convert_checkpoint("llada", src, tmp_path / "fp32")
    assert "storing every tensor as float32" in capsys.readouterr().err
    assert jdlm.load_params(widened).dtype == jnp.float32
    cast = convert_checkpoint("llada", src, tmp_path / "bf16", dtype="bfloat16")
    assert jdlm.load_params(cast).dtype == jnp.bfloat16
    assert json.loads((cast / "manifest.json").read_text())["source_dtype"] == "bfloat16, float32"


@pytest.mark.parametrize("case, dtype, message", [
    ("nan", None, "q_proj.weight holds NaN or inf"),
    ("inf", None, "q_proj.weight holds NaN or inf"),
    ("large", "float16", "q_proj.weight has values beyond the range of float16.*--dtype bfloat16"),
    ("integer", None, "q_proj.weight is int32, but weights must be floating point"),
])
def test_non_finite_and_integer_weights_are_refused_by_name(src, tmp_path, case, dtype, message):
    from tests.hf_fixtures import rewrite_tensors

    name = "model.transformer.blocks.1.q_proj.weight"

    def damage(tensors):
        t = tensors[name].copy()
        if case == "integer":
            tensors[name] = t.astype(np.int32)
            return
        t[3, 5] = {"nan": np.nan, "inf": np.inf, "large": 1e6}[case]
        tensors[name] = t

    rewrite_tensors(src, damage)
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint("llada", src, tmp_path / "out", dtype=dtype)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- writing: full or read-only disks, leftovers, modes


def _convert_with_patched_save(patch: str, src, dst):
    """Runs `python -m jdlm.convert llada SRC DST --quiet` in a fresh process whose orbax save is `patch`
    (source of a `save(self, *a, **k)` function that may call `real_save`)."""
    import subprocess
    import sys

    from tests.test_cli import ENV

    code = ("import errno, logging, os, signal, sys, time\nimport orbax.checkpoint as ocp\n"
            "real_save = ocp.Checkpointer.save\n" + patch + "\nocp.Checkpointer.save = save\n"
            "from jdlm.convert.__main__ import main\n"
            f"sys.exit(main(['llada', {str(src)!r}, {str(dst)!r}, '--quiet']))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)


def test_full_disk_is_one_line(llada_src, tmp_path, monkeypatch):
    import errno

    from jdlm.config import ModelConfig

    # What orbax does when a write hits ENOSPC: its writer threads log tracebacks, tensorstore raises this.
    patch = """
def save(self, *a, **k):
    logging.getLogger("absl").error("_SignalingThread.run() raised an exception: Traceback ...")
    raise ValueError("RESOURCE_EXHAUSTED: Error writing: Failed to write 171964 bytes to file 17: "
                     "No space left on device [os_error_code='28']")
"""
    out = _convert_with_patched_save(patch, llada_src, tmp_path / "a")
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and err[0].startswith("error: no space left on the disk of"), err
    assert list(tmp_path.iterdir()) == []

    def enospc(self, path):  # an OSError from any other write
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ModelConfig, "save", enospc)
    with pytest.raises(ConversionError, match="no space left"):
        convert_checkpoint("llada", llada_src, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_read_only_destination_is_one_line(llada_src, tmp_path, monkeypatch, capsys):
    import errno

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permission bits: fail the way the kernel fails for everyone else
        real_mkdir = os.mkdir

        def mkdir(path, *a, **k):
            if str(path).startswith(str(read_only)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_mkdir(path, *a, **k)

        monkeypatch.setattr(os, "mkdir", mkdir)
    try:
        assert convert_main(["llada", str(llada_src), str(read_only / "out"), "--quiet"]) == 2
    finally:
        read_only.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write to" in err[0] and "choose a destination folder" in err[0], err


def test_stale_temporaries_of_dead_processes_are_removed(llada_src, tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, host = int(dead.stdout), socket.gethostname()
    stale = [tmp_path / f".out.tmp-{dead_pid}-{host}-0123abcd", tmp_path / f".out.old-{dead_pid}-{host}"]
    kept = [tmp_path / f".out.tmp-{os.getpid()}-{host}-89abcdef",  # a live process still writing
            tmp_path / f".out.tmp-{dead_pid}-another-host-0123abcd",  # maybe alive elsewhere (shared disk)
            tmp_path / ".other.tmp-1-x-0123abcd"]
    for d in stale + kept:
        (d / "params").mkdir(parents=True)
    convert_checkpoint("llada", llada_src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out"] + [d.name for d in kept])


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_during_the_write_leaves_nothing(llada_src, tmp_path, signame):
    """The signal arrives while orbax writes: jdlm finishes the files in flight, then removes everything."""
    patch = f"""
def save(self, *a, **k):
    os.kill(os.getpid(), signal.{signame})
    time.sleep(0.2)
    return real_save(self, *a, **k)
"""
    out = _convert_with_patched_save(patch, llada_src, tmp_path / "out")
    assert out.returncode == 130, out.stderr
    assert "stopping once the files in flight are written" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "error: interrupted"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_converted_folders_follow_the_umask(llada_src, tmp_path, umask):
    old = os.umask(umask)
    try:
        dst = convert_checkpoint("llada", llada_src, tmp_path / "out")
    finally:
        os.umask(old)
    folders = [dst, *(p for p in dst.rglob("*") if p.is_dir())]
    assert {oct(p.stat().st_mode & 0o777) for p in folders} == {oct(0o777 & ~umask)}


# ---------------------------------------------------------------- chat templates are bounded


@pytest.mark.parametrize("template, message", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took more than"),
    ("{% for i in range(100000) %}{{ 'abcdefghijklmnop' }}{% endfor %}", "exceeds 1,000,000 characters"),
    ("{{ 'x' * 10 ** 9 }}", "more than 1,000,000 items"),
    ("{{ 10 ** 100000000 }}", "power is too large"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursion too deep"),
    ("{% for m in messages %}", "chat template: "),
])
def test_chat_templates_are_bounded(monkeypatch, template, message):
    import time

    import jdlm.tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "TEMPLATE_SECONDS", 0.5)
    tok = tokenizer_module.Tokenizer(None, jdlm.tiny(), chat_template=template)
    t0 = time.monotonic()
    with pytest.raises(jdlm.TokenizerError, match=message):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("case", ["into the source", "deeply nested header", "config is a list",
                                  "config is binary"])
def test_python_m_jdlm_convert_gives_one_line_for_every_user_error(src, tmp_path, capsys, case):
    dst, extra = tmp_path / "out", []
    if case == "into the source":
        dst, extra = src, ["--overwrite"]
    elif case == "deeply nested header":
        _raw_safetensors(src / "model.safetensors", b"[" * 200_000 + b"]" * 200_000)
    elif case == "config is a list":
        (src / "config.json").write_text("[]")
    else:
        (src / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    assert convert_main(["llada", str(src), str(dst), "--quiet", *extra]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and captured.out == "", captured.err


@pytest.mark.parametrize("dtype, quantize", [(None, None), (jnp.float32, None), (jnp.bfloat16, "int8")])
def test_checkpoint_shapes_are_the_loaded_params_shapes(dtype, quantize):
    """What `jdlm.decoding.prefetch` keys on before the weights load: every leaf's shape and dtype, and the tree."""
    import jax

    from jdlm.checkpoint import checkpoint_shapes, load_tokenizer

    loaded = jdlm.load_params("tiny", dtype, quantize=quantize)
    shapes = checkpoint_shapes("tiny", dtype, quantize=quantize)
    assert jax.tree.structure(shapes) == jax.tree.structure(loaded)
    assert [(a.shape, a.dtype) for a in jax.tree.leaves(shapes)] == \
        [(a.shape, a.dtype) for a in jax.tree.leaves(loaded)]
    assert load_tokenizer("tiny").encode("sudoku:") == jdlm.load("tiny")[1].encode("sudoku:")
    with pytest.raises(jdlm.CheckpointError, match="does not exist"):
        checkpoint_shapes("no-such-checkpoint")
