"""NeoCell in PyTorch: an example port verified by neocell_ref's conformance kit.

Written for this package as a worked example of a port: each channel group is cut
into runs of channels that share one shift pair, every run is padded, cut into
tiles, multiplied tile-wise with one ``einsum`` (``A @ P @ B`` per tile), and
cropped. The backward comes from autograd.

The two functions follow the kit's calling convention (numpy in, numpy out):

``forward(x, weights_a, weights_b, specs) -> y``
``backward(grad_y, x, weights_a, weights_b, specs) -> (grad_x, grads_a, grads_b)``

Verify it with::

    neocell-ref golden export golden/
    neocell-ref golden verify golden/ --op neocell \
        --forward neocell_torch:forward --backward neocell_torch:backward

In half precision (the inputs converted to ``torch.float16`` or ``torch.bfloat16``,
every tensor of the computation in that type, results returned as float32 arrays)::

    neocell-ref golden export golden16/ --dtype float16
    neocell-ref golden verify golden16/ --op neocell \
        --forward neocell_torch:forward_float16 --backward neocell_torch:backward_float16

and likewise ``--dtype bfloat16`` with ``forward_bfloat16``/``backward_bfloat16``.
PyTorch's CPU matrix products of float16 and bfloat16 tensors accumulate in float32
(``tests/examples/test_torch_port.py`` checks it), which is the arithmetic model the half-
precision golden sets are derived for (``docs/porting.md``, "Half precision").
"""

import functools

import numpy as np
import torch
import torch.nn.functional as F


def _group_sizes(group):
    """(h_in, h_out, w_in, w_out, shift_a, shift_b) from any official dict form."""
    if "h_in" in group:
        sizes = (group["h_in"], group["h_out"], group["w_in"], group["w_out"])
    elif "kernel_a" in group:
        sizes = (group["kernel_a"], group["kernel_a"], group["kernel_b"], group["kernel_b"])
    else:
        sizes = (group["kernel"],) * 4
    if "shift_a" in group:
        shifts = (group["shift_a"], group["shift_b"])
    else:
        shifts = (group.get("shift", 0),) * 2
    return (*sizes, *shifts)


def _shift_of_channels(channels, kernel_out, shift):
    """Shift of every channel: sub-groups of channels // n, the last takes the rest."""
    if shift == 0:
        return [0] * channels
    n = (kernel_out - 1) // shift + 1
    size = channels // n
    return [(n - 1 if size == 0 else min(i // size, n - 1)) * shift for i in range(channels)]


def _axis(length, k_in, k_out, shift):
    """(front padding, back padding, front crop, output length) along one axis."""
    front = k_in - shift if shift else 0
    tiles = -(-(length + front) // k_in)
    out = length if k_in == k_out else length * k_out // k_in
    return front, tiles * k_in - length - front, (k_out - shift if shift else 0), out


def neocell(x, weights_a, weights_b, specs):
    """Differentiable NeoCell on torch tensors: x (N, C, H, W) -> (N, C, H_out, W_out)."""
    n, _, height, width = x.shape
    outputs = []
    start = 0
    for g, group in enumerate(specs):
        h_in, h_out, w_in, w_out, shift_a, shift_b = _group_sizes(group)
        channels = group["channels"]
        pairs = list(zip(_shift_of_channels(channels, h_out, shift_a), _shift_of_channels(channels, w_out, shift_b)))
        i = 0
        while i < channels:  # runs of channels with the same (shift_a, shift_b)
            j = i
            while j < channels and pairs[j] == pairs[i]:
                j += 1
            sa, sb = pairs[i]
            fh, bh, ch, ho = _axis(height, h_in, h_out, sa)
            fw, bw, cw, wo = _axis(width, w_in, w_out, sb)
            xs = F.pad(x[:, start + i : start + j], (fw, bw, fh, bh))
            th, tw = xs.shape[2] // h_in, xs.shape[3] // w_in
            tiles = xs.reshape(n, j - i, th, h_in, tw, w_in)
            y = torch.einsum("cph,nctheu,cuo->nctpeo", weights_a[g][i:j], tiles, weights_b[g][i:j])
            y = y.reshape(n, j - i, th * h_out, tw * w_out)[:, :, ch : ch + ho, cw : cw + wo]
            outputs.append(y)
            i = j
        start += channels
    return torch.cat(outputs, dim=1)


def _tensor(a, dtype, grad=False):
    # float64 -> float16/bfloat16 is exact for the inputs of a half-precision set.
    return torch.tensor(np.asarray(a, dtype=np.float64)).to(dtype).requires_grad_(grad)


def _numpy(t):
    # NumPy has no bfloat16: half results are returned as float32 (exactly).
    t = t.detach()
    return (t if t.dtype == torch.float64 else t.to(torch.float32)).numpy()


def forward(x, weights_a, weights_b, specs, dtype=torch.float64):
    """Kit convention: numpy arrays in, ``y`` as a numpy array out (float64, or
    float32 holding the ``dtype`` result)."""
    with torch.no_grad():
        xt = _tensor(x, dtype)
        wa, wb = [_tensor(w, dtype) for w in weights_a], [_tensor(w, dtype) for w in weights_b]
        return _numpy(neocell(xt, wa, wb, specs))


def backward(grad_y, x, weights_a, weights_b, specs, dtype=torch.float64):
    """Kit convention: ``(grad_x, grads_a, grads_b)`` by autograd."""
    xt = _tensor(x, dtype, grad=True)
    wa = [_tensor(w, dtype, grad=True) for w in weights_a]
    wb = [_tensor(w, dtype, grad=True) for w in weights_b]
    y = neocell(xt, wa, wb, specs)
    grads = torch.autograd.grad(y, [xt, *wa, *wb], grad_outputs=_tensor(grad_y, dtype))
    groups = len(specs)
    return _numpy(grads[0]), [_numpy(t) for t in grads[1 : 1 + groups]], [_numpy(t) for t in grads[1 + groups :]]


forward_float16 = functools.partial(forward, dtype=torch.float16)
backward_float16 = functools.partial(backward, dtype=torch.float16)
forward_bfloat16 = functools.partial(forward, dtype=torch.bfloat16)
backward_bfloat16 = functools.partial(backward, dtype=torch.bfloat16)
