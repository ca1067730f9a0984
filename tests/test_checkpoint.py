import pickle

import pytest
import torch

from ddpm.checkpoint import load_checkpoint, save_checkpoint


def test_round_trip_and_no_temporary_left(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(3)}, "config": {"T": 10}})
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.arange(3)) and state["config"] == {"T": 10}
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_crafted_pickle_cannot_execute_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload(), "config": {}}, f)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": {"w": torch.randn(1000)}, "config": {}})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot load checkpoint .*ckpt.pt"):
        load_checkpoint(path)


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": {}, "config": {"v": 1}})
    with pytest.raises(Exception):
        save_checkpoint(path, {"model": {}, "config": {"bad": lambda: None}})  # unpicklable: fails mid-write
    assert load_checkpoint(path)["config"] == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_non_checkpoint_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save([1, 2], path)
    with pytest.raises(ValueError, match="not a ddpm checkpoint"):
        load_checkpoint(path)
