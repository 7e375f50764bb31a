"""Models as they are trained today: PEFT adapters, torch.compile, checkpointing and other
wrappers are voiced as the user wrote the model (real PEFT, real compile and checkpoint wrappers)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

import gradmidi
from gradmidi import Sink
from gradmidi.instruments import KIND_PROGRAMS, layer_kind

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

WRAPPER_PARTS = re.compile(r"(^|\.)(base_model|_orig_mod|module|_checkpoint_wrapped_module|_fsdp_wrapped_module|"
                           r"base_layer|default)(\.|$)")
BLOCKS = [f"transformer.h.{b}" for b in range(4)]


class Recorder(Sink):
    def __init__(self) -> None:
        self.slots: list = []

    def emit(self, slot) -> None:
        self.slots.append(slot)


def gpt2(seed: int = 0) -> torch.nn.Module:
    """A 4-block GPT-2 from a config (nothing downloaded), without dropout so reruns match exactly."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=4, n_head=2, n_embd=32, vocab_size=64, n_positions=16, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def adapted(method: str) -> torch.nn.Module:
    configs = {
        "lora": peft.LoraConfig(target_modules=["c_attn", "c_proj"], r=4, fan_in_fan_out=True),
        "dora": peft.LoraConfig(target_modules=["c_attn", "c_proj"], r=4, fan_in_fan_out=True, use_dora=True),
        "ia3": peft.IA3Config(target_modules=["c_attn", "c_proj", "c_fc"], feedforward_modules=["c_fc"],
                              fan_in_fan_out=True),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(gpt2(), configs[method])


def train(model: torch.nn.Module, steps: int = 3, **options) -> tuple[gradmidi.Sonifier, list]:
    recorder = Recorder()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.arange(32).reshape(2, 16) % 64
    with gradmidi.Sonifier(model, None, sinks=[recorder], **options) as son:
        for _ in range(steps):
            opt.zero_grad()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            son.step(loss=loss)
            opt.step()
    return son, recorder.slots


def block_shape(voice) -> tuple[str, ...]:
    """A block voice's layers with the block number taken out: alike blocks have alike shapes."""
    return tuple(re.sub(r"^transformer\.h\.\d+\.", "", layer) for layer in voice.layers)


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_adapted_gpt2_sounds_one_attention_voice_per_block_named_without_wrappers(method):
    model = adapted(method)
    son, slots = train(model)
    assert [v.name for v in son.voices] == BLOCKS
    assert len({block_shape(v) for v in son.voices}) == 1  # every block voiced alike
    for v in son.voices:
        assert not any(WRAPPER_PARTS.search(name) or "lora" in name or "ia3" in name for name in (v.name, *v.layers))
        assert v.kind == "attention" and v.program in KIND_PROGRAMS["attention"]
    # the adapted attention projections themselves are attention, though the adapters are nn.Linear
    assert "transformer.h.0.attn.c_attn" in son.voices[0].layers
    # the header keeps the exact module paths that own the trained parameters, for decoding
    exact = son.header.info["layers"]
    assert all(name.startswith("base_model.model.transformer.h.") for name in exact)
    modules = dict(model.named_modules())
    owned = {id(p) for name in exact for p in modules[name].parameters(recurse=False)}
    assert owned == {id(p) for p in model.parameters() if p.requires_grad}  # the adapters, all of them
    assert len(son.header.info["layer_voices"]) == len(exact)
    # every block sounds, and a block's norm is that of its adapters' gradients
    assert len(slots) == 3 and all((slot.pitches >= 0).all() for slot in slots)


def test_a_blocks_voice_is_the_norm_of_its_adapters_gradients():
    model = adapted("lora")
    recorder = Recorder()
    ids = torch.arange(32).reshape(2, 16) % 64
    with gradmidi.Sonifier(model, None, sinks=[recorder]) as son:
        model(input_ids=ids, labels=ids).loss.backward()
        son.step()
    grads = [p.grad.flatten() for name, p in model.named_parameters() if p.requires_grad and ".h.2." in name]
    expected = float(torch.linalg.vector_norm(torch.cat(grads)))
    assert len(grads) == 6  # lora_A and lora_B of c_attn, attn.c_proj and mlp.c_proj
    assert recorder.slots[0].norms[2] == pytest.approx(expected, rel=1e-6)


def test_adapter_factors_option_voices_lora_a_and_b_apart():
    son, slots = train(adapted("lora"), steps=2, adapter_factors=True)
    assert [v.name for v in son.voices] == [f"{b}.lora_{f}" for b in BLOCKS for f in "AB"]
    assert son.voices[0].layers == tuple(f"transformer.h.0.{m}.lora_A" for m in ("attn.c_attn", "attn.c_proj",
                                                                                    "mlp.c_proj"))
    assert all(v.kind == "attention" for v in son.voices)
    # LoRA starts with B = 0, so A has no gradient at the first step and is heard from the second
    assert (slots[0].pitches[1::2] >= 0).all() and (slots[0].norms[::2] == 0).all()
    assert (slots[1].pitches >= 0).all()


def test_the_frozen_base_is_silent_unless_included_and_then_voiced_as_the_plain_model():
    plain = gradmidi.Sonifier(gpt2(), None)
    plain.close()
    son = gradmidi.Sonifier(adapted("lora"), None, include_frozen=True)
    son.close()
    assert son.voices == plain.voices  # the same table: names, layers, kinds, programs, channels
    assert "base_model.model.transformer.wte" in son.header.info["layers"]
    silent = gradmidi.Sonifier(adapted("lora"), None)
    silent.close()
    assert "base_model.model.transformer.wte" not in silent.header.info["layers"]


def voice_table(model: torch.nn.Module):
    son = gradmidi.Sonifier(model, None)
    son.close()
    return son.voices, son.header.title


class Engine(torch.nn.Module):
    """A wrapper holding the model as ``module`` and adding no parameters (as DDP and DeepSpeed do)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def checkpointed(model: torch.nn.Module) -> torch.nn.Module:
    for i, block in enumerate(model.transformer.h):
        model.transformer.h[i] = checkpoint_wrapper(block)
    return model


def compiled_per_block(model: torch.nn.Module) -> torch.nn.Module:
    for i, block in enumerate(model.transformer.h):
        model.transformer.h[i] = torch.compile(block)
    return model


def test_compiled_checkpointed_engine_wrapped_and_plain_models_share_one_voice_table():
    plain = voice_table(gpt2())
    assert [v.name for v in plain[0]] == ["transformer.wte", "transformer.wpe", *BLOCKS, "transformer.ln_f"]
    assert plain[1] == "GPT2LMHeadModel"
    assert voice_table(torch.compile(gpt2())) == plain
    assert voice_table(checkpointed(gpt2())) == plain
    assert voice_table(Engine(gpt2())) == plain
    assert voice_table(compiled_per_block(gpt2())) == plain
    assert voice_table(torch.compile(Engine(checkpointed(gpt2())))) == plain


def test_compiled_and_checkpointed_models_sound_the_same_notes_as_the_plain_model():
    _, plain = train(gpt2())
    # eager backend: the compiled module and its renaming, without a C++ toolchain for inductor
    _, compiled = train(torch.compile(gpt2(), backend="eager"))
    _, wrapped = train(checkpointed(gpt2()))
    for other in (compiled, wrapped):
        assert len(other) == len(plain) == 3
        for a, b in zip(plain, other, strict=True):
            np.testing.assert_allclose(b.norms, a.norms, rtol=1e-5)
            assert (a.pitches == b.pitches).all()


def test_a_module_attribute_beside_parameters_is_kept_in_names():
    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = torch.nn.Linear(2, 2)
            self.head = torch.nn.Linear(2, 1)  # parameters beside it: "module" is the user's own name

    voices, _ = voice_table(Holder())
    assert [v.name for v in voices] == ["module", "head"]


class Experts(torch.nn.Module):
    """A tiny mixture of experts: a router, and experts of two linear layers each."""

    def __init__(self, width: int, n: int) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(width, n)
        self.experts = torch.nn.ModuleList(
            torch.nn.Sequential() for _ in range(n))
        for expert in self.experts:
            expert.add_module("fc1", torch.nn.Linear(width, 2 * width))
            expert.add_module("fc2", torch.nn.Linear(2 * width, width))

    def forward(self, x):
        weights = self.gate(x).softmax(-1)
        outs = torch.stack([e.fc2(e.fc1(x).relu()) for e in self.experts], -1)
        return (outs * weights.unsqueeze(-2)).sum(-1)


class MoE(torch.nn.Module):
    def __init__(self, blocks: int, n: int = 4) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)
        self.layers = torch.nn.ModuleList(Experts(8, n) for _ in range(blocks))
        self.head = torch.nn.Linear(8, 16)

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = x + layer(x)
        return self.head(x)


def test_a_mixture_of_experts_groups_its_experts_under_their_layer():
    model = MoE(blocks=1, n=6)  # 6 experts x 2 + router + embed + head = 15 layers: each could be a voice
    recorder = Recorder()
    with gradmidi.Sonifier(model, None, sinks=[recorder]) as son:
        model(torch.arange(16).reshape(2, 8)).sum().backward()
        son.step()
    assert [v.name for v in son.voices] == ["embed", "layers.0.gate", "layers.0.experts.*.fc1",
                                            "layers.0.experts.*.fc2", "head"]
    assert all(v.kind == "linear" for v in son.voices[1:4])
    exact, where = son.header.info["layers"], son.header.info["layer_voices"]
    fc1 = {where[i] for i, name in enumerate(exact) if re.fullmatch(r"layers\.0\.experts\.\d\.fc1", name)}
    assert len([n for n in exact if ".fc1" in n]) == 6 and fc1 == {2}  # six experts, one voice
    expected = torch.linalg.vector_norm(torch.cat([e.fc1.weight.grad.flatten() for e in model.layers[0].experts] +
                                                  [e.fc1.bias.grad for e in model.layers[0].experts]))
    assert recorder.slots[0].norms[2] == pytest.approx(float(expected), rel=1e-6)


def test_mixtures_in_many_blocks_are_voiced_alike_with_the_experts_together():
    son = gradmidi.Sonifier(MoE(blocks=5, n=8), None)  # 5 x (router + 2 expert layers) + 2: too many for 15
    son.close()
    per_block = [(f"layers.{b}.gate", f"layers.{b}.experts.*") for b in range(5)]
    assert [v.name for v in son.voices] == ["embed", *[name for pair in per_block for name in pair], "head"]
    assert not any(re.search(r"experts\.\d", layer) for v in son.voices for layer in v.layers)


@pytest.mark.parametrize("class_name, path, kind", [
    ("Conv1D", "transformer.h.0.attn.c_attn", "attention"),  # GPT-2's fused QKV projection
    ("Conv1D", "transformer.h.0.attn.c_proj", "attention"),  # ... and its output projection
    ("Conv1D", "transformer.h.0.mlp.c_fc", "linear"),  # transformers' Conv1D is a linear map
    ("Conv1d", "features.0", "convolution"),  # torch's is a convolution
    ("Linear", "model.layers.0.self_attn.q_proj", "attention"),
    ("Linear", "blocks.0.Wqkv", "attention"),  # a fused QKV layer
    ("Linear", "encoder.layer.0.attention.output.dense", "attention"),
    ("LayerNorm", "encoder.layer.0.attention.output.LayerNorm", "normalisation"),  # a norm stays a norm
    ("RMSNorm", "model.layers.0.self_attn.q_norm", "normalisation"),
    ("Linear", "model.layers.0.mlp.gate_proj", "linear"),
    ("Linear", "layers.0.experts.*.fc1", "linear"),  # MoE experts are feed-forward layers
    ("MixtralExperts", "model.layers.0.mlp.experts", "linear"),  # fused experts
    ("QKVParallelLinear", "layers.0.qkv", "attention"),
])
def test_layer_kinds_follow_what_modules_do(class_name, path, kind):
    assert layer_kind(class_name, path) == kind


def test_a_module_peft_trains_in_full_is_voiced_under_its_own_name():
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 8)
            self.q_proj = torch.nn.Linear(8, 8)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, ids):
            return self.head(self.q_proj(self.embed(ids)))

    model = peft.get_peft_model(Tiny(), peft.LoraConfig(target_modules=["q_proj"], r=2, modules_to_save=["head"]))
    son = gradmidi.Sonifier(model, None)
    son.close()
    assert [(v.name, v.layers, v.kind) for v in son.voices] == [("q_proj", ("q_proj",), "attention"),
                                                                 ("head", ("head",), "linear")]
    assert "base_model.model.head.modules_to_save.default" in son.header.info["layers"]
