"""The golden operations (:mod:`neocell_ref.verify.golden_ops`): the curated cases are valid and cover every rule.

The core NeoCell cases exercise each rule of SPEC sections 2-6 at least once, every
case of the full suite is a valid layer, and every layer kind of NeoNeXt has golden
cases (BatchNorm in both modes). That the reference passes these cases and that ported
bugs fail them is tested in tests/verify/test_golden.py.
"""

from neocell_ref.architecture import NeoNeXtConfig, describe
from neocell_ref.spec import check_input_size, parse_specs
from neocell_ref.verify.golden_ops import LAYER_CASES_CORE, NEOCELL_CASES_CORE, NEOCELL_CASES_FULL


def test_curated_cases_cover_every_rule():
    """The core suite must exercise each rule of SPEC sections 2-6 at least once."""
    seen = set()
    for name, specs, shape in NEOCELL_CASES_CORE:
        groups = parse_specs(specs)
        h, w = shape[2:]
        check_input_size(groups, h, w)
        forms = {("h_in" in g and "h") or ("kernel_a" in g and "ab") or "k" for g in specs}
        seen |= {f"form_{f}" for f in forms}
        if len(groups) > 1:
            seen.add("mixed_groups")
        for g in groups:
            if g.shift_a != g.shift_b:
                seen.add("shift_a_ne_shift_b")
            if g.shift_a and g.channels % g.subgroups_a:
                seen.add("uneven_subgroups")
            if g.shift_a and g.channels < g.subgroups_a:
                seen.add("fewer_channels_than_subgroups")
            if g.shift_a and g.max_shift_a == h:
                seen.add("max_shift_equals_size")
            if g.h_out < g.h_in:
                seen.add("down_sampling")
            if g.h_out > g.h_in:
                seen.add("up_sampling")
            if g.h_in != g.h_out and (h * g.h_out) % g.h_in:
                seen.add("floor_output_size")
            if g.h_in == g.h_out and (h % g.h_in or w % g.w_in):
                seen.add("partial_tiles")
            if h < g.h_in and w < g.w_in:
                seen.add("input_smaller_than_kernel")
        if (h, w) == (1, 1):
            seen.add("input_1x1")
        if h != w:
            seen.add("rectangular")
        if shape[1] > 128:
            seen.add("more_than_128_channels")
        if min(h, w) > 128:
            seen.add("planes_beyond_128")
        seen |= {f"shift_{g.shift_a}" for g in groups if g.h_in == 7}
    required = {
        "form_h",
        "form_ab",
        "form_k",
        "mixed_groups",
        "shift_a_ne_shift_b",
        "uneven_subgroups",
        "fewer_channels_than_subgroups",
        "max_shift_equals_size",
        "down_sampling",
        "up_sampling",
        "floor_output_size",
        "partial_tiles",
        "input_smaller_than_kernel",
        "input_1x1",
        "rectangular",
        "more_than_128_channels",
        "planes_beyond_128",
    } | {f"shift_{s}" for s in range(0, 7)}
    assert required <= seen, f"rules not covered by the core golden suite: {sorted(required - seen)}"


def test_full_suite_cases_are_valid():
    for name, specs, shape in NEOCELL_CASES_FULL:
        groups = parse_specs(specs)
        assert sum(g.channels for g in groups) == shape[1], name
        check_input_size(groups, *shape[2:])


def test_every_model_layer_kind_has_golden_cases():
    kinds = {layer.kind for layer in describe(NeoNeXtConfig(layer_scale_init_value=0.5, drop_path=0.1), 224).layers()}
    covered = {kind for _, kind, _, _ in LAYER_CASES_CORE} | {"neocell"}
    assert kinds <= covered, f"layer kinds of NeoNeXt without golden cases: {sorted(kinds - covered)}"
    modes = {opts.get("training") for _, kind, _, opts in LAYER_CASES_CORE if kind == "batchnorm"}
    assert modes == {True, False}, "BatchNorm needs a training and an inference case"
