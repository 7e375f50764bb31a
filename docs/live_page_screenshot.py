"""Takes docs/live-page.png: a small run served to the live page in Debian's headless Chromium.

    python docs/live_page_screenshot.py docs/live-page.png

A loss spike at step 70 and a NaN at step 95, so the page shows its event flashes.
"""

import shutil
import sys
import time

import torch
import torch.nn as nn
from playwright.sync_api import sync_playwright

import gradmidi

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
son = gradmidi.Sonifier(model, None, serve="127.0.0.1:0", bpm=240, title="MLP, lr 0.05")
with sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path=shutil.which("chromium") or shutil.which("chromium-browser"),
                                 args=["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"])
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(f"http://127.0.0.1:{son.server.port}/")
    page.wait_for_function("() => window.gradmidi?.connected", timeout=30_000)
    for step in range(110):
        opt.zero_grad()
        x = torch.randn(8, 16)
        loss = (model(x) - x[:, :4]).pow(2).mean()
        if step == 70:
            loss = loss * 40
        if step == 95:
            loss = loss * float("nan")
        loss.backward()
        son.step(loss=loss)
        if step != 95:
            opt.step()
        time.sleep(60 / 240 / 4)  # the score's own pace: one slot per step
    time.sleep(0.3)
    page.screenshot(path=sys.argv[1])
    son.close()
    browser.close()
