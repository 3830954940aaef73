from __future__ import annotations

import argparse

import pytest
import torch

from mooer.errors import CheckpointError
from mooer.state_dict import describe_keys, read_state_dict


def test_reads_a_plain_state_dict_and_drops_metadata(tmp_path):
    path = tmp_path / "a.pt"
    torch.save({"w": torch.arange(3.0), "step": 7, "note": "x"}, path)
    state_dict = read_state_dict(path)
    assert list(state_dict) == ["w"]
    torch.testing.assert_close(state_dict["w"], torch.arange(3.0))


def test_reads_a_nested_entry_even_when_it_pickles_objects(tmp_path):
    path = tmp_path / "states.pt"  # like DeepSpeed's model states: config objects beside "module"
    torch.save({"module": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1.0)}, path)
    assert read_state_dict(path, key="module")["w"].tolist() == [1.0, 1.0]
    with pytest.raises(CheckpointError, match="states.pt has no 'model' entry"):
        read_state_dict(path, key="model")


def test_legacy_non_zip_files_load(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    assert read_state_dict(path)["w"].shape == (2,)


def test_not_a_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="list.pt holds a list, not a state dict"):
        read_state_dict(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", bytes(range(256)) * 10])
def test_corrupt_files(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*bad.pt"):
        read_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*gone.pt"):
        read_state_dict(tmp_path / "gone.pt")


def test_describe_keys():
    assert describe_keys(["a", "b"]) == "a, b"
    assert describe_keys([str(i) for i in range(8)], limit=3) == "0, 1, 2 ... (8 in all)"
