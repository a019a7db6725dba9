"""The real-text answer of phase 03: how well each model's activations decode the four emotions of
GoEmotions dev comments, against a bag-of-words baseline and the same architecture with random weights.

Everything that is chosen (the site, reading and layer of a probe; the regularisation of the bag-of-words
model) is chosen by grouped cross-validation on the train rows only; the dev rows are touched once, to
score the chosen models. Intervals resample dev text groups (``lib.stats.bootstrap.group_bootstrap``);
the gap between two readers of the same dev rows is a paired bootstrap of the same resamples.

>>> per_class_f1(np.array(["a", "a", "b", "b"]), np.array(["a", "b", "b", "b"]), ["a", "b"]).round(3).tolist()
[0.667, 0.8]
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from lib.emotions import EMOTIONS
from lib.activations.layerwise import LayerData
from lib.geometry.folds import text_groups
from lib.geometry.probes import fit_probe, probe_cv
from lib.stats.bootstrap import group_bootstrap, group_codes, percentile_interval
from lib.stats.splits import grouped_folds, split_record

__all__ = ["per_class_f1", "choose_probe", "tfidf_model", "choose_tfidf", "score_on_dev", "paired_gap",
           "real_text_answer", "real_text_inputs", "real_text_findings", "TFIDF_C"]

TFIDF_C = (0.3, 1.0, 3.0, 10.0)  # inverse regularisation strengths tried by cross-validation on train


def per_class_f1(y_true, y_pred, classes) -> np.ndarray:
    """F1 [classes] of each class (0 where a class is neither true nor predicted), from the label arrays."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out = []
    for c in classes:
        tp = float(((y_true == c) & (y_pred == c)).sum())
        denom = float((y_true == c).sum() + (y_pred == c).sum())
        out.append(2 * tp / denom if denom else 0.0)
    return np.array(out)


def _weighted_f1(y_true, preds: dict, classes, weights: np.ndarray) -> dict:
    """Per reader: F1 [b, classes] under row weights [b, n] (a group-bootstrap replicate per row of weights)."""
    out = {}
    for name, pred in preds.items():
        f1s = []
        for c in classes:
            t, p = (y_true == c).astype(float), (pred == c).astype(float)
            tp, denom = weights @ (t * p), weights @ t + weights @ p
            f1s.append(np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0))
        out[name] = np.stack(f1s, axis=1)
    return out


def choose_probe(train: dict, *, n_splits: int = 3, seed: int = 0, n_jobs: int = 2) -> pd.DataFrame:
    """Cross-validated macro-F1 on the train rows of every (site, reading, layer) in ``train``
    {(site, reading): LayerData}; folds keep text groups whole and are shared by every candidate.
    Columns: site, reading, layer, macro_f1, accuracy; the best is the first row (ties: earliest listed)."""
    first = next(iter(train.values()))
    y = first.labels["emotion"].to_numpy()
    folds = grouped_folds(y, text_groups(first.labels["text"].tolist()), n_splits, seed)
    rows = []
    for (site, reading), ld in train.items():
        if not ld.labels["id"].equals(first.labels["id"]):
            raise ValueError(f"train rows of {site} {reading} differ from those of the first candidate")
        for layer, x in zip(ld.layers, ld.xs):
            r = probe_cv(x, y, None, folds=folds, n_boot=0, seed=seed, n_jobs=n_jobs)
            rows.append({"site": site, "reading": reading, "layer": layer, "macro_f1": r.macro_f1,
                         "accuracy": r.accuracy})
    table = pd.DataFrame(rows)
    return table.iloc[np.argsort(-table["macro_f1"].to_numpy(), kind="stable")].reset_index(drop=True)


def tfidf_model(C: float = 1.0, seed: int = 0) -> Pipeline:
    """Word unigrams and bigrams (sublinear tf-idf, min_df 2) into a multinomial logistic regression."""
    return Pipeline([("tfidf", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, lowercase=True)),
                     ("logreg", LogisticRegression(C=C, max_iter=2000, random_state=seed))])


