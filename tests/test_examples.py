"""Every example runs as a user would run it, and leaves a score that decodes."""

import os
import subprocess
import sys
from pathlib import Path

import gradmidi
from jackkit import free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_plain_loop_example_writes_a_score_with_epoch_markers(tmp_path):
    out = tmp_path / "digits.mid"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "plain_loop.py"), "--out", str(out), "--epochs", "2"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    summary = gradmidi.read_score(out).summary()
    assert summary["steps"] == 2 * 57  # 1,797 digits in batches of 32
    assert [v["name"] for v in summary["voices"]] == ["0", "2", "3"]
    assert [text for _, text in summary["markers"] if text.startswith("epoch")] == ["epoch 1", "epoch 2"]
    assert summary["scale"] == "D major_pentatonic"


def run_example(name: str, out, *args: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / name), "--out", str(out), *args], capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_mixed_precision_example_sounds_the_skipped_steps(tmp_path):
    run_example("mixed_precision.py", tmp_path / "amp.mid")
    summary = gradmidi.read_score(tmp_path / "amp.mid").summary()
    assert summary["steps"] == 120
    assert summary["events"]["skipped"] >= 3 and summary["events"]["nan"] == summary["events"]["inf"] == 0
    assert summary["first_event_step"]["skipped"] == 0  # the scaler calibrates at the start


def test_clipping_example_hears_the_norms_before_clipping(tmp_path):
    out = run_example("clipping.py", tmp_path / "clipped.mid")
    clipped = int(out.split("clipped ")[1].split()[0])
    assert clipped > 0
    norms = [n for _, _, n in gradmidi.read_score(tmp_path / "clipped.mid").decode()]
    assert max(norms) > 1.0  # above max_norm: these are the raw, unclipped norms


def test_deep_model_example_groups_into_one_voice_per_block(tmp_path):
    out = run_example("deep_model.py", tmp_path / "deep.mid", "--steps", "10")
    assert "38 layers -> 8 voices" in out
    names = [v["name"] for v in gradmidi.read_score(tmp_path / "deep.mid").summary()["voices"]]
    assert names == ["embed"] + [f"encoder.layers.{i}" for i in range(6)] + ["head"]


def test_voices_and_scales_example_uses_the_chosen_voices_instruments_and_scale(tmp_path):
    run_example("voices_and_scales.py", tmp_path / "chosen.mid")
    summary = gradmidi.read_score(tmp_path / "chosen.mid").summary()
    assert [(v["name"], v["instrument"]) for v in summary["voices"]] == [
        ("stem", "Cello"), ("body", "Vibraphone"), ("head", "Flute")]
    assert summary["scale"] == "Eb major"
    eb_major = {3, 5, 7, 8, 10, 0, 2}
    for v in summary["voices"]:
        lo, hi = v["pitch_range"]
        assert 48 <= lo <= hi <= 84
    score = gradmidi.read_score(tmp_path / "chosen.mid")
    assert all(p % 12 in eb_major for notes in score.notes.values() for _, p, _ in notes)


