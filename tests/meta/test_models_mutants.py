"""The model checks have teeth: subtly wrong layers make them fail.

- ``test_mutants_fail_conformance``: the official whole-network comparison of
  tests/test_models.py (``support.official_model.conformance_errors`` against
  each file of ``support.official_model.STEMS``) fails for each of five plausible layer slips
  (biased running variance, patchify with the patch axes swapped, tanh GELU,
  LayerNorm eps 1e-5, training BatchNorm with the unbiased variance). The BatchNorm
  mutants replace the rules every training BatchNorm uses, plain and fast
  (``layers._bn_running``, ``layers._bn_stats``).
- ``test_the_options_file_notices_an_ignored_option``: the options file
  (``official_tiny_model_options``) fails the comparison for a model that ignores its
  linear biases or its layer scale.
- ``test_a_broken_layer_backward_fails_the_model_check``: the whole-model gradient
  check of tests/test_models.py (``support.models.model_gradcheck``) notices a 1 %
  error in the layer-scale gradient.
"""

import numpy as np
import pytest
from support import official_model
from support.models import model_gradcheck, tiny
from support.official_model import TOLERANCE, conformance_errors, run_sequence

from neocell_ref import layers as L


def _biased_running_var(mean, var, m, running_mean, running_var, count, momentum):
    # the running-statistics rule that every training BatchNorm uses (layers._bn_running),
    # with the biased batch variance: the Bessel factor m / (m - 1) forgotten
    return (
        (1 - momentum) * running_mean + momentum * mean,
        (1 - momentum) * running_var + momentum * var,
        np.asarray(count + 1, dtype=np.int64),
    )


def _patchify_swapped(x, *, patch=4):
    n, c, h, w = x.shape
    blocks = np.asarray(x).reshape(n, c, h // patch, patch, w // patch, patch)
    return np.ascontiguousarray(blocks.transpose(0, 1, 5, 3, 2, 4)).reshape(
        n, c * patch * patch, h // patch, w // patch
    )


def _gelu_tanh(x, *, out=None):
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _layernorm_eps_1e5(x, weight, bias, *, eps=1e-6):
    return _original_layernorm(x, weight, bias, eps=1e-5)


_original_layernorm = L.layernorm_forward


_original_bn_stats = L._bn_stats


def _bn_stats_unbiased(x):
    # the batch statistics every training BatchNorm normalises with (layers._bn_stats),
    # with PyTorch's default unbiased variance: the slip torch.var(x) makes
    mean, var = _original_bn_stats(x)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    return mean, var * (m / (m - 1))


MUTANTS = {
    "running variance updated with the biased variance": ("_bn_running", _biased_running_var),
    "patchify with px and py swapped": ("patchify_forward", _patchify_swapped),
    "tanh-approximated GELU": ("gelu_forward", _gelu_tanh),
    "LayerNorm eps 1e-5 instead of 1e-6": ("layernorm_forward", _layernorm_eps_1e5),
    "training BatchNorm normalised with the unbiased variance": ("_bn_stats", _bn_stats_unbiased),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutants_fail_conformance(official, monkeypatch, mutant):
    arrays, meta = official
    name, replacement = MUTANTS[mutant]
    monkeypatch.setattr(L, name, replacement)
    result, _ = run_sequence(arrays, meta)
    errors = conformance_errors(result, arrays, meta)
    failing = {k: e for k, e in errors.items() if not e <= TOLERANCE}
    assert failing, f"mutant '{mutant}' passed the conformance comparison (worst {max(errors.values()):.3e})"


#: What the options file (linear biases, layer scale) must notice: a model that ignores
#: the option is simulated by loading the official state with that option neutralised.
IGNORED_OPTIONS = {
    "linear biases ignored": (".fc_1.bias", ".fc_2.bias"),
    "layer scale ignored (gamma taken as 1)": (".layer_scale.gamma",),
}


@pytest.mark.parametrize("ignored", sorted(IGNORED_OPTIONS))
def test_the_options_file_notices_an_ignored_option(ignored):
    arrays, meta = official_model.load_official("official_tiny_model_options")
    suffixes = IGNORED_OPTIONS[ignored]
    neutral = 1.0 if "gamma" in suffixes[0] else 0.0
    changed = {
        k: np.full_like(v, neutral) for k, v in arrays.items() if k.startswith("state/") and k.endswith(suffixes)
    }
    assert changed, f"the options file has no {suffixes} parameters to neutralise"
    result, _ = run_sequence({**arrays, **changed}, meta)
    errors = conformance_errors(result, arrays, meta)
    failing = {k: e for k, e in errors.items() if not e <= TOLERANCE}
    assert {"logits_eval", "logits_train"} <= set(failing), (
        f"'{ignored}' ({len(changed)} arrays) left the logits within {TOLERANCE:g}: "
        f"{ {k: errors[k] for k in ('logits_eval', 'logits_train')} }"
    )


def test_a_broken_layer_backward_fails_the_model_check(monkeypatch):
    original = L.layer_scale_backward

    def broken(grad_y, x, gamma):
        grad_x, grad_gamma = original(grad_y, x, gamma)
        return grad_x, grad_gamma * 1.01

    monkeypatch.setattr(L, "layer_scale_backward", broken)
    report = model_gradcheck(tiny(layer_scale_init_value=0.5), training=False, params=["head.fc.bias"])
    assert not report.passed, f"a 1% error in d gamma went unnoticed\n{report}"
    assert not next(r for r in report.inputs if "layer_scale" in r.name).passed, (
        f"the gradient check of {next(r for r in report.inputs if 'layer_scale' in r.name).name} passed"
        f" with d gamma 1% off\n{report}"
    )
