"""LoRA fine-tuning of a tiny Llama built from a config, heard block by block.

    python examples/lora_finetune.py [--out lora.mid] [--steps 60] [--factors]

PEFT adds LoRA adapters to the attention projections (q_proj, v_proj) of a 6-block Llama
(randomly initialised from a LlamaConfig: nothing is downloaded) and freezes the rest. gradmidi
voices the adapted model as the model itself: one voice per block, named as in the Llama
(``model.layers.3``, not ``base_model.model.model.layers.3.self_attn.q_proj.lora_A.default``),
in the attention family; the frozen base is silent. ``--factors`` hears each block's A and B
factors as two voices. Needs ``pip install transformers peft``.
"""

import argparse
import warnings

import torch
import transformers
from peft import LoraConfig, get_peft_model

import gradmidi

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="lora.mid")
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--factors", action="store_true", help="LoRA's A and B factors as voices of their own")
args = parser.parse_args()

torch.manual_seed(0)
transformers.logging.set_verbosity_error()
config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = get_peft_model(transformers.LlamaForCausalLM(config),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

with gradmidi.Sonifier(model, args.out, adapter_factors=args.factors) as son:
    print(f"{len(son.layers)} adapter layers -> {len(son.voices)} voices:")
    for voice in son.voices:
        print(f"  ch {voice.channel + 1:2d}  {gradmidi.GM_PROGRAMS[voice.program]:24s} {voice.name} "
              f"({voice.kind}: {', '.join(voice.layers)})")
    for _ in range(args.steps):
        # A learnable toy language: each sequence counts upwards from a random start.
        ids = torch.randint(0, 96, (8, 1)) + torch.arange(24)
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        son.step(loss=loss)
        opt.step()
print(f"{son.steps} steps, loss {loss.item():.3f} -> {args.out}")