def choose_tfidf(texts, y, *, n_splits: int = 3, seed: int = 0, Cs=TFIDF_C) -> tuple[float, pd.DataFrame]:
    """The C of ``Cs`` with the best grouped cross-validated macro-F1 on the train rows: (C, table)."""
    texts, y = np.asarray(texts, dtype=object), np.asarray(y)
    folds = grouped_folds(y, text_groups(texts.tolist()), n_splits, seed)
    classes = [c for c in EMOTIONS if c in set(y.tolist())]
    rows = []
    with threadpool_limits(limits=1):
        for C in Cs:
            pred = np.empty(len(y), dtype=y.dtype)
            for tr, te in folds:
                pred[te] = tfidf_model(C, seed).fit(texts[tr], y[tr]).predict(texts[te])
            rows.append({"C": C, "macro_f1": float(per_class_f1(y, pred, classes).mean())})
    table = pd.DataFrame(rows)
    return float(table.loc[table["macro_f1"].idxmax(), "C"]), table


def score_on_dev(y_dev, preds: dict, groups, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per reader (``preds`` {name: dev predictions}) and class, and for the macro average: F1 with a 95%
    group-bootstrap interval over dev text ``groups``. Columns: reader, class, f1, f1_lo, f1_hi, support."""
    y = np.asarray(y_dev)
    classes = [c for c in EMOTIONS if c in set(y.tolist())]
    preds = {k: np.asarray(v) for k, v in preds.items()}
    reps = group_bootstrap(lambda w: np.concatenate(list(_weighted_f1(y, preds, classes, w).values()), axis=1),
                           group_codes(groups, len(y)), n_boot=n_boot, seed=seed, block=200)
    k = len(classes)
    rows = []
    for i, (name, pred) in enumerate(preds.items()):
        f1 = per_class_f1(y, pred, classes)
        block = reps[:, i * k:(i + 1) * k]
        lo, hi = percentile_interval(block)
        mlo, mhi = percentile_interval(block.mean(1))
        rows += [{"reader": name, "class": c, "f1": f1[j], "f1_lo": lo[j], "f1_hi": hi[j],
                  "support": int((y == c).sum())} for j, c in enumerate(classes)]
        rows.append({"reader": name, "class": "macro", "f1": float(f1.mean()), "f1_lo": float(mlo),
                     "f1_hi": float(mhi), "support": int(len(y))})
    return pd.DataFrame(rows)


def paired_gap(y_dev, pred_a, pred_b, groups, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Macro-F1 of reader a minus reader b on the same dev rows, with a paired group-bootstrap 95% interval
    (both scored on each resample): {gap, lo, hi}."""
    y = np.asarray(y_dev)
    classes = [c for c in EMOTIONS if c in set(y.tolist())]
    preds = {"a": np.asarray(pred_a), "b": np.asarray(pred_b)}
    reps = group_bootstrap(lambda w: (lambda f: f["a"].mean(1) - f["b"].mean(1))(_weighted_f1(y, preds, classes, w)),
                           group_codes(groups, len(y)), n_boot=n_boot, seed=seed, block=200)
    lo, hi = percentile_interval(reps)
    gap = per_class_f1(y, preds["a"], classes).mean() - per_class_f1(y, preds["b"], classes).mean()
    return {"gap": float(gap), "lo": float(lo), "hi": float(hi)}


def _in_order(ld: LayerData, ids: np.ndarray, what: str) -> LayerData:
    """``ld`` with its rows in the order of ``ids`` (stores sort rows by token count, which differs between
    tokenizers); an error if it lacks any of them or has others."""
    have = ld.labels["id"].to_numpy()
    if len(have) != len(ids) or set(have.tolist()) != set(ids.tolist()):
        raise ValueError(f"{what} holds {len(have)} rows, not the {len(ids)} rows of the first reader; every reader "
                         f"needs the same rows (extract the controls with the models' per-emotion cap)")
    pos = pd.Series(np.arange(len(have)), index=have)
    return ld.subset(pos.loc[ids].to_numpy())


def real_text_answer(train: dict, dev: dict, *, n_splits: int = 3, n_boot: int = 2000, seed: int = 0) -> dict:
    """The whole comparison. ``train`` and ``dev``: {reader name: {(site, reading): LayerData}} for each model
    (and random-weights control) on GoEmotions train and dev, the same rows for every reader (in any order:
    they are put in the first reader's order by row id).

    Returns {"choices": per reader the cross-validation table (best first), "scores": ``score_on_dev`` of every
    reader plus "tf-idf", "gaps": each reader minus tf-idf, "split": the split record, "tfidf_cv": C table}.
    """
    first_train = next(iter(next(iter(train.values())).values()))
    first_dev = next(iter(next(iter(dev.values())).values()))
    ids_train, ids_dev = first_train.labels["id"].to_numpy(), first_dev.labels["id"].to_numpy()
    train = {r: {k: _in_order(ld, ids_train, f"{r} {k[0]} {k[1]} (train)") for k, ld in c.items()}
             for r, c in train.items()}
    dev = {r: {k: _in_order(ld, ids_dev, f"{r} {k[0]} {k[1]} (dev)") for k, ld in c.items()} for r, c in dev.items()}
    y_train, y_dev = first_train.labels["emotion"].to_numpy(), first_dev.labels["emotion"].to_numpy()
    dev_groups = text_groups(first_dev.labels["text"].tolist())
    choices, preds = {}, {}
    for name, cands in train.items():
        table = choose_probe(cands, n_splits=n_splits, seed=seed)
        best = table.iloc[0]
        site, reading, layer = best["site"], best["reading"], int(best["layer"])
        tr_ld: LayerData = cands[site, reading]
        dv_ld: LayerData = dev[name][site, reading]
        probe = fit_probe(tr_ld.layer(layer), y_train, seed=seed)
        preds[name] = probe.predict(dv_ld.layer(layer))
        choices[name] = table.assign(reader=name)
    C, tfidf_cv = choose_tfidf(first_train.labels["text"].tolist(), y_train, n_splits=n_splits, seed=seed)
    with threadpool_limits(limits=1):
        preds["tf-idf"] = tfidf_model(C, seed).fit(np.asarray(first_train.labels["text"], dtype=object),
                                                  y_train).predict(np.asarray(first_dev.labels["text"], dtype=object))
    scores = score_on_dev(y_dev, preds, dev_groups, n_boot=n_boot, seed=seed)
    gaps = pd.DataFrame([{"reader": name, "minus": "tf-idf", **paired_gap(y_dev, preds[name], preds["tf-idf"],
                                                                          dev_groups, n_boot=n_boot, seed=seed)}
                         for name in train])
    split = split_record("goemotions", "choose on grouped folds of GoEmotions train; score once on GoEmotions dev",
                         seed, train=np.arange(len(y_train)), dev=np.arange(len(y_dev)))
    return {"choices": pd.concat(choices.values(), ignore_index=True), "scores": scores, "gaps": gaps,
            "split": split, "tfidf_cv": tfidf_cv.assign(chosen=lambda t: t["C"] == C)}


def real_text_inputs(stores, readers, profile: str, *, site: str = "hook_resid_post",
                     readings=("sentence_end", "mean")) -> dict:
    """{reader: {(site, reading): LayerData}} of every reader's store of ``profile`` (``stores[reader, profile]``),
    for ``real_text_answer``."""
    from lib.activations.layerwise import load_layers

    return {r: {(site, rd): load_layers([stores[r, profile]], r, site, rd) for rd in readings} for r in readers}


def real_text_findings(answer: dict, models, controls, figure: str) -> list[dict]:
    """One index finding per model: its dev macro-F1 with interval and chosen reading, beside the bag-of-words
    baseline and its random-weights control (``controls[i]`` pairs ``models[i]``)."""
    macro = answer["scores"][answer["scores"]["class"] == "macro"].set_index("reader")
    best = answer["choices"].groupby("reader").head(1).set_index("reader")
    gaps = answer["gaps"].set_index("reader")
    fmt = lambda r: f"{macro.loc[r, 'f1']:.3f} [{macro.loc[r, 'f1_lo']:.3f}, {macro.loc[r, 'f1_hi']:.3f}]"  # noqa: E731
    out = []
    for m, c in zip(models, controls):
        b = best.loc[m]
        out.append({"question": f"{m}: how well are the emotions decoded in real Reddit comments (GoEmotions dev)?",
                    "finding": f"macro-F1 {fmt(m)} ({b['reading']} reading, layer {int(b['layer'])}, chosen on "
                               f"train folds); minus TF-IDF {gaps.loc[m, 'gap']:+.3f} "
                               f"[{gaps.loc[m, 'lo']:+.3f}, {gaps.loc[m, 'hi']:+.3f}]",
                    "control": f"TF-IDF + logistic regression {fmt('tf-idf')}; random weights {fmt(c)}",
                    "figure": figure})
    return out
