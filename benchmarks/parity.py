"""Print logit parity of every architecture: bridge vs an independent Hugging Face model, and
batched vs one-prompt-at-a-time, on a right-padded batch (fp32, CPU).

Usage: .venv/bin/python benchmarks/parity.py [MODEL ...]   (default: every tiny model + the offline models)
"""
from __future__ import annotations

import sys
import time

from lib.settings import apply_hub_policy

apply_hub_policy()  # before transformers is imported
from lib.models.loading import load_model
from lib.models.parity import batch_consistency, greedy_continuation, logit_parity
from lib.models.tiny import TINY_NAMES

TEXTS = ["Thank you so much for staying late to help me move.", "Sorry.",
         "Why on earth would you cancel without telling anyone?", "The meeting moved to room 4B"]


def main(names: list[str]) -> None:
    print(f"{'model':<14} {'architecture':<20} {'load s':>7} {'|bridge-HF| max':>16} {'|batched-single| max':>21}  greedy 'Thank you so much for'")
    for name in names:
        t0 = time.perf_counter()
        lm = load_model(name, device="cpu")
        load = time.perf_counter() - t0
        hf, batch = logit_parity(lm, TEXTS), batch_consistency(lm, TEXTS)
        text = greedy_continuation(lm, "Thank you so much for", 16) if lm.spec.kind != "tiny" else "(random weights)"
        print(f"{name:<14} {lm.architecture:<20} {load:>7.1f} {hf:>16.2e} {batch:>21.2e}  {text!r}")


if __name__ == "__main__":
    main(sys.argv[1:] or [*TINY_NAMES, "smollm2-135m", "gemma3-270m"])
