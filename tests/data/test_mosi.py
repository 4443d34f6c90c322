"""CMU-MOSI / MOSEI pickles: both published layouts, and a safe unpickler that refuses code."""
from __future__ import annotations

import os
import pickle
import subprocess

import numpy as np
import pytest
import torch

from mmfuse.data import mosi
from mmfuse.data.safe_pickle import UnsafePickleError, safe_load, safe_loads

N = {"train": 6, "valid": 3, "test": 4}
T, DV, DA, DT = 5, 3, 4, 6


def _split(n: int, seed: int, *, multibench: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    vision = rng.standard_normal((n, T, DV)).astype(np.float32)
    audio = rng.standard_normal((n, T, DA)).astype(np.float64 if multibench else np.float32)
    text = rng.standard_normal((n, T, DT)).astype(np.float32)
    for i in range(n):  # left padding: sample i starts at step i % T
        pad = i % T
        vision[i, :pad] = audio[i, :pad] = text[i, :pad] = 0
    labels = rng.uniform(-3, 3, (n, 1, 1) if not multibench else (n, 1)).astype(np.float32)
    if multibench:
        ids = np.array([f"vid{i}[{i}]" for i in range(n)], dtype=object)
    else:  # MulT's MOSI: [N, 3] bytes
        ids = np.array([[f"vid{i}".encode(), str(i).encode(), b"0"] for i in range(n)])
    return {"vision": vision, "audio": audio, "text": text, "labels": labels, "id": ids}


def write_pickle(path, *, multibench=True, protocol=4, mutate=None):
    data = {s: _split(n, k, multibench=multibench) for k, (s, n) in enumerate(N.items())}
    if mutate:
        mutate(data)
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return data


@pytest.mark.parametrize("multibench", [True, False], ids=["multibench", "mult"])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_roundtrip(tmp_path, multibench, protocol):
    truth = write_pickle(tmp_path / "mosi.pkl", multibench=multibench, protocol=protocol)
    data = mosi.load_mosi(tmp_path / "mosi.pkl")
    assert data.sizes() == N and data.dims == {"vision": DV, "audio": DA, "text": DT}
    ds = data.dataset("train")
    assert len(ds) == 6
    item = ds[2]
    for m in ("vision", "audio", "text"):
        assert item[m].dtype == torch.float32 and item[m].shape == (T, truth["train"][m].shape[-1])
        np.testing.assert_allclose(item[m].numpy(), truth["train"][m][2], rtol=1e-6)
    assert item["label"].shape == () and item["label"].item() == pytest.approx(float(truth["train"]["labels"][2].item()))
    assert item["index"].item() == 2
    ids = data.ids("valid")
    assert ids[1] == ("vid1[1]" if multibench else "vid1/1/0")
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["vision"].shape == (4, T, DV) and batch["label"].shape == (4,)


def test_trim_and_collate(tmp_path):
    truth = write_pickle(tmp_path / "mosi.pkl")
    data = mosi.load_affect(tmp_path / "mosi.pkl")
    aligned = data.dataset("train", trim="aligned")
    item = aligned[3]  # 3 leading zero steps
    assert item["text"].shape == (T - 3, DT) and item["vision"].shape == (T - 3, DV)
    np.testing.assert_allclose(item["audio"].numpy(), truth["train"]["audio"][3, 3:], rtol=1e-6)
    per = data.dataset("train", trim="per_modality", modalities=("vision",))
    assert set(per[1]) == {"vision", "label", "index"} and per[1]["vision"].shape == (T - 1, DV)
    batch = mosi.collate_affect([aligned[0], aligned[3]])
    assert batch["text"].shape == (2, T, DT)
    assert batch["text_mask"].tolist() == [[True] * T, [True, True, False, False, False]]
    assert not batch["text"][1, 2:].any()
    assert batch["label"].shape == (2,) and batch["index"].tolist() == [0, 3]


def test_label_kinds(tmp_path):
    def set_labels(data):
        data["train"]["labels"][:, 0] = np.array([-2.6, -0.4, 0.0, 0.4, 2.5, 3.4], dtype=np.float32)

    write_pickle(tmp_path / "m.pkl", mutate=set_labels)
    data = mosi.load_affect(tmp_path / "m.pkl")
    binary = data.dataset("train", labels="binary")
    assert [binary[i]["label"].item() for i in range(6)] == [0, 0, 1, 1, 1, 1]
    seven = data.dataset("train", labels="7class")
    assert [seven[i]["label"].item() for i in range(6)] == [0, 3, 3, 3, 5, 6]
    assert seven[0]["label"].dtype == torch.int64
    with pytest.raises(ValueError, match="labels must be one of"):
        data.dataset("train", labels="ordinal")
    with pytest.raises(ValueError, match="trim must be one of"):
        data.dataset("train", trim="both")
    with pytest.raises(ValueError, match="modalities must be a non-empty subset"):
        data.dataset("train", modalities=("video",))
    with pytest.raises(ValueError, match=r"m\.pkl: unknown split 'dev'"):
        data.dataset("dev")


def test_nonfinite_values(tmp_path):
    def poison(data):
        data["train"]["audio"][0, 4, 0] = -np.inf
        data["test"]["vision"][1, 4, 1] = np.nan

    write_pickle(tmp_path / "m.pkl", mutate=poison)
    data = mosi.load_affect(tmp_path / "m.pkl")
    assert data.nonfinite["train"]["audio"] == 1 and data.nonfinite["test"]["vision"] == 1
    assert data.dataset("train")[0]["audio"][4, 0].item() == 0.0
    assert np.isnan(mosi.load_affect(tmp_path / "m.pkl", nonfinite="keep").splits["test"]["vision"][1, 4, 1])
    with pytest.raises(ValueError, match=r"m\.pkl: split 'train', 'audio': 1 values are NaN or infinite"):
        mosi.load_affect(tmp_path / "m.pkl", nonfinite="error")


# ------------------------------------------------------------------ code in pickles is refused


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Popen:
    def __init__(self, argv):
        self.argv = argv

    def __reduce__(self):
        return (subprocess.Popen, (self.argv,))


class _Eval:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_is_refused_without_running(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = {"train": {"vision": _System(f"touch {marker}")}}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refused to unpickle global 'posix\.system'"):
        mosi.load_mosi(path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="only numpy arrays, dtypes, scalars and plain containers"):
        safe_load(path)
    assert not marker.exists()


@pytest.mark.parametrize("evil, name", [(_Popen(["touch", "/tmp/x"]), "subprocess.Popen"), (_Eval(), "builtins.eval")])
def test_other_callables_are_refused(evil, name):
    with pytest.raises(UnsafePickleError, match=f"refused to unpickle global '{name}'"):
        safe_loads(pickle.dumps([1, evil]))


def test_evil_object_inside_an_object_array_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = "ok", _System(f"touch {marker}")
    with pytest.raises(UnsafePickleError, match="posix.system"):
        safe_loads(pickle.dumps({"id": arr}))
    assert not marker.exists()


def test_plain_data_passes_the_safe_unpickler():
    obj = {"a": [1, 2.5, True, None, "s", b"b", (1, 2)], "s": {1, 2}, "f": frozenset({3}),
           "x": np.arange(6, dtype=np.int16).reshape(2, 3), "o": np.array(["u", 1], dtype=object),
           "scalar": np.float32(1.5), "u": np.array(["ab", "c"])}
    for protocol in range(6):
        back = safe_loads(pickle.dumps(obj, protocol=protocol))
        assert back["a"] == obj["a"] and back["s"] == obj["s"] and back["f"] == obj["f"]
        assert back["x"].dtype == np.int16 and np.array_equal(back["x"], obj["x"])
        assert back["o"].tolist() == ["u", 1] and back["scalar"] == np.float32(1.5)
        assert back["u"].tolist() == ["ab", "c"]


# ------------------------------------------------------------------ layout errors


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("valid"), r"missing splits \['valid'\]"),
        (lambda d: d["train"].pop("audio"), r"split 'train': missing keys \['audio'\]"),
        (lambda d: d["test"].__setitem__("text", d["test"]["text"][:2]), r"split 'test': expected one sample count in every array"),
        (lambda d: d["train"].__setitem__("vision", [[0.0]]), r"split 'train': 'vision' must be a numpy array, got list"),
        (lambda d: d["valid"].__setitem__("audio", np.zeros((3, T, DA + 1))), r"split 'valid': feature sizes .* differ"),
        (lambda d: d["train"].__setitem__("text", np.array(["a"] * 6)), r"split 'train': 'text' must be a numeric \[N, T, D\]"),
    ],
)
def test_layout_errors_name_the_file(tmp_path, mutate, message):
    write_pickle(tmp_path / "bad.pkl", mutate=mutate)
    with pytest.raises(ValueError, match=r"bad\.pkl: " + message):
        mosi.load_affect(tmp_path / "bad.pkl")


def test_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.pkl: file does not exist"):
        mosi.load_mosei(tmp_path / "nope.pkl")
    write_pickle(tmp_path / "t.pkl")
    raw = (tmp_path / "t.pkl").read_bytes()
    (tmp_path / "t.pkl").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"t\.pkl: not a readable pickle"):
        mosi.load_affect(tmp_path / "t.pkl")
    (tmp_path / "l.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match=r"l\.pkl: expected a dict \{split: \{modality: array\}\}, got list"):
        mosi.load_affect(tmp_path / "l.pkl")
