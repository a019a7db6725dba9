"""``ActivationExtractor``: per-head output strength R_h = E[||y_h||] of a Hugging Face causal LM, in one forward
pass per batch, with ONE forward pre-hook per layer on the attention output projection (whose input is the
concatenated head outputs z, TransformerLens' ``attn.hook_z``).

y_h = z_h W_O^h (raw weights, no folding; GQA: the query heads), and ||y_h|| comes from z through the head's Gram
matrix (``lib.head_strength.compute``). Padding is masked: per sample (row), the mean over its real tokens of
||y_h||, ||y_h|| at its last real token and the mean of ||z_h|| are kept, so that later code can bootstrap over
samples. The forward stops after the last hooked layer (no later block, no unembedding).

>>> from lib.models.tiny import build_tiny_model, build_tiny_tokenizer
>>> with ActivationExtractor(build_tiny_model("tiny-gpt2"), "tiny-gpt2") as ex:
...     ex.register_hooks(layers=[1], heads=[0, 2])
...     _ = ex.extract_activations([["Thank you so much", "Sorry."]], tokenizer=build_tiny_tokenizer())
...     sorted(ex.compute_R_h()), ex.get_all_stats()[0].n_samples
([(1, 0), (1, 2)], 2)
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from lib.activations.capture import StopForward
from lib.head_strength.compute import (head_gram, head_out_weights, head_result_norms, last_token_index,
                                       masked_token_sums, module_head_weights)
from lib.head_strength.inputs import batch_tensors
from lib.head_strength.results import HeadStrengthError, HeadStrengthResults, load_results
from lib.interventions.head_outputs import head_outputs
from lib.models.archs import arch_of, blocks_of, get_path, model_dims, out_proj_of

__all__ = ["ActivationExtractor"]

_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads")


@dataclass
class _Batch:
    """What the hooks of one forward need and leave: the mask, last real positions, and per-layer sums."""

    mask: torch.Tensor  # [batch, pos]
    last: torch.Tensor  # [batch]
    got: dict = field(default_factory=dict)  # layer -> (sum ||y||, last ||y||, sum ||z||), each [batch, heads]


def _config_int(model, keys) -> int | None:
    cfg = getattr(model, "config", None)
    for key in keys:
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _load(name: str, dtype: str, seed: int):
    """(HF model, tokenizer, spec) of a project name, Hugging Face id or local folder; failures as one line."""
    from lib.models.loading import load_hf_model
    from lib.models.registry import ModelUnavailableError, resolve_dtype, resolve_spec
    from lib.models.weights import WeightsError

    spec = resolve_spec(name)
    try:
        model, tokenizer = load_hf_model(spec, dtype=resolve_dtype(dtype), seed=seed)
    except (ModelUnavailableError, WeightsError) as err:
        raise HeadStrengthError(str(err)) from err
    except OSError as err:
        if spec.kind != "local":
            raise
        raise HeadStrengthError(f"model folder {name!r} cannot be loaded as a causal LM with its tokenizer "
                                f"(save both with save_pretrained): {str(err).splitlines()[0]}") from err
    return model, tokenizer, spec


class ActivationExtractor:
    """Per-head strength of one model. ``model``: a Hugging Face causal LM, a project model name
    (``smollm2-135m``, ``tiny-llama``, ...), a Hugging Face id or a local ``save_pretrained`` folder.
    ``hook_point``: a module path with ``{layer}`` whose input is the concatenated head outputs, for
    architectures outside ``lib.models.archs.ARCHS`` (then ``set_model_structure`` if the config cannot tell).
    ``device``: where to move the model (None: leave it where it is; a model loaded by name is on the CPU);
    ``dtype``, ``seed``: how a model given by name is loaded (a model passed in keeps its own dtype).
    ``max_length``: cut every row to this many tokens; ``stop_early``: end each forward after the last hooked
    layer's projection; ``hash_weights``: record the sha256 of the weights at the first extracted batch."""

    def __init__(self, model, model_name: str | None = None, *, device: str | None = None, dtype: str = "float32",
                 hook_point: str | None = None, seed: int = 0, max_length: int | None = None,
                 stop_early: bool = True, hash_weights: bool = True):
        from lib.models.registry import REGISTRY, ModelSpec, resolve_device

        if isinstance(model, (str, os.PathLike)):
            self.model, self.tokenizer, self.spec = _load(str(model), dtype, seed)
            self.model_name = model_name or str(model)
        elif isinstance(model, torch.nn.Module):
            self.model, self.tokenizer = model, None
            self.model_name = model_name or getattr(getattr(model, "config", None), "_name_or_path", None) \
                or type(model).__name__
            # a registered name brings its BOS policy; otherwise the tokenizer's own special tokens decide
            self.spec = REGISTRY.get(self.model_name) or ModelSpec(self.model_name, "local", self.model_name, False,
                                                                  "a model passed in")
        else:
            raise HeadStrengthError(f"model must be a Hugging Face causal LM, a model name or a folder; "
                                    f"got {type(model).__name__}")
        if device is not None:
            self.model.to(resolve_device(device))
        self.model.eval()
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise HeadStrengthError(f"max_length={max_length!r}; give a token count >= 1, or None for no cut")
        self.hook_point, self.max_length, self.stop_early, self.hash_weights = hook_point, max_length, \
            stop_early, hash_weights
        self._stack: contextlib.ExitStack | None = None
        self._batch: _Batch | None = None
        self.layers: list[int] = []
        self.heads: list[int] = []
        self.reset()
        if hook_point is None:
            try:
                arch_of(self.model)
            except (ValueError, AttributeError) as err:
                if isinstance(err, AttributeError):
                    err = f"head strength does not know architecture {type(self.model).__name__!r} (no config)"
                raise HeadStrengthError(f"{err}; for another architecture pass hook_point='<path with {{layer}}>' "
                                        f"(a module whose input is the concatenated head outputs)") from None
            self.n_layers, self.n_heads, _ = model_dims(self.model)
        else:
            if "{layer}" not in hook_point:
                raise HeadStrengthError(f"hook_point {hook_point!r} lacks '{{layer}}', e.g. "
                                        f"'transformer.h.{{layer}}.attn.c_proj'")
            self.n_layers, self.n_heads = _config_int(self.model, _LAYER_KEYS), _config_int(self.model, _HEAD_KEYS)

    # ----- structure
    def set_model_structure(self, num_layers: int, num_heads: int) -> None:
        """Tell the extractor the model's layer and (query) head counts, when its config cannot."""
        for what, value in (("num_layers", num_layers), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HeadStrengthError(f"set_model_structure: {what}={value!r}; give a positive integer")
        if self.hook_point is None and (num_layers, num_heads) != (self.n_layers, self.n_heads):
            raise HeadStrengthError(f"set_model_structure({num_layers}, {num_heads}) contradicts {self.model_name}, "
                                    f"which has {self.n_layers} layers and {self.n_heads} heads")
        self.remove_hooks()
        before, (self.n_layers, self.n_heads) = (self.n_layers, self.n_heads), (num_layers, num_heads)
        if self.hook_point is not None:
            try:
                self._module(num_layers - 1)
                self._weights(0)
            except HeadStrengthError:
                self.n_layers, self.n_heads = before
                raise

    def _module(self, layer: int) -> torch.nn.Module:
        if self.hook_point is None:
            return out_proj_of(self.model, layer)
        path = self.hook_point.format(layer=layer)
        try:
            return get_path(self.model, path)
        except AttributeError:
            raise HeadStrengthError(f"hook point {path!r} (from {self.hook_point!r}, layer {layer}) is not a module "
                                    f"of {self.model_name} ({type(self.model).__name__})") from None

    def _weights(self, layer: int) -> torch.Tensor:
        if self.hook_point is None:
            return head_out_weights(self.model, layer)
        try:
            return module_head_weights(self._module(layer), self.n_heads)
        except (TypeError, ValueError) as err:
            raise HeadStrengthError(f"hook point {self.hook_point!r}: {err}") from None

    def hook_point_template(self) -> str:
        """The module path (with ``{layer}``) whose input the hooks read."""
        if self.hook_point is not None:
            return self.hook_point
        names = {id(m): n for n, m in self.model.named_modules()}
        block0 = names[id(blocks_of(self.model)[0])]
        return names[id(out_proj_of(self.model, 0))].replace(f"{block0}.", f"{block0[:-1]}{{layer}}.", 1)

    @staticmethod
    def _indices(values, count: int, what: str, model: str) -> list[int]:
        if values is None:
            return list(range(count))
        values = [values] if isinstance(values, (int, np.integer)) else list(values)
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
        if bad or not values:
            raise HeadStrengthError(f"{what}s must be a non-empty list of integers, got {values!r}")
        out = [v for v in values if not 0 <= v < count]
        if out:
            raise HeadStrengthError(f"{what} {out[0]} out of range: {model} has {count} {what}s (valid: 0..{count - 1})")
        if len(set(values)) != len(values):
            raise HeadStrengthError(f"{what}s {values} name one more than once")
        return sorted(int(v) for v in values)

    # ----- hooks
    def register_hooks(self, layers=None, heads=None) -> None:
        """Hook ``layers`` (default all) and keep ``heads`` (default all, the same in every layer): one forward
        pre-hook per layer. Replaces earlier hooks; clears results of other layers or heads."""
        if self.n_layers is None or self.n_heads is None:
            raise HeadStrengthError(f"{self.model_name}: the config does not give the number of layers and heads; "
                                    f"call set_model_structure(num_layers, num_heads) before register_hooks")
        layers = self._indices(layers, self.n_layers, "layer", self.model_name)
        heads = self._indices(heads, self.n_heads, "head", self.model_name)
        self.remove_hooks()
        if (layers, heads) != (self.layers, self.heads):
            self.reset()
        self.layers, self.heads = layers, heads
        device = next(self.model.parameters()).device
        pick = torch.tensor(heads, device=device)
        self._grams = {}
        for layer in layers:
            w = self._weights(layer).to(device)
            work = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
            self._grams[layer] = head_gram(w.index_select(0, pick), work)
        self._d_head = int(self._weights(layers[0]).shape[1])
        self._pick = None if heads == list(range(self.n_heads)) else pick
        self._stack = contextlib.ExitStack()
        if self.hook_point is None:
            self._stack.enter_context(head_outputs(self.model, layers, self._on_z))
        else:
            for layer in layers:
                handle = self._module(layer).register_forward_pre_hook(self._flat_hook(layer))
                self._stack.callback(handle.remove)

    def _flat_hook(self, layer: int):
        def pre(module, args):
            flat = args[0]
            if flat.ndim != 3 or flat.shape[-1] != self.n_heads * self._d_head:
                raise HeadStrengthError(f"hook point {self.hook_point!r} got input of shape {tuple(flat.shape)}; "
                                        f"expected [batch, pos, {self.n_heads} heads x {self._d_head}]")
            self._on_z(flat.reshape(*flat.shape[:2], self.n_heads, self._d_head), layer)
        return pre

    def _on_z(self, z: torch.Tensor, layer: int) -> None:
        batch = self._batch
        if batch is None:  # a forward that extract_activations did not start
            return None
        if self._pick is not None:
            z = z.index_select(2, self._pick)
        norms = head_result_norms(z, None, gram=self._grams[layer])  # [batch, pos, heads]
        rows = torch.arange(z.shape[0], device=z.device)
        z_norms = (z if z.dtype in (torch.float32, torch.float64) else z.float()).norm(dim=-1)
        batch.got[layer] = (masked_token_sums(norms, batch.mask), norms[rows, batch.last].double(),
                            masked_token_sums(z_norms, batch.mask))
        if self.stop_early and layer == self.layers[-1]:
            raise StopForward
        return None

    def remove_hooks(self) -> None:
        """Remove every hook this extractor registered (results are kept)."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove_hooks()
        return False

    # ----- extraction
    def reset(self) -> None:
        """Forget the samples extracted so far."""
        self._chunks: list[dict[str, np.ndarray]] = []
        self._inputs = hashlib.sha256()
        self._weights_sha256 = None

    def _encoder(self, tokenizer):
        """``texts -> (input_ids, attention_mask)`` with the project's BOS policy, padded on the right."""
        from lib.models.encoding import TextEncoder

        tok = tokenizer if tokenizer is not None else self.tokenizer

        def encode(texts):
            if tok is None:
                raise HeadStrengthError("batches of strings need a tokenizer: pass tokenizer= to extract_activations "
                                        "(a model given by name brings its own)")
            enc = TextEncoder(self.spec, tok).encode(texts)
            return enc.input_ids, enc.attention_mask
        return encode

    def _run(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        self._batch = _Batch(mask=mask, last=last_token_index(mask))
        kwargs = {"use_cache": False} if hasattr(self.model, "generation_config") else {}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                self.model(input_ids=ids, attention_mask=mask, **kwargs)
        except StopForward:
            pass
        finally:
            got, self._batch = self._batch.got, None
            self.model.train(was_training)
        missing = [layer for layer in self.layers if layer not in got]
        if missing:
            raise HeadStrengthError(f"the hooks of layers {missing} did not run in {self.model_name}'s forward; "
                                    f"check the hook point {self.hook_point_template()!r}")
        n_tok = mask.sum(1).to(torch.float64)
        stack = [torch.stack([got[layer][k] for layer in self.layers], 1).cpu().numpy() for k in range(3)]
        n_np = n_tok.cpu().numpy()
        self._chunks.append({"mean": stack[0] / n_np[:, None, None], "last": stack[1],
                             "z_mean": stack[2] / n_np[:, None, None], "n_tokens": n_np.astype(np.int64)})
        for row, m in zip(ids.cpu().numpy(), mask.bool().cpu().numpy()):
            real = np.ascontiguousarray(row[m], dtype=np.int64)
            self._inputs.update(len(real).to_bytes(8, "little") + real.tobytes())

    def extract_activations(self, dataloader, tokenizer=None, max_batches: int | None = None,
                            progress=None) -> HeadStrengthResults:
        """Run every batch of ``dataloader`` (dicts with input_ids/attention_mask, (input_ids, attention_mask)
        tuples, or lists of strings, encoded with ``tokenizer`` or the model's own, padded on the right) through
        the model under ``torch.inference_mode``, adding its samples; ``progress(1)`` after each batch. Hooks all
        heads first if none are registered. Returns the results so far."""
        if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                        or max_batches < 1):
            raise HeadStrengthError(f"max_batches={max_batches!r}; give a count >= 1, or None for every batch")
        if self._stack is None:
            self.register_hooks(self.layers or None, self.heads or None)
        if not self._chunks and self.hash_weights:  # the weights these samples come from
            from lib.models.weights import state_dict_sha256

            self._weights_sha256 = state_dict_sha256(self.model)
        encode = self._encoder(tokenizer)
        for i, batch in enumerate(dataloader):
            if max_batches is not None and i >= max_batches:
                break
            self._run(*batch_tensors(batch, encode, self.max_length))
            if progress is not None:
                progress(1)
        return self.results()

    # ----- results
    def per_sample(self) -> dict[str, np.ndarray]:
        """``mean``, ``last``, ``z_mean`` [n_samples, layers, heads] (float64) and ``n_tokens`` [n_samples]."""
        if not self._chunks:
            shape = (0, len(self.layers), len(self.heads))
            return {"mean": np.zeros(shape), "last": np.zeros(shape), "z_mean": np.zeros(shape),
                    "n_tokens": np.zeros(0, dtype=np.int64)}
        return {k: np.concatenate([c[k] for c in self._chunks]) for k in self._chunks[0]}

    def identity(self) -> dict:
        """The model, hook point and weight processing that the results depend on."""
        param = next(self.model.parameters())
        cfg = getattr(self.model, "config", None)
        return {"name": self.model_name, "class": type(self.model).__name__,
                "architecture": (getattr(cfg, "architectures", None) or [type(self.model).__name__])[0],
                "kind": self.spec.kind, "source": self.spec.source, "n_layers": self.n_layers,
                "n_heads": self.n_heads, "d_head": getattr(self, "_d_head", None),
                "d_model": int(self.model.get_input_embeddings().weight.shape[1])
                if hasattr(self.model, "get_input_embeddings") else None,
                "weights_sha256": self._weights_sha256, "dtype": str(param.dtype).replace("torch.", ""),
                "device": str(param.device), "hook_point": self.hook_point_template(), "weight_processing": "raw",
                "max_length": self.max_length, "inputs_sha256": self._inputs.hexdigest()}

    def results(self) -> HeadStrengthResults:
        """The per-sample arrays and identity so far, as a ``HeadStrengthResults``."""
        return HeadStrengthResults(layers=self.layers, heads=self.heads, identity=self.identity(),
                                   per_sample=self.per_sample())

    def compute_R_h(self) -> dict[tuple[int, int], float]:
        """{(layer, head): R_h}, the mean over samples of each sample's mean over real tokens of ||y_h||."""
        return self.results().compute_R_h()

    def get_all_stats(self):
        """One ``HeadStats`` (layer_idx, head_idx, R_h, R_h_std, R_h_last, z_norm, n_samples, n_tokens) per head."""
        return self.results().get_all_stats()

    def save_results(self, path):
        """Write the results to ``path`` (JSON) and the per-sample arrays beside it; returns ``path``."""
        return self.results().save(path)

    load_results = staticmethod(load_results)
