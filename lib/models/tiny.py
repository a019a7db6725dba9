"""Tiny randomly initialised models of each supported architecture, built offline for tests.

Each tiny model has 2 layers, d_model 64 and 4 query heads, a seeded random initialisation and
a small byte-level BPE tokenizer trained on a fixed built-in corpus, so nothing is downloaded.

>>> sorted(TINY_NAMES)
['tiny-gemma3', 'tiny-gpt-neo', 'tiny-gpt2', 'tiny-llama', 'tiny-pythia']
"""
from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

__all__ = ["TINY_NAMES", "build_tiny_tokenizer", "build_tiny_model"]

_CORPUS = """\
Thank you so much for your help with the move, I really appreciate it.
I am furious that the train was cancelled again without any notice!
I'm sorry I missed your call, it was my fault and I should have checked.
The meeting has been moved to Thursday at ten in room four.
Thanks a lot, that means the world to me. You saved my whole week.
This is ridiculous, I have waited two hours and nobody has answered.
Please accept my apologies for the delay; we will refund the fee.
The library closes at six on weekdays and at noon on Saturdays.
Could you send me the report before lunch? The printer is on the second floor.
We are grateful for your patience. How can I ever repay you?
Why does this keep happening? Fix it now or I will cancel my account.
My bad, I forgot to bring the charger. Forgive me, please.
0123456789 , . ! ? ' " ; : - ( ) the a an and or of to in on at for with by from
"""
_SPECIAL = ["<|endoftext|>", "<pad>"]


@lru_cache(maxsize=1)
def _tokenizer_dir() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<pad>")
    # TransformerLens re-loads the tokenizer by name_or_path, so it must live in a folder.
    folder = Path(tempfile.mkdtemp(prefix="tiny-tokenizer-"))
    fast.save_pretrained(folder)
    return str(folder)


def build_tiny_tokenizer():
    """Byte-level BPE tokenizer (vocabulary 512) trained on a fixed corpus; deterministic."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_tokenizer_dir())


def _configs():
    from transformers import (Gemma3TextConfig, GPT2Config, GPTNeoConfig, GPTNeoXConfig,
                              LlamaConfig)

    common = dict(vocab_size=512, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    return {
        "tiny-gpt2": GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=512,
                                initializer_range=0.1, **common),
        "tiny-pythia": GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=256, rotary_pct=0.25,
                                     max_position_embeddings=512, use_parallel_residual=True,
                                     initializer_range=0.1, **common),
        "tiny-gpt-neo": GPTNeoConfig(hidden_size=64, num_layers=2, num_heads=4,
                                     attention_types=[[["global", "local"], 1]], window_size=8,
                                     max_position_embeddings=512, initializer_range=0.1, **common),
        "tiny-llama": LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, initializer_range=0.1, **common),
        "tiny-gemma3": Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                        sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                                        max_position_embeddings=512, initializer_range=0.1, **common),
    }


_ARCH = {"tiny-gpt2": "GPT2LMHeadModel", "tiny-pythia": "GPTNeoXForCausalLM",
         "tiny-gpt-neo": "GPTNeoForCausalLM", "tiny-llama": "LlamaForCausalLM",
         "tiny-gemma3": "Gemma3ForCausalLM"}
TINY_NAMES: tuple[str, ...] = tuple(_ARCH)


def build_tiny_model(name: str, seed: int = 0, dtype=None):
    """A freshly initialised HF causal LM of tiny architecture ``name`` (eager attention, eval mode).

    The same ``(name, seed)`` always gives the same weights.
    """
    import torch
    import transformers

    if name not in TINY_NAMES:
        raise ValueError(f"unknown tiny model {name!r}; known: {sorted(TINY_NAMES)}")
    config = _configs()[name]
    config.architectures = [_ARCH[name]]
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, _ARCH[name])(config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
