"""The saved-identity format: round trips bit-exactly, refuses every bad file with a clear error."""

import json
import os
import pickle
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from safetensors.torch import save_file

import bachvid.io.identity_file as idf
from bachvid.io.identity_file import (
    FORMAT_VERSION,
    SUFFIX,
    IdentityFileError,
    describe,
    load_identity,
    model_config_hash,
    save_identity,
)

META = {
    "model": "THUDM/CogVideoX-5b", "model_config_hash": "0123456789abcdef",
    "bachvid_config": {"alpha": 0.5, "layers": [3, 7, 11], "mask": {"threshold": 0.25, "dilate": 1}},
    "prompt": "a red robot walks in a green meadow, café au lait \u2603", "seed": 7, "frames": 49,
    "height": 480, "width": 720, "steps": 50, "guidance": 6.0, "dtype": "bfloat16",
}


def make_tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    bf16_bits = torch.randint(-2**15, 2**15, (4, 33), generator=g, dtype=torch.int16)  # every pattern, NaNs too
    return {
        "latents": torch.randn(2, 3, 5, generator=g),
        "latents_bf16": bf16_bits.view(torch.bfloat16),
        "timesteps": torch.randint(0, 1000, (6,), generator=g, dtype=torch.int64),
        "mask": torch.rand(3, 4, 4, generator=g) > 0.5,
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
    }


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


