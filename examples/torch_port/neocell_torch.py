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
"""

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
            xs = F.pad(x[:, start + i:start + j], (fw, bw, fh, bh))
            th, tw = xs.shape[2] // h_in, xs.shape[3] // w_in
            tiles = xs.reshape(n, j - i, th, h_in, tw, w_in)
            y = torch.einsum("cph,nctheu,cuo->nctpeo", weights_a[g][i:j], tiles, weights_b[g][i:j])
            y = y.reshape(n, j - i, th * h_out, tw * w_out)[:, :, ch:ch + ho, cw:cw + wo]
            outputs.append(y)
            i = j
        start += channels
    return torch.cat(outputs, dim=1)


def _tensors(x, weights_a, weights_b, grad=False):
    as_t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)
    return as_t(x), [as_t(w) for w in weights_a], [as_t(w) for w in weights_b]


def forward(x, weights_a, weights_b, specs):
    """Kit convention: numpy arrays in, ``y`` as a float64 numpy array out."""
    with torch.no_grad():
        xt, wa, wb = _tensors(x, weights_a, weights_b)
        return neocell(xt, wa, wb, specs).numpy()


def backward(grad_y, x, weights_a, weights_b, specs):
    """Kit convention: ``(grad_x, grads_a, grads_b)`` by autograd."""
    xt, wa, wb = _tensors(x, weights_a, weights_b, grad=True)
    y = neocell(xt, wa, wb, specs)
    grads = torch.autograd.grad(y, [xt, *wa, *wb], grad_outputs=torch.as_tensor(np.asarray(grad_y, dtype=np.float64)))
    groups = len(specs)
    to_np = lambda t: t.detach().numpy()
    return to_np(grads[0]), [to_np(t) for t in grads[1:1 + groups]], [to_np(t) for t in grads[1 + groups:]]
