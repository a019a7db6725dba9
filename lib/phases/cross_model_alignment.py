"""Phase-04 helpers: which model pairs are compared, the texts they are compared on (one common sample, split
into a selection half and an estimation half by text group), Procrustes maps and emotion subspaces carried
across models, each random-weights control beside its pair, and the report's summary and findings.

Split discipline: the selection half chooses the layer pair (highest CKA) and fits the Procrustes map; the
estimation half gives every number reported: the chosen pair's CKA with its bootstrap interval
(``lib.phases.alignment_cka``), the Procrustes distance under the selection half's map, and the emotion
subspaces of both models (fit on the estimation half; A's carried into B's space by the selection half's map).

>>> model_pairs(["a", "b"], ["random:a", "random:b"])[["pair", "role", "control_pair"]].values.tolist()[0]
['a vs b', 'models', 'random:a vs random:b']
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from lib.activations.layerwise import LayerData, stratified_sample
from lib.emotions import TARGET_EMOTIONS
from lib.geometry.folds import text_groups
from lib.geometry.linalg import centre
from lib.geometry.procrustes import mapped_distance, procrustes_align, procrustes_distance
from lib.geometry.subspaces import emotion_subspace, joint_subspace, principal_angles
from lib.phases.alignment_cka import layer_features
from lib.stats.bootstrap import percentile_interval
from lib.stats.splits import group_halves, split_record

__all__ = ["model_pairs", "common_sample", "alignment_split", "covariance_null_angles", "aligned_geometry",
           "against_control", "correspondence_markdown", "alignment_summary", "alignment_findings"]

ROLES = ("models", "own random weights", "random-weights control")


def model_pairs(models, control_models) -> pd.DataFrame:
    """Pairs compared (model_a, model_b, pair "a vs b", role, control_pair): every two models ("models"), each
    model against its random-weights control ("own random weights"), and for every two models whose controls are
    both present, the two controls ("random-weights control"): the control_pair of the "models" row.
    """
    rows = []
    both = [(a, b) for a, b in itertools.combinations(models, 2)]
    for a, b in both:
        ctrl = f"random:{a} vs random:{b}" if {f"random:{a}", f"random:{b}"} <= set(control_models) else ""
        rows.append((a, b, "models", ctrl))
    rows += [(m, f"random:{m}", "own random weights", "") for m in models if f"random:{m}" in control_models]
    rows += [(f"random:{a}", f"random:{b}", "random-weights control", "") for a, b in both
             if {f"random:{a}", f"random:{b}"} <= set(control_models)]
    out = pd.DataFrame(rows, columns=["model_a", "model_b", "role", "control_pair"])
    out.insert(2, "pair", out["model_a"] + " vs " + out["model_b"])
    return out


def common_sample(data: dict, n_texts: int | None, seed: int = 0) -> dict:
    """{model: LayerData} on the texts every model holds (by row id), all in the first model's order, stratified
    by emotion down to ``n_texts`` (None: all)."""
    for m, ld in data.items():
        if ld.labels["id"].duplicated().any():
            raise ValueError(f"row ids must be unique within each model's stores to pair them; {m} repeats some")
    first = next(iter(data.values()))
    common = set(first.labels["id"])
    for ld in data.values():
        common &= set(ld.labels["id"])
    if not common:
        raise ValueError(f"models {list(data)} share no row ids: were they extracted on the same profiles?")
    ref = first.subset(first.labels["id"].isin(common).to_numpy())
    ids = ref.labels["id"].to_numpy()[stratified_sample(ref.labels, n_texts, seed)]
    return {m: ld.subset(pd.Series(np.arange(len(ld.labels)), index=ld.labels["id"]).loc[ids].to_numpy())
            for m, ld in data.items()}


def alignment_split(labels: pd.DataFrame, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(selection indices, estimation indices, text groups [n], split record) for rows with ``text`` and
    ``emotion``: ``group_halves`` stratified by emotion, near-identical texts (``text_groups``) in one half."""
    groups = text_groups(labels["text"].tolist())
    sel, est = group_halves(labels["emotion"].to_numpy(), groups, seed)
    record = split_record("texts", "two halves of the paired texts, stratified by emotion, near-identical texts "
                          "(text_groups) in one half; selection: layer pair (highest CKA) and Procrustes map; "
                          "estimation: reported CKA with its group bootstrap, Procrustes distance under the "
                          "selection map, emotion subspaces", seed, selection=sel, estimation=est)
    return sel, est, groups, record


