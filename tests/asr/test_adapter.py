from __future__ import annotations

import pytest
import torch

from mooer.asr import adapter as adapter_module
from mooer.asr.adapter import LinearAdapter, adapter_state_dict, load_adapter
from mooer.errors import CheckpointError, ConfigError


def count(adapter: LinearAdapter) -> int:
    return sum(p.numel() for p in adapter.parameters())


def test_qwen2_7b_adapter_has_9_442_816_parameters():
    with torch.device("meta"):
        assert count(LinearAdapter(512, 3584, downsample=2)) == 9_442_816


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_downsampling_drops_the_remainder_and_divides_lengths(k):
    adapter = LinearAdapter(encoder_dim=8, llm_dim=6, downsample=k, hidden=16).eval()
    x, lengths = torch.randn(2, 11, 8), torch.tensor([11, 7])
    y, y_lengths = adapter(x, lengths)
    assert y.shape == (2, 11 // k, 6)
    assert y_lengths.tolist() == [11 // k, 7 // k]
    # token i is made of frames i*k .. i*k+k-1 only, concatenated in time order
    i = 11 // k - 1
    stacked = x[:, i * k : (i + 1) * k].reshape(2, 8 * k)
    expected = adapter.linear2(torch.relu(adapter.linear1(stacked)))
    torch.testing.assert_close(y[:, i], expected)


def test_state_dict_carries_the_released_prefix():
    keys = set(adapter_state_dict(LinearAdapter(4, 6, 2, 5)))
    assert keys == {
        "encoder_projector.linear1.weight",
        "encoder_projector.linear1.bias",
        "encoder_projector.linear2.weight",
        "encoder_projector.linear2.bias",
    }


def save_with_extras(adapter: LinearAdapter, path) -> None:
    state_dict = adapter_state_dict(adapter)
    state_dict["encoder.encoders0.0.norm1.weight"] = torch.ones(3)  # other non-LLM keys: ignored
    torch.save(state_dict, path)


@pytest.mark.parametrize(("k", "llm_dim"), [(2, 24), (3, 16), (4, 24)])
def test_load_infers_k_and_llm_width(tmp_path, k, llm_dim):
    adapter = LinearAdapter(encoder_dim=8, llm_dim=llm_dim, downsample=k, hidden=12)
    path = tmp_path / "adapter_project.pt"
    save_with_extras(adapter, path)
    loaded = load_adapter(path, encoder_dim=8)
    assert (loaded.downsample, loaded.llm_dim, loaded.training) == (k, llm_dim, False)
    x, lengths = torch.randn(1, 13, 8), torch.tensor([13])
    torch.testing.assert_close(loaded(x, lengths)[0], adapter(x, lengths)[0])


def test_missing_keys_are_named(tmp_path):
    state_dict = adapter_state_dict(LinearAdapter(8, 6, 2, 4))
    del state_dict["encoder_projector.linear2.bias"]
    path = tmp_path / "adapter_project.pt"
    torch.save(state_dict, path)
    with pytest.raises(
        CheckpointError, match="adapter_project.pt: missing keys encoder_projector.linear2.bias"
    ):
        load_adapter(path, encoder_dim=8)


def test_input_width_not_a_multiple_of_the_encoder_width(tmp_path):
    path = tmp_path / "adapter_project.pt"
    torch.save(adapter_state_dict(LinearAdapter(12, 6, 1, 4)), path)
    with pytest.raises(
        CheckpointError, match="12 inputs, not a multiple k >= 1 of the encoder width 8"
    ):
        load_adapter(path, encoder_dim=8)


def test_inconsistent_shapes(tmp_path):
    state_dict = adapter_state_dict(LinearAdapter(8, 6, 2, 4))
    state_dict["encoder_projector.linear2.weight"] = torch.zeros(6, 5)
    path = tmp_path / "adapter_project.pt"
    torch.save(state_dict, path)
    with pytest.raises(CheckpointError, match="inconsistent shapes"):
        load_adapter(path, encoder_dim=8)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*nothing.pt"):
        load_adapter(tmp_path / "nothing.pt")
    good = tmp_path / "good.pt"
    torch.save(adapter_state_dict(LinearAdapter(8, 6, 2, 4)), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_adapter(cut, encoder_dim=8)


@pytest.fixture(autouse=True)
def without_deepspeed(monkeypatch):
    """Exercise mooer's own ZeRO reader even where deepspeed happens to be installed."""
    monkeypatch.setattr(adapter_module, "_has_deepspeed", lambda: False)


def zero_folder(tmp_path, module: dict[str, torch.Tensor]):
    """A DeepSpeed ZeRO <= 2 checkpoint folder: ``latest`` names the tag, whole weights in "module"."""
    folder = tmp_path / "checkpoint"
    (folder / "global_step300").mkdir(parents=True)
    (folder / "latest").write_text("global_step300\n")
    torch.save(
        {"module": module, "buffer_names": [], "ds_version": "0.14.0"},
        folder / "global_step300" / "mp_rank_00_model_states.pt",
    )
    return folder


def test_loads_a_deepspeed_zero_folder(tmp_path):
    adapter = LinearAdapter(8, 6, 2, 4)
    folder = zero_folder(tmp_path, adapter_state_dict(adapter))
    loaded = load_adapter(folder, encoder_dim=8)
    torch.testing.assert_close(loaded.linear2.weight, adapter.linear2.weight)


def test_zero3_placeholders_are_refused(tmp_path):
    empty = {k: torch.empty(0) for k in adapter_state_dict(LinearAdapter(8, 6, 2, 4))}
    with pytest.raises(CheckpointError, match="ZeRO-3 .* install deepspeed"):
        load_adapter(zero_folder(tmp_path, empty), encoder_dim=8)


def test_folder_without_latest(tmp_path):
    with pytest.raises(CheckpointError, match="not a DeepSpeed checkpoint.*latest"):
        load_adapter(tmp_path, encoder_dim=8)


@pytest.mark.parametrize("changes", [{"downsample": 0}, {"llm_dim": 0}])
def test_bad_configs(changes):
    with pytest.raises(ConfigError):
        LinearAdapter(**{"encoder_dim": 8, "llm_dim": 6, "downsample": 2, "hidden": 4, **changes})


def test_wrong_input_width():
    with pytest.raises(ConfigError, match=r"expected \(B, T, 8\)"):
        LinearAdapter(8, 6, 2, 4)(torch.zeros(1, 4, 9), torch.tensor([4]))
