"""Fine-tuning a model on the emotion-label objective, scoring that objective, and the probe reference.

``objective``: prompts, answers, the training loss and the scored objective; ``config``: the settings and
LoRA's default target modules; ``train``: the seeded, resumable fine-tune (LoRA through peft, or full);
``checkpoints``: its safetensors checkpoints; ``reference``: a probe on the base model's residual stream.

>>> from lib.finetune import FinetuneConfig, PROMPT_TEMPLATE
>>> PROMPT_TEMPLATE.format(text="Thanks!")
'Text: Thanks!\\nEmotion:'
"""
from lib.finetune.config import DEFAULT_TARGETS, FinetuneConfig, FinetuneError
from lib.finetune.objective import (PROMPT_TEMPLATE, Examples, ObjectiveError, answer_loss, batch_tensors,
                                    encode_examples, label_tokens, logits_at, prompt_tensors, score,
                                    summarize_scores)
from lib.finetune.train import FinetuneResult, finetune

__all__ = ["DEFAULT_TARGETS", "FinetuneConfig", "FinetuneError", "PROMPT_TEMPLATE", "Examples", "ObjectiveError",
           "answer_loss", "batch_tensors", "encode_examples", "label_tokens", "logits_at", "prompt_tensors",
           "score", "summarize_scores", "FinetuneResult", "finetune"]
