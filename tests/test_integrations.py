"""Real Lightning and real Transformers training on the CPU, sonified by the callbacks.

A recording sink (passed through the callbacks' Sonifier options) sees every slot's exact
norms and loss; the .mid file is read back for what a user would see.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradmidi
from scorekit import assert_decodes_to
from gradmidi.sinks.base import Sink

L = pytest.importorskip("lightning.pytorch")
from gradmidi.integrations.lightning import SonifyCallback as LightningSonify  # noqa: E402


class Recorder(Sink):
    def __init__(self) -> None:
        self.slots = []

    def emit(self, slot) -> None:
        self.slots.append(slot)


def loader(n=64, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def layer_norms(*modules) -> list[float]:
    return [float(torch.linalg.vector_norm(torch.cat([p.grad.float().flatten() for p in m.parameters()])))
            for m in modules]


class Classifier(L.LightningModule):
    """Two linear layers; records what the module itself sees in its own hooks."""

    def __init__(self, lr: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))
        self.lr = lr
        self.micro_losses, self.seen = [], []

    def training_step(self, batch, index):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.micro_losses.append(float(loss.detach()))
        return loss

    def on_before_optimizer_step(self, optimizer):
        # Lightning calls this right after the callbacks' hook: the same gradients, unclipped.
        self.seen.append(layer_norms(self.net[0], self.net[2]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def trainer(tmp_path, callback, **options):
    torch.manual_seed(0)
    options = dict(logger=False) | options
    return L.Trainer(accelerator="cpu", devices=1, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, callbacks=[callback], **options)


def test_lightning_sounds_one_slot_per_optimizer_step_with_the_unclipped_norms(tmp_path):
    recorder = Recorder()
    callback = LightningSonify(tmp_path / "run.mid", sinks=[recorder])
    module = Classifier()
    fit = trainer(tmp_path, callback, max_epochs=2, accumulate_grad_batches=2, gradient_clip_val=0.01)
    fit.fit(module, loader())
    assert fit.global_step == 8  # 8 batches an epoch, 2 per optimizer step, 2 epochs
    summary = gradmidi.read_score(tmp_path / "run.mid").summary()
    assert summary["steps"] == len(recorder.slots) == 8
    assert [v["name"] for v in summary["voices"]] == ["net.0", "net.2"]
    assert [text for _, text in summary["markers"]] == ["epoch 0", "epoch 1"]
    heard = np.array([slot.norms for slot in recorder.slots])
    np.testing.assert_allclose(heard, np.array(module.seen), rtol=1e-6)
    assert heard.max() > 0.01  # the norms before Lightning clipped them to 0.01
    step_losses = np.mean(np.reshape(module.micro_losses, (8, 2)), axis=1)  # mean over the accumulated batches
    np.testing.assert_allclose([slot.loss for slot in recorder.slots], step_losses, rtol=1e-5)


def test_lightning_default_path_is_the_log_folder(tmp_path):
    fit = trainer(tmp_path, LightningSonify(), max_steps=3)
    fit.fit(Classifier(), loader())
    assert gradmidi.read_score(tmp_path / "gradmidi.mid").summary()["steps"] == 3


def test_lightning_bf16_mixed(tmp_path):
    recorder = Recorder()
    fit = trainer(tmp_path, LightningSonify(tmp_path / "bf16.mid", sinks=[recorder]),
                  max_steps=4, precision="bf16-mixed")
    module = Classifier()
    fit.fit(module, loader())
    assert len(recorder.slots) == 4 and np.all(np.isfinite([s.norms for s in recorder.slots]))
    np.testing.assert_allclose([s.norms for s in recorder.slots], module.seen, rtol=1e-6)


def test_lightning_16_mixed_hears_skipped_steps_and_the_unscaled_loss(tmp_path):
    # Lightning swaps 16-mixed for bf16 on a CPU accelerator, so the plugin is given explicitly,
    # with a CPU GradScaler; its huge first scale overflows fp16 until it has backed off.
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    recorder = Recorder()
    fit = trainer(tmp_path, LightningSonify(tmp_path / "fp16.mid", sinks=[recorder]), max_steps=40,
                  max_epochs=5, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    module = Classifier()
    fit.fit(module, loader())
    assert len(recorder.slots) == 40
    summary = gradmidi.read_score(tmp_path / "fp16.mid").summary()
    assert summary["events"]["skipped"] >= 1 and summary["first_event_step"]["skipped"] == 0
    assert summary["events"]["nan"] == summary["events"]["inf"] == 0  # a skipped step is not also an alarm
    np.testing.assert_allclose([s.loss for s in recorder.slots], module.micro_losses, rtol=1e-3)


class TwoOptimizers(L.LightningModule):
    """Manual optimization with two optimizers, each for one half, as in a GAN."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.left, self.right = nn.Linear(12, 3), nn.Linear(12, 3)

    def training_step(self, batch, index):
        x, y = batch
        opt_left, opt_right = self.optimizers()
        for opt, layer in ((opt_left, self.left), (opt_right, self.right)):
            opt.zero_grad()
            self.manual_backward(F.cross_entropy(layer(x), y))
            opt.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.left.parameters(), lr=0.1), torch.optim.SGD(self.right.parameters(), lr=0.1)