def test_lightning_example_sounds_its_optimizer_steps_and_leaves_logs_to_replay(tmp_path):
    out = run_example("lightning_digits.py", tmp_path / "digits.mid", "--epochs", "1", "--logs", str(tmp_path / "runs"))
    assert "29 optimizer steps" in out  # 57 batches, 2 per optimizer step (the last one alone)
    assert gradmidi.read_score(tmp_path / "digits.mid").summary()["steps"] == 29
    replay = subprocess.run([sys.executable, "-m", "gradmidi", "sonify", str(tmp_path / "runs"), "-o",
                             str(tmp_path / "replay.mid")], capture_output=True, text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    names = [v["name"] for v in gradmidi.read_score(tmp_path / "replay.mid").summary()["voices"]]
    assert "grad_2.0_norm/net.0.weight" in names and "grad_2.0_norm_total" in names


def test_transformers_example_groups_gpt2_into_its_four_voices(tmp_path):
    out = run_example("transformers_tiny.py", tmp_path / "gpt2.mid", "--steps", "8")
    assert "8 optimizer steps" in out
    summary = gradmidi.read_score(tmp_path / "gpt2.mid").summary()
    assert summary["steps"] == 8
    assert [v["name"] for v in summary["voices"]] == ["transformer.wte", "transformer.wpe", "transformer.h.*",
                                                      "transformer.ln_f"]


def test_lora_example_voices_the_adapted_llama_block_by_block(tmp_path):
    out = run_example("lora_finetune.py", tmp_path / "lora.mid", "--steps", "4")
    assert "24 adapter layers -> 6 voices" in out
    summary = gradmidi.read_score(tmp_path / "lora.mid").summary()
    assert summary["steps"] == 4 and summary["title"] == "LlamaForCausalLM"
    assert [v["name"] for v in summary["voices"]] == [f"model.layers.{i}" for i in range(6)]
    assert {v["kind"] for v in summary["voices"]} == {"attention"}
    run_example("lora_finetune.py", tmp_path / "factors.mid", "--steps", "2", "--factors")
    names = [v["name"] for v in gradmidi.read_score(tmp_path / "factors.mid").summary()["voices"]]
    assert names == [f"model.layers.{i}.lora_{f}" for i in range(6) for f in "AB"]


def test_ddp_torchrun_example_sounds_rank_zero_and_skips_unsynced_micro_steps(tmp_path):
    out = tmp_path / "ddp.mid"
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
         str(free_port()), str(EXAMPLES / "ddp_torchrun.py"), "--out", str(out), "--epochs", "1",
         "--accumulate", "2"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    # 1,797 digits over 2 ranks in batches of 16: 57 micro-batches, every second one synced
    assert "28 steps sounded" in result.stdout and "29 unsynced micro-steps skipped" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["ddp.mid"]  # one file: rank zero's
    summary = gradmidi.read_score(out).summary()
    assert summary["steps"] == 28
    assert [v["name"] for v in summary["voices"]] == ["0", "2", "3"]


def torchrun(tmp_path, ranks: int, example: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port",
         str(free_port()), str(EXAMPLES / example), *args],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_fsdp_tp_torchrun_example_sounds_every_layer_of_a_2x2_mesh(tmp_path):
    out = tmp_path / "tp.mid"
    stdout = torchrun(tmp_path, 4, "fsdp_tp_torchrun.py", "--out", str(out), "--steps", "6")
    assert "rank 0: 6 steps sounded" in stdout
    assert [p.name for p in tmp_path.iterdir()] == ["tp.mid"]  # one file: rank zero's
    summary = gradmidi.read_score(out).summary()
    assert summary["steps"] == 6
    names = [v["name"] for v in summary["voices"]]
    assert names[0] == "embed" and names[-2:] == ["norm", "output"] and "layers.1.ffn_norm" in names
    assert all(v["notes"] == 6 for v in summary["voices"])  # every voice sounded every step


def test_pipeline_torchrun_example_hears_both_stages_on_rank_zero(tmp_path):
    out = tmp_path / "pipeline.mid"
    stdout = torchrun(tmp_path, 2, "pipeline_torchrun.py", "--out", str(out), "--steps", "8")
    assert "rank 0: 8 steps sounded" in stdout
    assert [p.name for p in tmp_path.iterdir()] == ["pipeline.mid"]
    summary = gradmidi.read_score(out).summary()
    assert summary["steps"] == 8
    # rank zero holds the first stage (inp, layers.0, layers.1) only, yet every layer sounds
    assert [v["name"] for v in summary["voices"]] == ["inp", "layers.0", "layers.1", "layers.2", "layers.3", "out"]
    assert all(v["notes"] == 8 for v in summary["voices"])


def test_accelerate_example_sounds_once_per_optimizer_step_before_clipping(tmp_path):
    out = run_example("accelerate_loop.py", tmp_path / "acc.mid", "--accumulate", "2", "--max-norm", "0.01")
    # 512 examples in batches of 16: 32 micro-batches an epoch, 2 to an optimizer step, 2 epochs.
    assert "32 steps sounded, 32 optimizer steps, 64 micro-batches" in out
    score = gradmidi.read_score(tmp_path / "acc.mid")
    summary = score.summary()
    assert summary["steps"] == 32 and [v["notes"] for v in summary["voices"]] == [32, 32, 32]
    assert [text for _, text in summary["markers"]] == ["epoch 1", "epoch 2"]
    assert min(norm for _, _, norm in score.decode()) > 0.01  # every norm from before clipping to 0.01


def test_accelerate_example_under_torchrun_sounds_once_per_optimizer_step_on_rank_zero(tmp_path):
    out = tmp_path / "acc.mid"
    stdout = torchrun(tmp_path, 2, "accelerate_loop.py", "--out", str(out), "--epochs", "1")
    # 512 examples over 2 processes: 16 micro-batches each, 2 to a step.
    assert "8 steps sounded, 8 optimizer steps, 16 micro-batches" in stdout
    assert [p.name for p in tmp_path.iterdir()] == ["acc.mid"]  # one file: the main process's
    assert gradmidi.read_score(out).summary()["steps"] == 8
