"""gradmidi with the Hugging Face Trainer: a tiny GPT-2, randomly initialised from a config.

    python examples/transformers_tiny.py [--out gpt2.mid] [--steps 60]

Nothing is downloaded. max_grad_norm=0 so the callback hears the raw norms (the Trainer clips
before its on_pre_optimizer_step hook); logging_steps=1 gives every step its loss.
"""

import argparse
import tempfile

import torch
import transformers

from gradmidi.integrations.transformers import SonifyCallback

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="gpt2.mid")
parser.add_argument("--steps", type=int, default=60)
args = parser.parse_args()

torch.manual_seed(0)
config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128, n_positions=32)
model = transformers.GPT2LMHeadModel(config)
# A learnable toy language: each sequence counts upwards from a random start.
starts = torch.randint(0, 96, (512, 1))
ids = starts + torch.arange(32)
data = [{"input_ids": row, "labels": row} for row in ids]

with tempfile.TemporaryDirectory() as scratch:
    training = transformers.TrainingArguments(
        output_dir=scratch, max_steps=args.steps, per_device_train_batch_size=16, learning_rate=3e-3,
        max_grad_norm=0.0, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    trainer = transformers.Trainer(model=model, args=training, train_dataset=data,
                                   callbacks=[SonifyCallback(args.out, voices=["transformer.wte", "transformer.wpe",
                                                                               "transformer.h.*", "transformer.ln_f"])])
    trainer.train()
print(f"{trainer.state.global_step} optimizer steps sounded into {args.out}")