def test_lightning_with_two_optimizers_sounds_each_optimizer_step_with_its_own_layers(tmp_path):
    recorder = Recorder()
    fit = trainer(tmp_path, LightningSonify(tmp_path / "two.mid", sinks=[recorder]), max_epochs=1)
    fit.fit(TwoOptimizers(), loader())
    assert len(recorder.slots) == 16  # 8 batches, 2 optimizer steps each
    present = np.isfinite([slot.norms for slot in recorder.slots])
    assert present[0::2].tolist() == [[True, False]] * 8  # the left optimizer's steps: only `left`
    assert present[1::2].tolist() == [[False, True]] * 8
    summary = gradmidi.read_score(tmp_path / "two.mid").summary()
    assert [v["notes"] for v in summary["voices"]] == [8, 8]


def checkpointed_fit(tmp_path, callback, ckpt_path=None, every_n_train_steps=3, **options):
    """A Lightning fit that saves checkpoints (every 3 optimizer steps, or 0: every epoch), or resumes one."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", save_top_k=-1,
                            every_n_train_steps=every_n_train_steps or None,
                            every_n_epochs=None if every_n_train_steps else 1)
    module = Classifier()
    torch.manual_seed(0)
    options = dict(logger=False) | options
    fit = L.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=tmp_path, callbacks=[saver, callback], **options)
    fit.fit(module, one_batch_over_and_over(), ckpt_path=ckpt_path)
    return module


def one_batch_over_and_over():
    """8 equal batches an epoch: a resumed fit sees the batches the whole fit saw, wherever Lightning
    restarts its (not resumable) loader."""
    x, y = next(iter(loader(n=8)))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.repeat(8, 1), y.repeat(8)), batch_size=8)


def pitches_by_step(path) -> dict[int, list[int]]:
    score = gradmidi.read_score(path)
    heard: dict[int, list[int]] = {}
    for voice in range(len(score.header.voices)):
        for slot, pitch, _ in score.notes.get(voice, []):
            heard.setdefault(score.step_of(slot), []).append(int(pitch))
    return heard


@pytest.mark.parametrize("accumulate, at, total, markers", [
    # 8 batches an epoch. Mid-epoch (2 batches a step: 4 steps an epoch): that epoch is not marked twice.
    (2, 3, 6, ["epoch 0", "resumed at step 3", "epoch 1"]),
    (1, 8, 10, ["epoch 0", "resumed at step 8", "epoch 1"]),  # from the end of an epoch
])
def test_lightning_fit_resumed_from_a_checkpoint_continues_its_score(tmp_path, accumulate, at, total, markers):
    first, second = Recorder(), Recorder()
    options = dict(max_steps=total, accumulate_grad_batches=accumulate, every_n_train_steps=at if at < 4 else 0)
    whole = checkpointed_fit(tmp_path, LightningSonify(tmp_path / "run.mid", sinks=[first]), **options)
    assert len(first.slots) == total
    before = pitches_by_step(tmp_path / "run.mid")
    callback = LightningSonify(tmp_path / "run.mid", sinks=[second])
    resumed = checkpointed_fit(tmp_path, callback, ckpt_path=tmp_path / "ckpt" / f"step={at}.ckpt", **options)
    assert callback.sonifier.steps == total and [s.first_step for s in second.slots] == list(range(at, total))
    # The resumed steps sound what the resumed training did, which is what the whole run did.
    np.testing.assert_allclose([s.norms for s in second.slots], resumed.seen, rtol=1e-6)
    np.testing.assert_allclose([s.norms for s in second.slots], whole.seen[at:], rtol=1e-5)
    summary = gradmidi.read_score(tmp_path / "run.mid").summary()
    assert summary["steps"] == total and [text for _, text in summary["markers"]] == markers
    after = pitches_by_step(tmp_path / "run.mid")
    assert [after[step] for step in range(at)] == [before[step] for step in range(at)]
    assert [[int(p) for p in s.pitches] for s in second.slots] == [after[step] for step in range(at, total)]


def test_lightning_fresh_fit_over_an_earlier_score_starts_a_new_one(tmp_path):
    checkpointed_fit(tmp_path, LightningSonify(tmp_path / "run.mid"), max_steps=6)
    checkpointed_fit(tmp_path, LightningSonify(tmp_path / "run.mid"), max_steps=2)
    summary = gradmidi.read_score(tmp_path / "run.mid").summary()
    assert summary["steps"] == 2 and [text for _, text in summary["markers"]] == ["epoch 0"]


def test_lightning_resume_follows_the_score_into_a_new_logger_version(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    checkpointed_fit(tmp_path, LightningSonify(), max_steps=6, logger=CSVLogger(tmp_path, name="logs"))
    callback = LightningSonify()
    checkpointed_fit(tmp_path, callback, ckpt_path=tmp_path / "ckpt" / "step=3.ckpt", max_steps=5,
                     logger=CSVLogger(tmp_path, name="logs"))
    assert not (tmp_path / "logs" / "version_1" / "gradmidi.mid").exists()
    summary = gradmidi.read_score(tmp_path / "logs" / "version_0" / "gradmidi.mid").summary()
    assert summary["steps"] == 5 and "resumed at step 3" in [text for _, text in summary["markers"]]


def tensorboard_media(folder):
    """(audio clips, images) under gradmidi/ in the TensorBoard event files of ``folder``, read back."""
    from tensorboard.backend.event_processing.event_accumulator import AUDIO, IMAGES, EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={AUDIO: 0, IMAGES: 0})
    events.Reload()
    tags = events.Tags()
    audio = [events.Audio(t) for t in tags["audio"] if t.startswith("gradmidi/")]
    images = [events.Images(t) for t in tags["images"] if t.startswith("gradmidi/")]
    return tags, audio, images


def test_lightning_tensorboard_logger_gets_the_scores_audio_and_plot(tmp_path):
    import io
    import wave

    from lightning.pytorch.loggers import TensorBoardLogger

    fit = trainer(tmp_path, LightningSonify(), max_steps=16, max_epochs=2, logger=TensorBoardLogger(tmp_path, "tb"))
    fit.fit(Classifier(), loader())
    tags, audio, images = tensorboard_media(tmp_path / "tb" / "version_0")
    assert "gradmidi/audio" in tags["audio"] and "gradmidi/plot" in tags["images"]
    [[clip]], [[image]] = audio, images
    assert clip.step == image.step == 16 and clip.sample_rate == 22050
    with wave.open(io.BytesIO(clip.encoded_audio_string)) as sound:
        samples = np.frombuffer(sound.readframes(sound.getnframes()), dtype=np.int16)
    seconds = gradmidi.read_score(tmp_path / "tb" / "version_0" / "gradmidi.mid").summary()["seconds"]
    assert sound.getnchannels() == 1 and len(samples) / 22050 >= seconds  # the whole score, and its tail
    assert np.abs(samples).max() > 1000  # it sounds
    from PIL import Image

    picture = Image.open(io.BytesIO(image.encoded_image_string))
    assert picture.size == (image.width, image.height) and image.width > 400 and image.height > 200
    assert len(set(np.asarray(picture.convert("L")).flatten().tolist())) > 10  # drawn, not blank


def test_lightning_dashboards_false_leaves_tensorboard_alone(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    fit = trainer(tmp_path, LightningSonify(dashboards=False), max_steps=3, logger=TensorBoardLogger(tmp_path, "tb"))
    fit.fit(Classifier(), loader())
    tags, audio, images = tensorboard_media(tmp_path / "tb" / "version_0")
    assert audio == images == [] and (tmp_path / "tb" / "version_0" / "gradmidi.mid").exists()


def test_lightning_wandb_logger_offline_gets_the_scores_audio_and_plot(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import soundfile
    from lightning.pytorch.loggers import WandbLogger

    for name, value in dict(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(tmp_path),
                            WANDB_DISABLE_GIT="true", WANDB_DISABLE_CODE="true").items():
        monkeypatch.setenv(name, value)  # offline: nothing leaves this machine
    logger = WandbLogger(project="gradmidi-test", save_dir=str(tmp_path), offline=True)
    fit = trainer(tmp_path, LightningSonify(tmp_path / "run.mid"), max_steps=8, logger=logger)
    fit.fit(Classifier(), loader())
    files = Path(logger.experiment.dir) / "media"  # the run's own folder (wandb keeps its settings per process)
    logger.experiment.finish()
    [audio] = (files / "audio" / "gradmidi").glob("audio_*.wav")
    [plot] = (files / "images" / "gradmidi").glob("plot_*.png")
    samples, rate = soundfile.read(audio)
    assert rate == 22050 and len(samples) / rate >= gradmidi.read_score(tmp_path / "run.mid").summary()["seconds"]
    assert np.abs(samples).max() > 0.03 and plot.stat().st_size > 10_000


def test_lightning_dashboards_without_audio_warn_and_still_get_the_plot(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import TensorBoardLogger

    monkeypatch.setenv("GRADMIDI_SOUNDFONT", str(tmp_path / "missing.sf2"))  # rendering really fails
    fit = trainer(tmp_path, LightningSonify(), max_steps=3, logger=TensorBoardLogger(tmp_path, "tb"))
    with pytest.warns(UserWarning, match="no audio for the dashboards: .*missing.sf2"):
        fit.fit(Classifier(), loader())
    tags, audio, images = tensorboard_media(tmp_path / "tb" / "version_0")
    assert audio == [] and len(images) == 1 and fit.global_step == 3


def test_callbacks_refuse_resume_options_they_set_themselves():
    with pytest.raises(gradmidi.GradmidiError, match="start_step= is not a callback option: a run resumed"):
        LightningSonify(start_step=3)


class RankMark(Sink):
    """Leaves a file named after the process's rank when it is opened (picklable for ddp_spawn)."""

    def __init__(self, folder) -> None:
        self.folder = folder

    def open(self, header) -> None:
        (self.folder / f"opened-by-rank-{torch.distributed.get_rank()}").touch()


