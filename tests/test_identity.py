"""Input identities: content hashes cached by (real path, size, mtime), model fingerprints that
tell same-shape weights apart, paths compared as identities in the run-directory contract."""

import dataclasses
import json
import os
import shutil

import pytest

from bioinstruct.runs import identity
from bioinstruct.errors import StageConflict
from bioinstruct.runs.identity import adapter_identity, base_matches, file_sha256, model_fingerprint, path_identity
from bioinstruct.runs.rundir import run_stage

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOINSTRUCT_HASH_CACHE", str(tmp_path / "cache" / "sha256.json"))
    identity._memory.clear()
    return tmp_path / "cache" / "sha256.json"


def fake_model(folder, weights: bytes):
    """A model folder as save_pretrained writes one: config.json and a safetensors file whose
    header (names, dtypes, shapes, offsets) is the same for any weights of this shape."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 4}')
    header = json.dumps({"w": {"dtype": "F32", "shape": [len(weights) // 4], "data_offsets": [0, len(weights)]}})
    header += " " * (-len(header) % 8)
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header.encode() + weights)
    (folder / "README.md").write_text("notes")
    return folder


def test_a_file_is_hashed_once_per_path_size_and_mtime(tmp_path, cache, monkeypatch):
    f = tmp_path / "data.jsonl"
    f.write_text('{"a": 1}\n')
    first = file_sha256(f)
    assert json.loads(cache.read_text())[str(f.resolve())]["sha256"] == first
    identity._memory.clear()
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: reads.append(p) or real_open(p, *a, **k))
    assert file_sha256(f) == first and reads == []  # from the cache file: a stat, no read
    monkeypatch.undo()
    f.write_text('{"a": 2}\n')  # an edit in place (same size): mtime changes, so it is hashed again
    assert file_sha256(f) != first
    gone = tmp_path / "gone.txt"
    gone.write_text("x")
    file_sha256(gone)
    gone.unlink()
    (tmp_path / "other.txt").write_text("y")
    file_sha256(tmp_path / "other.txt")
    assert str(gone.resolve()) not in json.loads(cache.read_text())  # deleted files leave the cache


def test_a_path_is_an_identity_however_it_is_spelled(tmp_path, monkeypatch):
    data = tmp_path / "real" / "dev.json"
    data.parent.mkdir()
    data.write_text("x\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    assert path_identity("real/dev.json") == path_identity(tmp_path / "link" / "dev.json") == file_sha256(data)
    assert path_identity(tmp_path / "missing.json") == "absent"
    assert path_identity(tmp_path / "real") == {"dev.json": file_sha256(data)}


def test_model_fingerprint_tells_same_shape_weights_apart(tmp_path):
    a = fake_model(tmp_path / "llama1", b"\x00" * 64)
    b = fake_model(tmp_path / "llama2", b"\x00" * 60 + b"\x01\x00\x00\x00")  # same header and size
    assert model_fingerprint(str(a)) != model_fingerprint(str(b))
    shutil.copytree(a, tmp_path / "copy")
    (tmp_path / "copy" / "README.md").write_text("edited")  # not part of the model,
    (tmp_path / "copy" / "manifest.json").write_text("{}")  # nor how bioinstruct made it,
    (tmp_path / "copy" / "checkpoints").mkdir()  # nor a folder beside it
    (tmp_path / "copy" / "checkpoints" / "model.safetensors").write_bytes(b"other")
    assert model_fingerprint(str(tmp_path / "copy")) == model_fingerprint(str(a))
    (tmp_path / "copy" / "tokenizer.json").write_text("{}")  # a tokenizer is
    assert model_fingerprint(str(tmp_path / "copy")) != model_fingerprint(str(a))
    assert model_fingerprint("meta-llama/Llama-2-7b-hf") == {"hub": "meta-llama/Llama-2-7b-hf"}


def test_an_adapter_is_its_weights_and_its_recorded_base(tmp_path):
    a = fake_model(tmp_path / "a", b"\x00" * 64)
    b = fake_model(tmp_path / "b", b"\x00" * 60 + b"\x01\x00\x00\x00")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"lora")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(a)}))
    assert adapter_identity(str(adapter))["base"] == str(a)
    assert base_matches(str(adapter), str(a))[0]
    (tmp_path / "a-link").symlink_to(a)
    assert base_matches(str(adapter), str(tmp_path / "a-link"))[0]
    assert not base_matches(str(adapter), str(b))[0]  # same shape, other weights: by content
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "meta-llama/Llama-2-7b-hf"}))
    os.rename(b, tmp_path / "Llama-2-7b-hf")
    assert base_matches(str(adapter), str(tmp_path / "Llama-2-7b-hf"))[0]  # a hub base: by name
    assert not base_matches(str(adapter), str(a))[0]


@dataclasses.dataclass
class Cfg:
    data: str = ""
    n: int = 3


def test_run_stage_skips_the_same_input_spelled_otherwise_and_refuses_another(tmp_path, monkeypatch):
    calls = []

    def body(out):
        calls.append(out)
        (out / "n.txt").write_text(open(cfg.data).read())
    data = tmp_path / "data.txt"
    data.write_text("one")
    cfg = Cfg(str(data))
    run_stage(tmp_path / "s", "s", cfg, body, inputs={"data": path_identity(cfg.data)}, ignore=("data",))
    (tmp_path / "link.txt").symlink_to(data)
    monkeypatch.chdir(tmp_path)
    for spelled in ("link.txt", "data.txt"):
        cfg = Cfg(spelled)
        run_stage(tmp_path / "s", "s", cfg, body, inputs={"data": path_identity(spelled)}, ignore=("data",))
    assert len(calls) == 1
    shutil.move(tmp_path / "s", tmp_path / "moved")  # a run folder moved elsewhere
    run_stage(tmp_path / "moved", "s", cfg, body, inputs={"data": path_identity(cfg.data)}, ignore=("data",))
    assert len(calls) == 1
    data.write_text("two")  # changed at the same path
    with pytest.raises(StageConflict, match=r"inputs.data: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        run_stage(tmp_path / "moved", "s", cfg, body, inputs={"data": path_identity(cfg.data)}, ignore=("data",))
    run_stage(tmp_path / "moved", "s", cfg, body, inputs={"data": path_identity(cfg.data)}, ignore=("data",),
              force=True)
    assert (tmp_path / "moved" / "n.txt").read_text() == "two" and not (tmp_path / ".moved.previous").exists()


def test_partial_output_from_other_inputs_is_refused_and_force_starts_clean(tmp_path):
    def killed(out):
        (out / "partial.txt").write_text("from input one")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path / "s", "s", Cfg(), killed, inputs={"data": "one"})
    seen = []

    def body(out):
        seen.append(sorted(p.name for p in out.iterdir()))
    with pytest.raises(StageConflict,
                       match=r"partial 's' output made from other inputs or config \(inputs.data: 'one' -> 'two'\)"):
        run_stage(tmp_path / "s", "s", Cfg(), body, inputs={"data": "two"})
    run_stage(tmp_path / "s", "s", Cfg(), body, inputs={"data": "two"}, force=True)
    assert seen == [["config.yaml", "manifest.json"]]  # no partial.txt: nothing of input one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # the set-aside folder is gone


def test_a_forced_run_killed_midway_is_resumed_with_its_own_inputs(tmp_path):
    def good(out):
        (out / "result.txt").write_text("one")

    def killed(out):
        (out / "partial.txt").write_text("two, half")
        raise KeyboardInterrupt
    run_stage(tmp_path / "s", "s", Cfg(), good, inputs={"data": "one"})
    with pytest.raises(KeyboardInterrupt):
        run_stage(tmp_path / "s", "s", Cfg(), killed, inputs={"data": "two"}, force=True)
    assert (tmp_path / ".s.previous" / "result.txt").read_text() == "one"  # hidden: no glob takes it
    seen = []
    run_stage(tmp_path / "s", "s", Cfg(), lambda out: seen.append((out / "partial.txt").read_text()),
              inputs={"data": "two"})
    assert seen == ["two, half"] and sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_a_failed_force_leaves_the_previous_output_as_it_was(tmp_path):
    def good(out):
        (out / "result.txt").write_text("good")

    def broken(out):
        (out / "result.txt").write_text("half")
        raise RuntimeError("model crashed")
    run_stage(tmp_path / "s", "s", Cfg(), good, inputs={"data": "one"})
    with pytest.raises(RuntimeError):
        run_stage(tmp_path / "s", "s", Cfg(), broken, inputs={"data": "two"}, force=True)
    assert (tmp_path / "s" / "result.txt").read_text() == "good"
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["status"] == "complete"
