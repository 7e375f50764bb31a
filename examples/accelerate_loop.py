"""A plain Hugging Face Accelerate loop: gradient accumulation and clipping, one slot per optimizer step.

    python examples/accelerate_loop.py [--out accelerate.mid] [--accumulate 2]
    torchrun --nproc-per-node 2 examples/accelerate_loop.py     # or: accelerate launch --num_processes 2 ...

``accelerator.sync_gradients`` is True on the micro-batch that completes an optimizer step:
that is where the step's whole gradient exists, so that is where ``son.step()`` goes, before
``accelerator.clip_grad_norm_`` (the raw norms, which clipping acts on). The other micro-batches
are not sounded: their gradients are partial sums.
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator

import gradmidi

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="accelerate.mid")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--accumulate", type=int, default=2)
parser.add_argument("--max-norm", type=float, default=0.1)
args = parser.parse_args()

accelerator = Accelerator(cpu=True, gradient_accumulation_steps=args.accumulate)
torch.manual_seed(0)
x = torch.randn(512, 20)
y = (x[:, :5].sum(dim=1) > 0).long() + (x[:, 5:10].sum(dim=1) > 0).long()  # 3 classes
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.3)
optimizer_steps = 0


def count_step(*_):
    global optimizer_steps
    optimizer_steps += 1


opt.register_step_post_hook(count_step)  # the steps the optimizer really takes (Accelerate skips the others)
model, opt, loader = accelerator.prepare(model, opt, loader)

# Made after prepare(): under several processes Accelerate has started torch.distributed by then.
with gradmidi.Sonifier(model, args.out) as son:  # only the main process writes
    for _ in range(args.epochs):
        son.epoch()
        step_loss = torch.zeros(())
        for inputs, labels in loader:
            with accelerator.accumulate(model):
                loss = F.cross_entropy(model(inputs), labels)
                accelerator.backward(loss)
                step_loss += loss.detach() / args.accumulate  # the step's loss: the mean over its micro-batches
                if accelerator.sync_gradients:
                    son.step(loss=step_loss)
                    accelerator.clip_grad_norm_(model.parameters(), args.max_norm)
                    step_loss = torch.zeros(())
                opt.step()
                opt.zero_grad()

if accelerator.is_main_process:
    print(f"{son.steps} steps sounded, {optimizer_steps} optimizer steps, "
          f"{len(loader) * args.epochs} micro-batches on this process")
# The prepared model (DDP) holds the process group: let it go before destroying the group, or the group
# is torn down at interpreter exit, too late for gloo's threads (an abort at exit, now and then).
model, opt, loader = accelerator.free_memory(model, opt, loader)
accelerator.end_training()