def test_lightning_ddp_only_global_rank_zero_writes(tmp_path):
    fit = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=5, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=tmp_path, callbacks=[LightningSonify(sinks=[RankMark(tmp_path)])])
    fit.fit(Classifier(), loader())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gradmidi.mid", "opened-by-rank-0"]
    summary = gradmidi.read_score(tmp_path / "gradmidi.mid").summary()
    assert summary["steps"] == 5 and [v["name"] for v in summary["voices"]] == ["net.0", "net.2"]


class LogsGradNorms(Classifier):
    def on_before_optimizer_step(self, optimizer):
        from lightning.pytorch.utilities import grad_norm

        norms = grad_norm(self, norm_type=2)
        self.seen.append(norms)
        self.log_dict(norms)


def test_lightning_tensorboard_logger_grad_norms_replay_to_the_logged_values(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    module = LogsGradNorms()
    torch.manual_seed(0)
    fit = L.Trainer(accelerator="cpu", max_steps=12, log_every_n_steps=1, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False,
                    logger=TensorBoardLogger(tmp_path, name="tb"))
    fit.fit(module, loader(batch=4))
    from click.testing import CliRunner

    from gradmidi.cli import cli

    result = CliRunner().invoke(cli, ["sonify", str(tmp_path / "tb"), "-o", str(tmp_path / "replay.mid")])
    assert result.exit_code == 0, result.output
    score = gradmidi.read_score(tmp_path / "replay.mid")
    names = [v.name for v in score.header.voices]
    assert names == list(module.seen[0])  # every parameter and the total, in Lightning's order
    steps: dict[str, list[int]] = {}
    for step, name, _ in score.decode():
        steps.setdefault(name, []).append(step)
    logged = {}
    for name in names:
        assert len(steps[name]) == len(module.seen) == 12
        logged |= {(step, name): float(n[name]) for step, n in zip(steps[name], module.seen)}
    assert_decodes_to(tmp_path / "replay.mid", logged)


transformers = pytest.importorskip("transformers")


def tiny_gpt2(initializer_range=0.02):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=64, n_positions=16,
                                     initializer_range=initializer_range)
    return transformers.GPT2LMHeadModel(config)  # randomly initialised: nothing is downloaded