def covariance_null_angles(basis, x, n_null: int = 200, seed: int = 0) -> np.ndarray:
    """Mean principal angle (degrees) [n_null] between a fixed subspace ``basis`` [d, k] and random k-dim subspaces
    drawn from the covariance of ``x`` [n, d]: span of Xc^T g, g ~ N(0, I_n) [n, k], i.e. k Gaussian vectors with
    covariance proportional to X's. A null that an anisotropic representation cannot beat by its high-variance
    directions alone (uniformly random subspaces are beaten by any subspace of a few dominant directions).
    (``lib.geometry.subspaces.covariance_subspace_angles`` draws both subspaces; here one side is the fit.)

    >>> x = np.c_[np.random.default_rng(0).standard_normal((200, 1)) * 10, np.zeros((200, 3))] + 1e-3
    >>> float(covariance_null_angles(np.eye(4)[:, :1], x, n_null=5).max()) < 1
    True
    """
    basis = np.asarray(basis, dtype=np.float64)
    xc = centre(np.asarray(x, dtype=np.float64))
    rng = np.random.default_rng(seed)
    return np.array([np.degrees(principal_angles(basis, xc.T @ rng.standard_normal((len(xc), basis.shape[1])))).mean()
                     for _ in range(n_null)])


def aligned_geometry(data: dict, pairs: pd.DataFrame, heldout: pd.DataFrame, halves, *, variant: str, kind: str,
                     k: int = 4, n_null: int = 200, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Procrustes distances and emotion-subspace angles of every pair at its chosen layers (``heldout`` rows of
    ``variant`` and ``kind``), on ``variant`` features.

    The map R is fit on the selection half. Distances: fitted on the selection half (distance_selection, at most
    sqrt(2)), R applied to the estimation half (distance_heldout, at most 2), and refit on the estimation half
    (distance_refit: what fitting and reporting on the same rows gives). Angles: each emotion's subspace and the
    joint one (``emotion_subspace`` / ``joint_subspace``; subspace_kind "between": the offset from neutral, k = 1,
    joint k = 3; "within": the within-class spread, k = ``k``) fit on the estimation half in both models, A's
    carried into B's space by R, principal angles in degrees; beside the mean angle to random subspaces drawn from
    B's estimation-half covariance (``covariance_null_angles``: mean and 5th percentile).
    """
    sel, est = (np.asarray(h) for h in halves)
    dist, angles = [], []
    for p in pairs.itertuples():
        top = heldout[(heldout["pair"] == p.pair) & (heldout["variant"] == variant) & (heldout["kind"] == kind)]
        if top.empty:
            raise ValueError(f"no chosen layers of {variant} {kind} CKA for {p.pair}; heldout has pairs "
                             f"{sorted(set(heldout['pair']))}, variants {sorted(set(heldout['variant']))}")
        la, lb = int(top["layer_a"].iloc[0]), int(top["layer_b"].iloc[0])
        xa = {h: _layer(data[p.model_a], la, rows, variant) for h, rows in (("selection", sel), ("estimation", est))}
        xb = {h: _layer(data[p.model_b], lb, rows, variant) for h, rows in (("selection", sel), ("estimation", est))}
        rot = procrustes_align(xa["selection"], xb["selection"])  # [d_a, d_b]: centred xa @ rot ~ centred xb
        common = {"pair": p.pair, "model_a": p.model_a, "model_b": p.model_b, "variant": variant, "layer_a": la,
                  "layer_b": lb}
        dist.append({**common, "distance_selection": procrustes_distance(xa["selection"], xb["selection"]),
                     "distance_heldout": mapped_distance(xa["estimation"], xb["estimation"], rot),
                     "distance_refit": procrustes_distance(xa["estimation"], xb["estimation"])})
        labels = data[p.model_a].labels.iloc[est].reset_index(drop=True)
        for skind, name, kk in _subspaces(k):
            fit = (lambda x: joint_subspace(x, labels, k=kk, kind=skind).basis) if name == "joint" else (
                lambda x: emotion_subspace(x, labels, emotion=name, k=kk, kind=skind).basis)
            carried, bb = rot.T @ fit(xa["estimation"]), fit(xb["estimation"])
            ang = np.degrees(principal_angles(carried, bb))
            null = covariance_null_angles(carried, xb["estimation"], n_null, seed)
            angles.append({**common, "subspace": name, "subspace_kind": skind, "k": kk,
                           "mean_angle": float(ang.mean()), "min_angle": float(ang.min()),
                           "max_angle": float(ang.max()), "null_mean_angle": float(null.mean()),
                           "null_p05": float(np.quantile(null, 0.05))})
    return pd.DataFrame(dist), pd.DataFrame(angles)


def _subspaces(k: int) -> list[tuple[str, str, int]]:
    """(subspace kind, emotion or "joint", k) fitted: the offsets from neutral ("between": one emotion's offset
    direction, k = 1; the joint span of the offsets, k = number of emotions) and the within-class spread
    ("within", k dims each)."""
    between = [("between", e, 1) for e in TARGET_EMOTIONS] + [("between", "joint", len(TARGET_EMOTIONS))]
    return between + [("within", e, k) for e in (*TARGET_EMOTIONS, "joint")]


def _layer(ld: LayerData, layer: int, rows, variant: str) -> np.ndarray:
    """One layer of ``ld`` on ``rows`` as ``variant`` features."""
    one = LayerData(ld.model, ld.site, ld.reduction, [layer], [ld.layer(layer)], ld.labels)
    return layer_features(one, rows, variant)[0]


def against_control(heldout: pd.DataFrame, pairs: pd.DataFrame, replicates: dict, level: float = 0.95) -> pd.DataFrame:
    """``heldout`` with each pair's control beside it (control_pair, control_cka, control_ci_low/high) and the
    difference pair - control (diff, diff_ci_low/high: percentile interval of the paired replicate differences,
    both pairs resampled alike); NaN where a pair has no control or a kind no interval."""
    out = heldout.merge(pairs[["pair", "role", "control_pair"]], on="pair", how="left")
    key = ["pair", "variant", "kind"]
    ctrl = heldout[key + ["cka_heldout", "ci_low", "ci_high"]].rename(columns={
        "pair": "control_pair", "cka_heldout": "control_cka", "ci_low": "control_ci_low", "ci_high": "control_ci_high"})
    out = out.merge(ctrl, on=["control_pair", "variant", "kind"], how="left")
    out["diff"] = out["cka_heldout"] - out["control_cka"]
    lows, highs = [], []
    for r in out.itertuples():
        a, b = replicates.get((r.pair, r.variant, r.kind)), replicates.get((r.control_pair, r.variant, r.kind))
        lo, hi = percentile_interval(a - b, level) if a is not None and b is not None else (np.nan, np.nan)
        lows.append(lo)
        highs.append(hi)
    out["diff_ci_low"], out["diff_ci_high"] = lows, highs
    return out


def _cell(t: pd.DataFrame, pair: str, variant: str, kind: str) -> pd.Series | None:
    sub = t[(t["pair"] == pair) & (t["variant"] == variant) & (t["kind"] == kind)]
    return None if sub.empty else sub.iloc[0]


def _value(r) -> str:
    ci = "" if pd.isna(r["ci_low"]) else f" [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
    return f"{r['cka_heldout']:.3f}{ci}"


def correspondence_markdown(corr: pd.DataFrame, heldout: pd.DataFrame, pairs: pd.DataFrame, *, variant: str,
                            kind: str) -> str:
    """Markdown bullets, one per pair: which layers correspond raw and after the nuisance correction
    (``correspondence_table`` of the selection half's picks; held-out CKA of the chosen pair)."""
    lines = []
    for p in pairs.itertuples():
        raw, fixed = _cell(corr, p.pair, "raw", kind), _cell(corr, p.pair, variant, kind)
        hr, hf = _cell(heldout, p.pair, "raw", kind), _cell(heldout, p.pair, variant, kind)
        if raw is None or fixed is None or hr is None or hf is None:
            continue
        lines.append(
            f"- **{p.pair}** ({p.role}), {kind} CKA. Raw features: {p.model_b} L{int(raw['modal_layer_b'])} is the "
            f"best match of {raw['modal_share']:.0%} of {p.model_a}'s layers; top pair L{int(hr['layer_a'])} ~ "
            f"L{int(hr['layer_b'])}, held out {_value(hr)}. {variant}: L{int(fixed['modal_layer_b'])} matches "
            f"{fixed['modal_share']:.0%}; top pair L{int(hf['layer_a'])} ~ L{int(hf['layer_b'])}, held out "
            f"{_value(hf)}; {fixed['replicated']:.0%} of the per-layer picks repeat on the estimation half.")
    return "\n".join(lines)


def _headline_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """The "models" pairs, or every pair when there are none (one model against its random-weights copy)."""
    return pairs[pairs["role"] == "models"] if (pairs["role"] == "models").any() else pairs


def alignment_summary(heldout: pd.DataFrame, pairs: pd.DataFrame, *, variant: str, kind: str) -> str:
    """The phase's one-line summary: each "models" pair's chosen layers and held-out CKA (``variant``, ``kind``)
    with its interval, beside its random-weights control when there is one (every pair if none is "models").

    >>> h = pd.DataFrame({"pair": ["a vs b", "random:a vs random:b"], "variant": "v", "kind": "linear",
    ...                   "layer_a": [1, 0], "layer_b": [3, 0], "cka_heldout": [0.5, 0.2], "ci_low": [0.4, 0.1],
    ...                   "ci_high": [0.6, 0.3]})
    >>> alignment_summary(h, model_pairs(["a", "b"], ["random:a", "random:b"]), variant="v", kind="linear")
    'a L1 ~ b L3: held-out v linear CKA 0.500 [0.400, 0.600] (random-weights pair 0.200 [0.100, 0.300])'
    """
    lines = []
    for p in _headline_pairs(pairs).itertuples():
        r = _cell(heldout, p.pair, variant, kind)
        if r is None:
            continue
        c = _cell(heldout, p.control_pair, variant, kind) if p.control_pair else None
        lines.append(f"{p.model_a} L{int(r['layer_a'])} ~ {p.model_b} L{int(r['layer_b'])}: held-out {variant} {kind} "
                     f"CKA {_value(r)}" + (f" (random-weights pair {_value(c)})" if c is not None else ""))
    return "; ".join(lines)


def alignment_findings(heldout: pd.DataFrame, angles: pd.DataFrame, pairs: pd.DataFrame, *, variant: str, kind: str,
                       cka_figure: str, angles_figure: str) -> list[dict]:
    """Findings for the index page: per "models" pair (every pair if none), the held-out CKA of the chosen layers
    after the nuisance correction beside the random-weights pair; and the held-out angle after Procrustes of the span of the emotions'
    offsets from neutral, beside the covariance null and the random-weights pair."""
    out = []
    for p in _headline_pairs(pairs).itertuples():
        r, raw = _cell(heldout, p.pair, variant, kind), _cell(heldout, p.pair, "raw", kind)
        if r is None:
            continue
        c = _cell(heldout, p.control_pair, variant, kind) if p.control_pair else None
        finding = (f"{p.model_a} L{int(r['layer_a'])} ~ {p.model_b} L{int(r['layer_b'])} (chosen on the selection "
                   f"half, {variant} features): held-out {kind} CKA {_value(r)}"
                   + (f"; raw features choose L{int(raw['layer_a'])} ~ L{int(raw['layer_b'])} ({_value(raw)})"
                      if raw is not None else ""))
        control = ("no random-weights pair of both models was run" if c is None else
                   f"random-weights pair ({p.control_pair}), same procedure: {_value(c)}")
        out.append({"question": "Which layers correspond across models?", "finding": finding, "control": control,
                    "figure": cka_figure})
        joint = (angles["subspace"] == "joint") & (angles["subspace_kind"] == "between")
        ang = angles[joint & (angles["pair"] == p.pair)]
        if ang.empty:
            continue
        a = ang.iloc[0]
        ca = angles[joint & (angles["pair"] == p.control_pair)]
        out.append({"question": "Do emotion subspaces align after Procrustes?",
                    "finding": f"{p.pair}: span of the emotion offsets from neutral (k = {int(a['k'])}), fit on "
                               f"held-out texts, carried by the selection half's map: mean principal angle "
                               f"{a['mean_angle']:.1f} deg",
                    "control": f"random subspaces of {p.model_b}'s covariance: {a['null_mean_angle']:.1f} deg (5th "
                               f"percentile {a['null_p05']:.1f})" + (
                                   f"; random-weights pair {ca.iloc[0]['mean_angle']:.1f} deg" if len(ca) else ""),
                    "figure": angles_figure})
    return out
