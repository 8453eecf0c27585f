"""Model loading: the preset, a local folder and a hub id go through one from_pretrained path."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmft.config import ModelSection, PeftSection, build_config
from llmft.errors import UserError
from llmft.models.loader import load_causal_lm, load_tokenizer, resolve_model
from llmft.models.presets import PRESETS, materialize
from llmft.peft.methods import apply_method, count_parameters

CPU = torch.device("cpu")


def test_preset_is_a_small_real_llama(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    n_params = sum(p.numel() for p in model.parameters())
    assert 2_000_000 < n_params < 10_000_000
    assert model.config.vocab_size == len(tiny_tokenizer)
    assert tiny_tokenizer("hello")["input_ids"][0] == tiny_tokenizer.bos_token_id
    assert tiny_tokenizer.eos_token_id is not None and tiny_tokenizer.pad_token_id is not None


def test_preset_weights_are_deterministic(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMFT_HOME", str(tmp_path))
    again = materialize(PRESETS["tiny-llama"])
    assert again != tiny_model_dir
    first, second = load_file(tiny_model_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # Not all equal to each other: each weight has its own generator.
    assert not torch.equal(
        first["model.layers.0.self_attn.q_proj.weight"], first["model.layers.1.self_attn.q_proj.weight"]
    )
    assert materialize(PRESETS["tiny-llama"]) == again  # second call reuses the folder


def test_local_folder_loads_like_the_preset(tiny_model_dir, tmp_path):
    # What a hub id becomes once downloaded: a folder written by save_pretrained.
    local = tmp_path / "my-llama"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(local)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(local)
    source = resolve_model(ModelSection(name=str(local)))
    assert source.kind == "local"
    model = load_causal_lm(source, ModelSection(name=str(local)), CPU)
    preset = load_causal_lm(resolve_model(ModelSection()), ModelSection(), CPU)
    ids = torch.tensor([[1, 20, 30, 40]])
    assert torch.equal(model(ids).logits, preset(ids).logits)
    assert (
        load_tokenizer(source, ModelSection(name=str(local)))("a b")["input_ids"]
        == AutoTokenizer.from_pretrained(local)("a b")["input_ids"]
    )


def test_hub_id_offline_says_how_to_pass_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        resolve_model(ModelSection(name="meta-llama/Llama-2-7b-hf"))
    message = str(info.value)
    assert "model.name: 'meta-llama/Llama-2-7b-hf'" in message
    assert "HF_HUB_OFFLINE=1" in message and "--model.name DIR" in message


@pytest.mark.parametrize("name", ["./no/such/folder", "/nope/model", "a/b/c"])
def test_missing_folder(name):
    with pytest.raises(UserError, match=f"model.name: folder '{name}' does not exist"):
        resolve_model(ModelSection(name=name))


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match="has no config.json"):
        resolve_model(ModelSection(name=str(tmp_path)))


def test_corrupt_weights_and_missing_tokenizer(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"\xff" * 64)
    cfg = ModelSection(name=str(broken))
    with pytest.raises(UserError, match="model.name: could not load weights from '.*broken'"):
        load_causal_lm(resolve_model(cfg), cfg, CPU)

    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((tiny_model_dir / name).read_bytes())
    cfg = ModelSection(name=str(bare))
    with pytest.raises(UserError, match="has no tokenizer .* save one there with tokenizer.save_pretrained"):
        load_tokenizer(resolve_model(cfg), cfg)


def test_model_folder_is_checked_before_loading(tiny_model_dir, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json' is not valid JSON"):
        resolve_model(ModelSection(name=str(folder)))
    (folder / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    with pytest.raises(UserError, match="has no weights .*model.save_pretrained"):
        resolve_model(ModelSection(name=str(folder)))


def test_unwritable_llmft_home_is_a_user_error(tmp_path, monkeypatch):
    home = tmp_path / "a-file"
    home.write_text("x")
    monkeypatch.setenv("LLMFT_HOME", str(home))
    with pytest.raises(UserError, match="LLMFT_HOME: cannot write presets under"):
        materialize(PRESETS["tiny-llama"])


def test_preset_typo_suggests_the_preset(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="did you mean the preset 'tiny-llama'"):
        resolve_model(ModelSection(name="tiny_llama"))


def test_skeleton_reads_no_weights(tiny_model_dir):
    from llmft.models.loader import model_skeleton

    skeleton = model_skeleton(resolve_model(ModelSection()), ModelSection())
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}
    assert "q_proj" in {n.rsplit(".", 1)[-1] for n, _ in skeleton.named_modules()}


def test_pad_token_falls_back_when_missing(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "tok")
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "tok" / name).write_bytes((tiny_model_dir / name).read_bytes())
    source = resolve_model(ModelSection(name=str(tmp_path / "tok")))
    loaded = load_tokenizer(source, ModelSection(name=str(tmp_path / "tok")))
    assert loaded.pad_token == "<unk>" and loaded.padding_side == "right"


def test_model_dtype_option(tiny_model_dir):
    cfg = ModelSection(dtype="bfloat16")
    model = load_causal_lm(resolve_model(cfg), cfg, CPU)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# ---- PEFT methods ------------------------------------------------------------------------------


def _model():
    return load_causal_lm(resolve_model(ModelSection()), ModelSection(), CPU)


def test_lora_trains_exactly_the_adapters():
    model = _model()
    total = sum(p.numel() for p in model.parameters())
    cfg = build_config({}, {"peft.lora.target_modules": "q_proj,v_proj", "peft.lora.r": 4}).peft
    expected = 0
    for name, module in model.named_modules():
        if name.endswith(("q_proj", "v_proj")):
            expected += 4 * (module.in_features + module.out_features)
    peft_model = apply_method(model, cfg)
    count = count_parameters(peft_model)
    assert count.trainable == expected and count.total == total + expected
    assert all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)


def test_lora_unknown_target_lists_the_real_ones():
    from llmft.models.loader import model_skeleton
    from llmft.peft.methods import check_method

    cfg = PeftSection(method="lora", lora={"target_modules": ["q_proj", "query"]})
    for model in (_model(), model_skeleton(resolve_model(ModelSection()), ModelSection())):
        with pytest.raises(UserError) as info:
            check_method(model, cfg)
        message = str(info.value)
        assert "peft.lora.target_modules: 'query' matches no linear layer" in message
        assert "q_proj" in message and "down_proj" in message
    with pytest.raises(UserError, match="'query' matches no linear layer"):
        apply_method(_model(), cfg)


def test_method_none_trains_everything():
    model = apply_method(_model(), PeftSection(method="none"))
    assert all(p.requires_grad for p in model.parameters())


def test_local_folder_with_its_own_code_needs_trust_remote_code(tiny_model_dir, tmp_path):
    import json
    import shutil

    folder = tmp_path / "custom-llama"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "code-ran"
    (folder / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class MyConfig(LlamaConfig):\n    model_type = 'my_llama'\n\n\n"
        "class MyModel(LlamaForCausalLM):\n    config_class = MyConfig\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "my_llama"  # not a transformers model type: only its own code builds it
    config["auto_map"] = {"AutoConfig": "custom.MyConfig", "AutoModelForCausalLM": "custom.MyModel"}
    (folder / "config.json").write_text(json.dumps(config))
    cfg = ModelSection(name=str(folder))
    source = resolve_model(cfg)
    from llmft.models.loader import model_skeleton

    expected = f"model.name: '{folder}' ships its own code .* pass --model.trust_remote_code true"
    for load in (lambda: model_skeleton(source, cfg), lambda: load_causal_lm(source, cfg, CPU)):
        with pytest.raises(UserError, match=expected):
            load()
    assert not marker.exists()  # refused before running any of the folder's code
    trusted = ModelSection(name=str(folder), trust_remote_code=True)
    assert type(model_skeleton(source, trusted)).__name__ == "MyModel" and marker.exists()


def test_max_seq_len_past_the_model_positions_is_a_warning(tiny_model_dir, caplog):
    from transformers import AutoConfig

    from llmft.models.loader import check_max_seq_len

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.max_position_embeddings == 1024
    assert not check_max_seq_len(config, 1024) and not caplog.text
    assert check_max_seq_len(config, 2048)
    assert "data.max_seq_len 2048 is longer than the model's max_position_embeddings 1024" in caplog.text