def token_data(n=48):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (n, 16), generator=g)
    return [{"input_ids": row, "labels": row} for row in ids]


def hf_train(tmp_path, callback, resume_from_checkpoint=None, initializer_range=0.02, **args):
    options = dict(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
                   gradient_accumulation_steps=2, logging_steps=1, learning_rate=1e-2, report_to=[],
                   save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0) | args
    trainer = transformers.Trainer(model=tiny_gpt2(initializer_range), args=transformers.TrainingArguments(**options),
                                   train_dataset=token_data(), callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


def logged_grad_norms(trainer, after=0):
    """The Trainer's own total norm (before its clipping) of each step after ``after``."""
    return [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e and e["step"] > after]


def totals(slots):
    return [math.sqrt(np.sum(np.square(s.norms))) for s in slots]


def test_transformers_sounds_each_optimizer_step_with_the_logged_loss(tmp_path):
    recorder = Recorder()
    trainer = hf_train(tmp_path, _hf_callback(tmp_path / "hf.mid", sinks=[recorder]), max_grad_norm=0.0)
    assert trainer.state.global_step == 6
    summary = gradmidi.read_score(tmp_path / "hf.mid").summary()
    assert summary["steps"] == len(recorder.slots) == 6
    assert [v["name"] for v in summary["voices"]] == [
        "transformer.wte", "transformer.wpe", "transformer.h.0.ln_1", "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj", "transformer.h.0.ln_2", "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj", "transformer.ln_f"]  # lm_head is tied to wte: counted once
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    np.testing.assert_allclose([s.loss for s in recorder.slots], [e["loss"] for e in logged], rtol=1e-6)
    totals = [math.sqrt(np.sum(np.square(s.norms))) for s in recorder.slots]
    np.testing.assert_allclose(totals, [e["grad_norm"] for e in logged], rtol=1e-4)  # the Trainer's own norm


def test_transformers_hears_the_norms_from_before_the_trainers_clipping(tmp_path):
    clipped, raw = Recorder(), Recorder()
    # Weights 25x the usual size: gradient norms above 1 (max_grad_norm is 1.0 by default).
    trainer = hf_train(tmp_path, _hf_callback(tmp_path / "clipped.mid", sinks=[clipped]), initializer_range=0.5)
    hf_train(tmp_path, _hf_callback(tmp_path / "raw.mid", sinks=[raw]), initializer_range=0.5, max_grad_norm=0.0)
    assert trainer.args.max_grad_norm == 1.0 and totals(raw.slots)[0] > 1.0  # the first step is clipped
    np.testing.assert_allclose(clipped.slots[0].norms, raw.slots[0].norms, rtol=1e-5)
    # Every step: the total the Trainer measured before it clipped (later steps differ from the raw run's,
    # since clipping changed the training).
    np.testing.assert_allclose(totals(clipped.slots), logged_grad_norms(trainer), rtol=1e-5)
    assert sum(total > 1.0 for total in totals(clipped.slots)) >= 2


def test_transformers_logging_window_loss_goes_to_the_logging_step(tmp_path):
    recorder = Recorder()
    hf_train(tmp_path, _hf_callback(tmp_path / "window.mid", sinks=[recorder]), logging_steps=4)
    # Logged every 4 steps: only the logging step carries the (window's mean) loss.
    assert [s.loss is not None for s in recorder.slots] == [False, False, False, True, False, False]


def test_transformers_run_resumed_from_a_checkpoint_continues_its_score(tmp_path):
    first, second = Recorder(), Recorder()
    checkpoints = dict(save_strategy="steps", save_steps=3)
    whole = hf_train(tmp_path, _hf_callback(tmp_path / "run.mid", sinks=[first]), **checkpoints)
    before = pitches_by_step(tmp_path / "run.mid")
    resumed = hf_train(tmp_path, _hf_callback(tmp_path / "run.mid", sinks=[second]),
                       resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"), **checkpoints)
    assert [s.first_step for s in second.slots] == [3, 4, 5]
    # The resumed steps sound what the resumed training did, which is what the whole run did.
    np.testing.assert_allclose(totals(second.slots), logged_grad_norms(resumed, after=3), rtol=1e-5)
    np.testing.assert_allclose([s.norms for s in second.slots], [s.norms for s in first.slots[3:]], rtol=1e-5)
    assert logged_grad_norms(resumed, after=3) == pytest.approx(logged_grad_norms(whole, after=3), rel=1e-5)
    summary = gradmidi.read_score(tmp_path / "run.mid").summary()
    assert summary["steps"] == 6
    assert [text for _, text in summary["markers"]] == ["epoch 1", "resumed at step 3"]  # 6 steps an epoch
    after = pitches_by_step(tmp_path / "run.mid")
    assert [after[step] for step in range(3)] == [before[step] for step in range(3)]
    assert [[int(p) for p in s.pitches] for s in second.slots] == [after[step] for step in range(3, 6)]
    # A fresh run over the score starts a new one.
    hf_train(tmp_path, _hf_callback(tmp_path / "run.mid"), max_steps=2)
    summary = gradmidi.read_score(tmp_path / "run.mid").summary()
    assert summary["steps"] == 2 and [text for _, text in summary["markers"]] == ["epoch 1"]


def test_transformers_tensorboard_and_wandb_get_the_scores_audio_and_plot(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name, value in dict(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(tmp_path),
                            WANDB_DISABLE_GIT="true", WANDB_DISABLE_CODE="true", WANDB_PROJECT="gradmidi-test", WANDB_WATCH="false",
                            TENSORBOARD_LOGGING_DIR=str(tmp_path / "tb")).items():
        monkeypatch.setenv(name, value)  # offline: nothing leaves this machine
    import wandb

    hf_train(tmp_path, _hf_callback(tmp_path / "hf.mid"), max_steps=4, report_to=["tensorboard", "wandb"])
    files = Path(wandb.run.dir) / "media"  # the run's own folder (wandb keeps its settings per process)
    wandb.finish()
    tags, [[clip]], [[image]] = tensorboard_media(tmp_path / "tb")
    assert clip.step == image.step == 4 and clip.sample_rate == 22050 and image.width > 400
    assert len(list((files / "audio" / "gradmidi").glob("audio_*.wav"))) == 1
    assert len(list((files / "images" / "gradmidi").glob("plot_*.png"))) == 1


def _hf_callback(path, **options):
    from gradmidi.integrations.transformers import SonifyCallback

    return SonifyCallback(path, **options)
