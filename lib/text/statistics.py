"""Descriptive statistics of texts: lengths, punctuation, distinctive words, surface-feature baselines."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

__all__ = ["surface_features", "distinctive_words", "surface_baseline"]

_WORD = re.compile(r"[a-z']+")


def surface_features(texts: pd.Series) -> pd.DataFrame:
    """Per text: words, characters, final character class, and counts of , ! ? and sentences."""
    t = texts.astype(str)
    last = t.str.rstrip().str[-1]
    return pd.DataFrame({
        "words": t.str.split().str.len(),
        "chars": t.str.len(),
        "final": np.select([last == ".", last == "!", last == "?"], [".", "!", "?"], "none"),
        "commas": t.str.count(","),
        "exclamations": t.str.count("!"),
        "questions": t.str.count(r"\?"),
        "sentences": t.str.count(r"[.!?](\s|$)").clip(lower=1),
    }, index=texts.index)


def distinctive_words(texts: pd.Series, labels: pd.Series, *, top: int = 15, min_count: int = 3) -> pd.DataFrame:
    """Words most typical of each label by the weighted log-odds ratio with an informative
    Dirichlet prior (Monroe, Colaresi and Quinn 2008), one label against all others.

    Returns columns label, word, z (the z-scored log-odds), count; ``top`` rows per label.
    """
    tokens = [ _WORD.findall(t.lower()) for t in texts.astype(str)]
    per_label: dict[str, Counter] = {}
    for toks, lab in zip(tokens, labels):
        per_label.setdefault(lab, Counter()).update(toks)
    prior = Counter()
    for c in per_label.values():
        prior.update(c)
    vocab = [w for w, n in prior.items() if n >= min_count]
    a0 = sum(prior[w] for w in vocab)
    alpha = np.array([prior[w] for w in vocab], dtype=float)
    rows = []
    for lab, counts in per_label.items():
        y_i = np.array([counts[w] for w in vocab], dtype=float)
        y_j = alpha - y_i
        n_i, n_j = y_i.sum(), y_j.sum()
        delta = (np.log((y_i + alpha) / (n_i + a0 - y_i - alpha))
                 - np.log((y_j + alpha) / (n_j + a0 - y_j - alpha)))
        var = 1 / (y_i + alpha) + 1 / (y_j + alpha)
        z = delta / np.sqrt(var)
        for k in np.argsort(-z)[:top]:
            rows.append({"label": lab, "word": vocab[k], "z": float(z[k]), "count": int(y_i[k])})
    return pd.DataFrame(rows)


def surface_baseline(texts: pd.Series, labels: pd.Series, *, seed: int = 0, folds: int = 5) -> dict:
    """Cross-validated accuracy of a classifier that sees only length and punctuation.

    A high score would mean the classes are separable without reading the words. Returns the
    4-way accuracy, its chance level (majority class), and the neutral-vs-rest ROC AUC.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats = surface_features(texts)
    x = pd.get_dummies(feats, columns=["final"], dtype=float).to_numpy()
    y = labels.to_numpy()
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    proba = cross_val_predict(clf, x, y, cv=cv, method="predict_proba")
    classes = np.unique(y)
    pred = classes[proba.argmax(1)]
    is_neutral = (y == "neutral").astype(int)
    auc = roc_auc_score(is_neutral, proba[:, list(classes).index("neutral")]) if "neutral" in classes else float("nan")
    return {"accuracy": float((pred == y).mean()),
            "chance": float(pd.Series(y).value_counts(normalize=True).max()),
            "neutral_auc": float(auc)}
