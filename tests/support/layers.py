"""The gradient check the layer tests run, shared with the proof that it has teeth."""

from neocell_ref.verify.gradcheck import check_gradients


def gradient_report(forward, backward, inputs, names, **kwargs):
    """:func:`~neocell_ref.verify.gradcheck.check_gradients` of a layer, 24 sampled elements by default."""
    kwargs.setdefault("max_elements", 24)
    return check_gradients(forward, backward, inputs, names=names, **kwargs)