def assert_same_tensors(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for name in want:
        assert same_bits(got[name], want[name]), name


@pytest.fixture
def saved(tmp_path):
    tensors = make_tensors()
    path = save_identity(tmp_path / f"robot{SUFFIX}", tensors, META)
    return path, tensors


def data_start(path) -> int:
    raw = path.read_bytes()
    return 8 + struct.unpack("<Q", raw[:8])[0]


def rewrite(path, tensors, bachvid_json: str | None):
    """Write a well-formed safetensors file with our own metadata (what a tamperer could do)."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata=None if bachvid_json is None else {"bachvid": bachvid_json})


# ------------------------------------------------------------------------------------------------
# Round trip


def test_round_trip_is_bit_exact_and_keeps_metadata(saved):
    path, tensors = saved
    got, meta = load_identity(path)
    assert_same_tensors(got, tensors)
    assert got["latents_bf16"].dtype == torch.bfloat16 and got["mask"].dtype == torch.bool
    assert got["timesteps"].dtype == torch.int64 and got["scalar"].shape == ()
    assert {k: meta[k] for k in META} == META
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["created"].endswith("Z") and meta["content_hash"].startswith("sha256:")
    for tensor in got.values():
        assert tensor.device.type == "cpu" and tensor.is_contiguous()


def test_file_is_plain_safetensors_with_one_json_metadata_string(saved):
    path, tensors = saved
    raw = path.read_bytes()
    header = json.loads(raw[8:data_start(path)])
    assert set(header["__metadata__"]) == {"bachvid"}
    assert json.loads(header["__metadata__"]["bachvid"])["steps"] == 50
    assert_same_tensors(st_load(raw), tensors)  # any safetensors reader gets the same tensors


def test_noncontiguous_shared_and_grad_tensors_are_saved_as_copies(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6).requires_grad_()
    tensors = {"t": base.t(), "row0": base[0], "row1": base[1], "strided": base[:, ::2]}
    path = save_identity(tmp_path / "x.bvid", tensors, {"seed": 1})
    got, _ = load_identity(path)
    for name, tensor in tensors.items():
        assert torch.equal(got[name], tensor.detach()), name
        assert got[name].is_contiguous()


def test_tuples_become_lists_and_created_can_be_given(tmp_path):
    path = save_identity(tmp_path / "x.bvid", {}, {"size": (480, 720), "created": "2020-01-01T00:00:00Z"})
    _, meta = load_identity(path)
    assert meta["size"] == [480, 720] and meta["created"] == "2020-01-01T00:00:00Z"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.dictionaries(st.text(max_size=6).filter(lambda k: k not in idf.RESERVED_KEYS + ("created",)),
                             json_values, max_size=4))
def test_any_json_metadata_round_trips(tmp_path, extra):
    path = save_identity(tmp_path / "m.bvid", {"x": torch.ones(2)}, extra)
    _, meta = load_identity(path)
    assert {k: meta[k] for k in extra} == extra


def test_device_argument_places_tensors(saved):
    path, _ = saved
    got, _ = load_identity(path, device=torch.device("cpu"))
    assert all(t.device == torch.device("cpu") for t in got.values())


# ------------------------------------------------------------------------------------------------
# Refusals on save


@pytest.mark.parametrize("bad, words", [
    ({"guidance": float("nan")}, ["guidance", "NaN"]),
    ({"cfg": {"alpha": float("inf")}}, ["cfg.alpha", "infinity"]),
    ({"dtype": torch.bfloat16}, ["dtype", "JSON cannot hold"]),
    ({"obj": [1, object()]}, ["obj[1]", "JSON cannot hold"]),
    ({"cfg": {1: "a"}}, ["not a string"]),
    ({"format_version": 3}, ["format_version", "leave them out"]),
    ({"content_hash": "x"}, ["content_hash"]),
])
def test_save_refuses_metadata_json_cannot_hold(tmp_path, bad, words):
    path = tmp_path / "bad.bvid"
    with pytest.raises(IdentityFileError) as info:
        save_identity(path, {"x": torch.ones(1)}, {**META, **bad})
    for word in words:
        assert word in str(info.value)
    assert str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tensors, words", [
    ({"x": [1, 2]}, ["'x'", "not a torch.Tensor"]),
    ({"": torch.ones(1)}, ["name"]),
    ({"__metadata__": torch.ones(1)}, ["reserved"]),
    ({"s": torch.ones(3).to_sparse()}, ["dense"]),
])
def test_save_refuses_tensors_it_cannot_store(tmp_path, tensors, words):
    with pytest.raises(IdentityFileError) as info:
        save_identity(tmp_path / "bad.bvid", tensors, META)
    for word in words:
        assert word in str(info.value)
    assert list(tmp_path.iterdir()) == []


def _safetensors_round_trips(dtype) -> bool:
    try:
        return st_load(st_save({"x": torch.empty(0, dtype=dtype)}))["x"].dtype == dtype
    except Exception:
        return False


@pytest.mark.parametrize("dtype", [torch.complex128, getattr(torch, "float8_e8m0fnu", torch.complex128)])
def test_dtypes_safetensors_cannot_read_back_are_refused_on_save(tmp_path, dtype):
    """Refused before writing, so no file exists that saved fine and can never load."""
    tensor = torch.zeros(3, dtype=dtype)
    path = tmp_path / "x.bvid"
    if _safetensors_round_trips(dtype):  # a newer safetensors: then it must round-trip
        assert same_bits(load_identity(save_identity(path, {"t": tensor}, {}))[0]["t"], tensor)
        return
    with pytest.raises(IdentityFileError) as info:
        save_identity(path, {"t": tensor}, {})
    assert str(dtype).removeprefix("torch.") in str(info.value) and "cannot store" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_save_into_a_folder_is_refused(tmp_path):
    with pytest.raises(IdentityFileError, match="folder"):
        save_identity(tmp_path, {}, META)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "robot.bvid"
    save_identity(path, make_tensors(0), META)
    before = path.read_bytes()

    def half_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x10\x00\x00\x00partial")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write

    monkeypatch.setattr(idf, "save_file", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_identity(path, make_tensors(1), {**META, "seed": 8})
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["robot.bvid"]  # no temporary file left
    with pytest.raises(KeyboardInterrupt):
        save_identity(tmp_path / "new.bvid", make_tensors(1), META)
    assert [p.name for p in tmp_path.iterdir()] == ["robot.bvid"]  # no partial new file


def test_save_wraps_disk_errors(tmp_path, monkeypatch):
    def full_disk(tensors, filename, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(idf, "save_file", full_disk)
    with pytest.raises(IdentityFileError, match="No space left"):
        save_identity(tmp_path / "x.bvid", {}, META)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# Refusals on load


def test_missing_file(tmp_path):
    with pytest.raises(IdentityFileError, match="does not exist") as info:
        load_identity(tmp_path / "nope.bvid")
    assert "nope.bvid" in str(info.value)


def framed(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize("content, words", [
    (b"", ["0 bytes"]),
    (b"hello", ["5 bytes"]),
    (b"this is a text file, not an identity\n" * 3, ["safetensors header"]),
    (struct.pack("<Q", 12) + b"not json!!!!", ["not valid JSON"]),
    (struct.pack("<Q", 2) + b"[]", ["not a JSON object"]),
    (struct.pack("<Q", 40) + b'{"a":{"dtype":"F32","shape":[1],"data_o":1}}'[:40], ["not valid JSON"]),
    (framed(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":7}}'), ["'a'", "malformed"]),
    (framed(b'{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}') + bytes(4), ["'a'", "malformed"]),
    (framed(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":1}') + bytes(4), ["not valid JSON"]),
    (framed(b'{"__metadata__":{"bachvid":"{\\"format_version\\":1}"},'
            b'"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}') + bytes(4), ["safetensors cannot read"]),
])
def test_garbage_is_refused(tmp_path, content, words):
    path = tmp_path / "junk.bvid"
    path.write_bytes(content)
    with pytest.raises(IdentityFileError) as info:
        load_identity(path)
    for word in words + [str(path)]:
        assert word in str(info.value)


def test_truncated_at_every_byte_is_refused(tmp_path):
    path = save_identity(tmp_path / "small.bvid", {"a": torch.arange(6, dtype=torch.int64).reshape(2, 3),
                                                   "b": torch.ones(3, dtype=torch.bfloat16)}, {"seed": 1})
    raw = path.read_bytes()
    cut = tmp_path / "cut.bvid"
    for n in range(len(raw)):
        cut.write_bytes(raw[:n])
        with pytest.raises(IdentityFileError) as info:
            load_identity(cut)
        message = str(info.value)
        assert "truncated" in message or "bytes long" in message, (n, message)


def test_extra_bytes_are_refused(saved):
    path, _ = saved
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(IdentityFileError, match="unexpected bytes"):
        load_identity(path)


def test_plain_safetensors_without_bachvid_metadata(tmp_path):
    path = tmp_path / "weights.safetensors"
    rewrite(path, {"w": torch.ones(2)}, None)
    with pytest.raises(IdentityFileError, match="not a saved bachvid identity"):
        load_identity(path)


def test_bachvid_metadata_that_is_not_json(tmp_path):
    path = tmp_path / "x.bvid"
    rewrite(path, {"w": torch.ones(2)}, "{not json")
    with pytest.raises(IdentityFileError, match="'bachvid' metadata is not valid JSON"):
        load_identity(path)


def test_newer_format_version_is_refused(saved, tmp_path):
    path, tensors = saved
    _, meta = load_identity(path)
    newer = tmp_path / "newer.bvid"
    rewrite(newer, tensors, json.dumps({**meta, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(IdentityFileError) as info:
        load_identity(newer)
    message = str(info.value)
    assert f"format version {FORMAT_VERSION + 1}" in message
    assert f"reads format version {FORMAT_VERSION}" in message and "update bachvid" in message


def test_older_or_missing_format_version_is_refused(saved, tmp_path):
    path, tensors = saved
    _, meta = load_identity(path)
    older = tmp_path / "older.bvid"
    rewrite(older, tensors, json.dumps({**meta, "format_version": 0}))
    with pytest.raises(IdentityFileError, match="format version 0.*save the identity again"):
        load_identity(older)
    del meta["format_version"]
    rewrite(older, tensors, json.dumps(meta))
    with pytest.raises(IdentityFileError, match="format_version"):
        load_identity(older)


def test_flipped_tensor_byte_is_refused(saved):
    path, _ = saved
    raw = bytearray(path.read_bytes())
    raw[data_start(path) + 5] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(IdentityFileError, match="the file was changed after it was saved"):
        load_identity(path)


@pytest.mark.parametrize("edit", ["metadata", "tensor values", "tensor name", "tensor dtype", "tensor shape",
                                  "hash removed"])
def test_well_formed_but_edited_file_is_refused(saved, tmp_path, edit):
    """A tamperer who rewrites a valid safetensors file (keeping the stored hash) is caught."""
    path, tensors = saved
    _, meta = load_identity(path)
    tensors = dict(tensors)
    if edit == "metadata":
        meta = {**meta, "seed": meta["seed"] + 1}
    elif edit == "tensor values":
        tensors["latents"] = tensors["latents"] + 1e-3
    elif edit == "tensor name":
        tensors["latents2"] = tensors.pop("latents")
    elif edit == "tensor dtype":
        tensors["latents"] = tensors["latents"].view(torch.int32)
    elif edit == "tensor shape":
        tensors["latents"] = tensors["latents"].reshape(3, 2, 5)
    else:
        del meta["content_hash"]
    edited = tmp_path / "edited.bvid"
    rewrite(edited, tensors, json.dumps(meta))
    with pytest.raises(IdentityFileError, match="changed after it was saved"):
        load_identity(edited)


def test_unedited_rewrite_still_loads(saved, tmp_path):
    """The hash is over content, not bytes: the same content written by another writer loads."""
    path, tensors = saved
    _, meta = load_identity(path)
    copy = tmp_path / "copy.bvid"
    rewrite(copy, tensors, json.dumps(meta, indent=1))
    got, meta2 = load_identity(copy)
    assert_same_tensors(got, tensors)
    assert meta2 == meta


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_never_loads_different_content(saved, tmp_path, data):
    """Replacing random bytes or cutting the file: refused, or (insignificant bytes such as
    header padding) the very same tensors and metadata."""
    path, tensors = saved
    raw = bytearray(path.read_bytes())
    _, meta = load_identity(path)
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 3), label="count")):
            where = data.draw(st.integers(0, len(raw) - 1), label="where")
            raw[where] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[where]), label="byte")
    damaged = tmp_path / "damaged.bvid"
    damaged.write_bytes(bytes(raw))
    try:
        got, got_meta = load_identity(damaged)
    except IdentityFileError as error:
        assert str(damaged) in str(error)
        return
    assert_same_tensors(got, tensors)
    assert got_meta == meta


def test_damage_in_header_padding_is_harmless(saved):
    """The one kind of damage that may load: whitespace padding of the header stays whitespace."""
    path, tensors = saved
    raw = bytearray(path.read_bytes())
    end = data_start(path)
    if raw[end - 1:end] != b" ":
        pytest.skip("this header needed no padding")
    raw[end - 1] = ord("\n")
    path.write_bytes(bytes(raw))
    got, _ = load_identity(path)
    assert_same_tensors(got, tensors)


# ------------------------------------------------------------------------------------------------
# expect


def test_expect_lists_every_mismatching_field(saved):
    path, _ = saved
    run = {**META, "height": 240, "width": 360, "steps": 20, "guidance": 7.5, "model_config_hash": "ffff0000ffff0000",
           "bachvid_config": {**META["bachvid_config"], "alpha": 0.75, "mask": {"threshold": 0.25}}}
    with pytest.raises(IdentityFileError) as info:
        load_identity(path, expect=run)
    message = str(info.value)
    for line in ["height: file has 480, this run has 240", "width: file has 720, this run has 360",
                 "steps: file has 50, this run has 20", "guidance: file has 6.0, this run has 7.5",
                 'model_config_hash: file has "0123456789abcdef", this run has "ffff0000ffff0000"',
                 "bachvid_config.alpha: file has 0.5, this run has 0.75",
                 "bachvid_config.mask.dilate: file has 1, this run has nothing"]:
        assert line in message
    assert "(7 differ)" in message
    for same in ["frames", "prompt", "seed", "layers", "threshold"]:
        assert same + ":" not in message


def test_expect_compares_json_values(saved):
    path, _ = saved
    ok = {"guidance": 6, "frames": 49.0, "bachvid_config": {"layers": (3, 7, 11), "alpha": 0.5,
                                                            "mask": {"dilate": 1, "threshold": 0.25}}}
    load_identity(path, expect=ok)  # int vs float, tuple vs list: the same JSON value
    with pytest.raises(IdentityFileError, match="seed: file has 7, this run has true"):
        load_identity(path, expect={"seed": True})
    flag = {**META["bachvid_config"], "mask": {"threshold": 0.25, "dilate": True}}  # file has 1
    with pytest.raises(IdentityFileError, match="bachvid_config.mask.dilate: file has 1, this run has true"):
        load_identity(path, expect={"bachvid_config": flag})
    with pytest.raises(IdentityFileError, match="lora: file has nothing, this run has null"):
        load_identity(path, expect={"lora": None})


def test_expect_is_checked_only_after_integrity(saved):
    path, _ = saved
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IdentityFileError, match="changed after it was saved"):
        load_identity(path, expect={"height": 1})


# ------------------------------------------------------------------------------------------------
# No pickle


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_torch_save_file_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bvid"
    torch.save({"latents": torch.ones(2), "x": _Evil(marker)}, path)
    with pytest.raises(IdentityFileError, match="never unpickles"):
        load_identity(path)
    with pytest.raises(IdentityFileError, match="never unpickles"):
        describe(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really would run code if unpickled
    assert marker.exists()


def test_raw_pickle_file_is_refused(tmp_path):
    path = tmp_path / "evil.bvid"
    path.write_bytes(pickle.dumps(_Evil(tmp_path / "pwned"), protocol=2))
    with pytest.raises(IdentityFileError):
        load_identity(path)
    assert not (tmp_path / "pwned").exists()


def test_loading_uses_no_pickle(saved, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used")

    for name in ["load", "loads", "Unpickler"]:
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    path, tensors = saved
    got, _ = load_identity(path)
    assert_same_tensors(got, tensors)
    assert describe(path, verify=True)["verified"]


# ------------------------------------------------------------------------------------------------
# model_config_hash and describe


def test_model_config_hash():
    config = {"num_layers": 42, "attention_head_dim": 64, "patch_size": 2, "sample": {"h": 60, "w": 90}}
    h = model_config_hash(config)
    assert len(h) == 16 and int(h, 16) >= 0
    reordered = {"sample": {"w": 90, "h": 60}, **{k: config[k] for k in reversed(list(config)) if k != "sample"}}
    assert model_config_hash({**reordered, "_diffusers_version": "0.32.0", "_name_or_path": "/tmp/x"}) == h
    assert model_config_hash({**config, "num_layers": 30}) != h
    assert model_config_hash({**config, "sample": {"h": 60, "w": 91}}) != h
    assert model_config_hash({**config, "use_rotary": True}) != h
    with pytest.raises(IdentityFileError, match="model config"):
        model_config_hash({**config, "scale": float("nan")})


def test_describe_reads_the_header_only(saved):
    path, tensors = saved
    info = describe(path)
    assert info["file_size"] == os.path.getsize(path)
    assert info["format_version"] == FORMAT_VERSION and info["readable"] and not info["verified"]
    assert {k: info["metadata"][k] for k in META} == META
    assert info["tensors"]["latents_bf16"] == {"dtype": "bfloat16", "shape": [4, 33], "bytes": 4 * 33 * 2}
    assert info["tensors"]["mask"]["dtype"] == "bool" and info["tensors"]["scalar"]["shape"] == []
    assert info["tensor_bytes"] == sum(t.numel() * t.element_size() for t in tensors.values())
    raw = bytearray(path.read_bytes())  # damage the tensor data: the header is still describable
    raw[data_start(path)] ^= 0x01
    path.write_bytes(bytes(raw))
    assert describe(path)["metadata"] == info["metadata"]
    with pytest.raises(IdentityFileError, match="changed after it was saved"):
        describe(path, verify=True)


def test_describe_shows_newer_formats_and_refuses_broken_files(saved, tmp_path):
    path, tensors = saved
    _, meta = load_identity(path)
    newer = tmp_path / "newer.bvid"
    rewrite(newer, tensors, json.dumps({**meta, "format_version": 99}))
    info = describe(newer)
    assert info["format_version"] == 99 and not info["readable"]
    cut = tmp_path / "cut.bvid"
    cut.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(IdentityFileError, match="truncated"):
        describe(cut)
    with pytest.raises(IdentityFileError, match="does not exist"):
        describe(tmp_path / "missing.bvid")
