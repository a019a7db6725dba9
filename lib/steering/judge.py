"""An independent judge of the emotion of generated text: TF-IDF + multinomial logistic regression on GoEmotions.

The judge is not the model's own probe: it reads only text. Features are TF-IDF weights of lower-cased word
1- and 2-grams (sublinear tf); the classifier is scikit-learn's multinomial ``LogisticRegression`` (lbfgs,
C = 4, balanced class weights), seeded. ``judge_from_goemotions`` fits it on the single-label GoEmotions
*train* comments of the given emotions (``load_goemotions`` keeps single-label rows only); ``judge_accuracy``
scores it on GoEmotions *dev*, which it never saw. A judge is cheap to refit and is never pickled.

Shapes: ``predict_proba(texts)`` is a DataFrame [n texts, one column per label] whose rows sum to 1;
``share(texts, emotion)`` is the fraction of texts whose argmax label is ``emotion``.

>>> j = EmotionJudge().fit(["thank you so much", "thanks a lot", "you idiot", "I hate this"],
...                         ["gratitude", "gratitude", "anger", "anger"], seed=0)
>>> j.share(["thank you", "I hate you idiot"], "gratitude")
0.5
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib.stats.intervals import wilson_interval
from lib.text.datasets import load_goemotions

__all__ = ["EmotionJudge", "judge_from_goemotions", "judge_accuracy"]


def _check_texts(texts, name: str = "texts") -> list[str]:
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}] is {type(t).__name__} {t!r}; the judge needs a list of strings")
    return texts


class EmotionJudge:
    """TF-IDF (word 1-2 grams) + multinomial logistic regression; ``fit`` before ``predict_proba``/``share``."""

    def __init__(self, *, C: float = 4.0, min_df: int = 1, max_iter: int = 1000):
        self.C, self.min_df, self.max_iter = float(C), int(min_df), int(max_iter)
        self.labels: list[str] = []
        self._vectorizer = None
        self._model = None

    def fit(self, texts, labels, seed: int = 0) -> "EmotionJudge":
        """Fit on ``texts`` [n] and their ``labels`` [n] (at least two distinct labels); returns self."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        texts, labels = _check_texts(texts), [str(x) for x in labels]
        if len(texts) != len(labels):
            raise ValueError(f"texts has {len(texts)} items but labels has {len(labels)}; they must match")
        if len(set(labels)) < 2:
            raise ValueError(f"labels hold {sorted(set(labels))}; the judge needs at least two distinct labels")
        self._vectorizer = TfidfVectorizer(ngram_range=(1, 2), lowercase=True, sublinear_tf=True,
                                           min_df=self.min_df)
        x = self._vectorizer.fit_transform(texts)
        self._model = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight="balanced",
                                         random_state=int(seed))
        self._model.fit(x, labels)
        self.labels = [str(c) for c in self._model.classes_]
        return self

    def _check_fitted(self) -> None:
        if self._model is None:
            raise ValueError("this EmotionJudge is not fitted; call fit(texts, labels, seed) or judge_from_goemotions")

    def predict_proba(self, texts) -> pd.DataFrame:
        """Class probabilities [n texts, one column per label (``self.labels``)], rows summing to 1."""
        self._check_fitted()
        texts = _check_texts(texts)
        if not texts:
            return pd.DataFrame(np.zeros((0, len(self.labels))), columns=self.labels)
        p = self._model.predict_proba(self._vectorizer.transform(texts))
        return pd.DataFrame(p, columns=self.labels)

    def predict(self, texts) -> list[str]:
        """The argmax label of each text [n]."""
        p = self.predict_proba(texts)
        return [self.labels[i] for i in p.to_numpy().argmax(axis=1)]

    def share(self, texts, emotion: str) -> float:
        """Fraction of ``texts`` whose argmax label is ``emotion`` (nan for no texts)."""
        self._check_fitted()
        if emotion not in self.labels:
            raise ValueError(f"unknown emotion {emotion!r}; this judge knows {self.labels}")
        pred = self.predict(texts)
        return float(np.mean([p == emotion for p in pred])) if pred else float("nan")


def _rows(split: str, emotions, max_per_label: int | None, seed: int) -> pd.DataFrame:
    emotions = list(emotions)
    df = load_goemotions(split)
    known = sorted(df["emotion"].unique())
    bad = [e for e in emotions if e not in known]
    if bad or len(set(emotions)) < 2:
        raise ValueError(f"emotions={emotions!r}; give at least two distinct labels among {known}")
    df = df[df["emotion"].isin(emotions)]
    if max_per_label is not None:
        if int(max_per_label) < 1:
            raise ValueError(f"max_per_label={max_per_label!r}; valid values are None or integers >= 1")
        df = pd.concat([g.sample(n=min(len(g), int(max_per_label)), random_state=seed)
                        for _, g in df.groupby("emotion", sort=True)])
    return df.reset_index(drop=True)


def judge_from_goemotions(emotions, *, max_per_label: int | None = None, seed: int = 0) -> EmotionJudge:
    """A judge fitted on single-label GoEmotions *train* comments of ``emotions`` (include "neutral" for a
    baseline), at most ``max_per_label`` per label (a seeded sample) when given."""
    df = _rows("train", emotions, max_per_label, seed)
    return EmotionJudge().fit(df["text"].tolist(), df["emotion"].tolist(), seed=seed)


def judge_accuracy(judge: EmotionJudge, emotions=None, *, max_per_label: int | None = None, seed: int = 0) -> dict:
    """The judge on GoEmotions *dev* rows of ``emotions`` (default: its labels):
    {accuracy, balanced_accuracy (mean recall; chance = 1 / len(emotions)), ci_low, ci_high (Wilson 95% of
    accuracy), n, recall: {label: recall}, n_per_label: {label: n}}. Dev is dominated by neutral, so plain accuracy
    must be read against the majority share, balanced accuracy against 1 / len(emotions)."""
    judge._check_fitted()
    emotions = list(judge.labels if emotions is None else emotions)
    bad = [e for e in emotions if e not in judge.labels]
    if bad:
        raise ValueError(f"emotions {bad} are not labels of this judge; it knows {judge.labels}")
    df = _rows("dev", emotions, max_per_label, seed)
    truth = df["emotion"].to_numpy()
    pred = np.asarray(judge.predict(df["text"].tolist()))
    k, n = int((pred == truth).sum()), int(len(truth))
    low, high = wilson_interval(k, n)
    recall = {e: float((pred[truth == e] == e).mean()) if (truth == e).any() else float("nan") for e in emotions}
    balanced = float(np.nanmean(list(recall.values()))) if n else float("nan")
    return {"accuracy": k / n if n else float("nan"), "balanced_accuracy": balanced, "ci_low": low, "ci_high": high,
            "n": n, "recall": recall,
            "n_per_label": {e: int((truth == e).sum()) for e in emotions}}
