"""A small NeoNeXt and the whole-model gradient check.

Used by the model tests (tests/test_models.py) and by the proof that the check
notices a broken layer backward (tests/meta/test_models_mutants.py).
"""

import numpy as np

import neocell_ref as nr
from neocell_ref.verify.gradcheck import check_gradients

# A small model that every shift rule admits at 32x32: feature maps 8, 4, 2, 1; kernels 2
# and 3 with shift 1 use shifts up to 2 (<= 2 in stage 3); stage 4 has no shift.
TINY = dict(
    per_stage_layers=(1, 1, 1, 1),
    dims=(4, 8, 8, 8),
    num_classes=5,
    kernel_spec="2+3",
    shifts=(1, 1, 1, 0),
    resolution=32,
)


def tiny(dtype=np.float64, seed=0, **options):
    return nr.models.NeoNeXt(**{**TINY, **options}, dtype=dtype, rng=np.random.default_rng(seed))


def tiny_input(n=2, seed=1, size=32):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size))


SAMPLED_PARAMS = [
    "stem.conv.weight",
    "stem.norm.weight",
    "stage_1.0.ops.content.neocell.weight_a.1",
    "stage_1.0.ops.content.neocell.weight_b.0",
    "stage_2.0.ops.content.fc_1.weight",
    "stage_2.0.ops.content.norm.bias",
    "downsample_2.neocell.weight_b.0",
    "downsample_3.conv.weight",
    "head.ln.weight",
    "head.fc.bias",
]


def model_gradcheck(model, training, rng_seed=7, params=SAMPLED_PARAMS, x=None):
    x = tiny_input(3) if x is None else x
    names = list(params)
    if any("layer_scale" in k for k in model.params):
        names.append("stage_3.0.ops.content.layer_scale.gamma")
    if "stage_1.0.ops.content.fc_2.bias" in model.params:
        names.append("stage_1.0.ops.content.fc_2.bias")

    def run(x_, *values):
        for key, value in zip(names, values):
            model.params[key] = value.copy()
        model.drop_path_rng = np.random.default_rng(rng_seed)  # the same masks at every call
        return model.forward(x_, training=training)

    def forward(x_, *values):
        return run(x_, *values)

    def backward(g, x_, *values):
        run(x_, *values)
        grad_x = model.backward(g)
        return [grad_x] + [model.grads[k] for k in names]

    inputs = [x] + [model.params[k].copy() for k in names]
    # dot_rtol 1e-7: the directional derivative along a random direction of a whole
    # weight matrix is a central difference with an O(eps²·|d|³) truncation error that,
    # through batch-statistics BatchNorms, reaches ~1e-8 relative; every element-wise
    # check keeps the default tolerances.
    return check_gradients(
        forward, backward, inputs, names=["x"] + names, max_elements=12, rng=np.random.default_rng(11), dot_rtol=1e-7
    )
