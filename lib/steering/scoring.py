"""Scores of each generated continuation: the independent judge, VADER, emotion keywords, the model's own probe
read on its text, and the continuation's likelihood under the unsteered model.

For a table of generations (``lib.steering.grid.generate_grid``'s rows: prompt, text, token_ids) and the prompt
token ids each row was generated from, ``score_generations`` adds, per row:

- ``judge_<label>``: the judge's probability of each of its labels (``lib.steering.judge``); ``judge_label``
  its argmax. An empty continuation (the model stopped at once) has no text to judge: its label is
  ``"neutral"`` with probability 1, so an empty answer never counts as the target emotion;
- ``vader``: VADER's compound score (0 for empty text); ``kw_<emotion>``: lexicon keyword counts;
- ``probe_<label>``: a logistic probe's probability of each label on the residual stream of the *unsteered*
  model at its last token of the continuation read alone (``TextProbe``; NaN for an empty continuation), i.e.
  the model's own reading of what it wrote;
- ``nll``: mean negative log-likelihood per continuation token given the prompt under the unsteered model
  (``lib.steering.metrics.continuation_nll_ids``; an end-of-sequence token counts as a token), ``n_tokens``.

>>> import pandas as pd
>>> from lib.steering.judge import EmotionJudge
>>> j = EmotionJudge().fit(["thanks a lot", "thank you", "you idiot", "so calm"], ["gratitude", "gratitude", "anger",
...                          "neutral"], seed=0)
>>> judge_table(j, ["thank you", ""])["judge_label"].tolist()
['gratitude', 'neutral']
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lib.emotions import BASELINE
from lib.steering.metrics import continuation_nll_ids
from lib.steering.vectors import residual_reads
from lib.text.generated import keyword_counts, vader_compound

__all__ = ["TextProbe", "judge_table", "score_generations"]


class TextProbe:
    """A multinomial logistic probe (standardised features, C = 1) on block ``layer``'s output at a text's last
    token; ``fit(reads [n, d_model], labels [n])``, ``proba(model, tokenizer, texts)`` -> [n texts, labels]."""

    def __init__(self, layer: int, seed: int = 0):
        self.layer, self.seed = int(layer), int(seed)
        self.labels: list[str] = []
        self._model = None

    def fit(self, reads: torch.Tensor, labels) -> "TextProbe":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        labels = [str(x) for x in labels]
        if len(set(labels)) < 2 or len(labels) != len(reads):
            raise ValueError(f"TextProbe.fit: {len(reads)} reads and {len(labels)} labels of "
                             f"{len(set(labels))} classes; give one label per read and at least two classes")
        self._model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000,
                                                                         random_state=self.seed))
        self._model.fit(reads.double().numpy(), labels)
        self.labels = [str(c) for c in self._model.classes_]
        return self

    def proba(self, model, tokenizer, texts) -> pd.DataFrame:
        """[n texts, one column per label]; rows of empty texts are NaN."""
        if self._model is None:
            raise ValueError("this TextProbe is not fitted; call fit(reads, labels) first")
        texts = list(texts)
        out = np.full((len(texts), len(self.labels)), np.nan)
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if keep:
            reads = residual_reads(model, tokenizer, [texts[i] for i in keep], self.layer, read="last")
            out[keep] = self._model.predict_proba(reads.double().numpy())
        return pd.DataFrame(out, columns=self.labels)


def judge_table(judge, texts) -> pd.DataFrame:
    """``judge_<label>`` probabilities and ``judge_label`` per text; empty texts are ``neutral`` with p = 1."""
    texts = list(texts)
    if BASELINE not in judge.labels:
        raise ValueError(f"the judge's labels {judge.labels} lack {BASELINE!r}, which empty continuations take")
    p = judge.predict_proba(texts)
    empty = np.array([not t.strip() for t in texts], dtype=bool)
    p.loc[empty, :] = 0.0
    p.loc[empty, BASELINE] = 1.0
    table = p.add_prefix("judge_")
    table["judge_label"] = [judge.labels[i] for i in p.to_numpy().argmax(axis=1)]
    return table


def score_generations(rows: pd.DataFrame, prompt_ids: list[list[int]], *, model, tokenizer, judge, lexicon,
                      probe: TextProbe | None = None, pad_id: int, batch_size: int = 16) -> pd.DataFrame:
    """``rows`` (``generate_grid`` output, any extra columns kept) with the scores of the module docstring;
    ``prompt_ids[i]`` are the token ids of the prompt of row i, unpadded, as the model saw them."""
    rows = rows.reset_index(drop=True)
    if len(prompt_ids) != len(rows):
        raise ValueError(f"score_generations: {len(rows)} rows but {len(prompt_ids)} prompt id lists")
    texts = rows["text"].astype(str).tolist()
    parts = [rows, judge_table(judge, texts)]
    parts.append(pd.DataFrame({"vader": [float(v) if t.strip() else 0.0
                                         for v, t in zip(vader_compound(texts), texts)]}))
    parts.append(keyword_counts(texts, lexicon).add_prefix("kw_"))
    if probe is not None:
        parts.append(probe.proba(model, tokenizer, texts).add_prefix("probe_"))
    pairs = [(p, list(c)) for p, c in zip(prompt_ids, rows["token_ids"])]
    nll = np.full(len(rows), np.nan)
    scorable = [i for i, (_, c) in enumerate(pairs) if c]
    if scorable:
        nll[scorable] = continuation_nll_ids(model, [pairs[i] for i in scorable], pad_id=pad_id,
                                             batch_size=batch_size)
    parts.append(pd.DataFrame({"nll": nll, "n_tokens": [len(c) for _, c in pairs]}))
    return pd.concat([p.reset_index(drop=True) for p in parts], axis=1)
