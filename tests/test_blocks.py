"""The paper's building blocks: exact channel semantics, gradient cuts and connectivity."""

import pytest
import torch
import torch.fx
from torch import nn

from gradpath_lib.errors import GradpathError
from gradpath_lib.models.blocks import (
    AggregationBlock,
    ConvBNAct,
    CSPStage,
    ELANBlock,
    OSAModule,
    ResidualBlock,
    Stack,
    aggregated_inputs,
    basic_body,
    bottleneck_body,
    darknet_body,
)
from gradpath_lib.models.cost import count_flops, count_params


def _silence(body: nn.Module) -> None:
    """Make a residual branch output exactly zero (its last BatchNorm scales and shifts to zero)."""
    last_bn = [m for m in body.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    nn.init.zeros_(last_bn.weight)
    nn.init.zeros_(last_bn.bias)


def _capture_inputs(module: nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    module.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    return seen


def test_cost_of_a_tiny_conv_bn_linear_net_is_hand_computed():
    net = nn.Sequential(ConvBNAct(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    conv_weights, bn, linear = 3 * 4 * 9, 2 * 4, 4 * 10 + 10
    assert count_params(net) == conv_weights + bn + linear
    assert count_flops(net, (3, 8, 8)) == 2 * (conv_weights * 8 * 8 + 4 * 10)


def test_cost_of_a_basic_residual_block_is_hand_computed():
    block = ResidualBlock(basic_body(4, 4), 4, 4)
    assert count_params(block) == 2 * (4 * 4 * 9 + 2 * 4)
    assert count_flops(block, (4, 8, 8)) == 2 * 2 * (4 * 4 * 9 * 8 * 8)


def test_masked_residual_reaches_exactly_the_first_channels():
    block = ResidualBlock(basic_body(8, 8), 8, 8, shortcut="masked", mask_ratio=0.25).eval()
    _silence(block.body)
    x = torch.randn(2, 8, 5, 5)
    y = block(x)
    assert torch.equal(y[:, :2], x[:, :2])
    assert torch.equal(y[:, 2:], torch.zeros_like(y[:, 2:]))


def test_masked_residual_projects_only_the_masked_channels_when_the_shape_changes():
    block = ResidualBlock(basic_body(4, 8, 2), 4, 8, 2, shortcut="masked")
    assert block.proj.conv.out_channels == 4 and block.proj.conv.stride == (2, 2)
    assert block(torch.randn(2, 4, 6, 6)).shape == (2, 8, 3, 3)


@pytest.mark.parametrize("c_in, c_out", [(8, 4), (4, 8)])
def test_asymmetric_residual_adds_the_common_first_channels_and_copies_the_rest(c_in, c_out):
    block = ResidualBlock(darknet_body(c_in, c_out), c_in, c_out, shortcut="asymmetric").eval()
    x = torch.randn(2, c_in, 5, 5)
    branch, y = block.body(x), block(x)
    k = min(c_in, c_out)
    assert torch.allclose(y[:, :k], branch[:, :k] + x[:, :k])
    assert torch.equal(y[:, k:], branch[:, k:])
    assert count_params(block) == count_params(block.body)  # parameter-free shortcut


def test_strided_asymmetric_residual_pools_its_source():
    block = ResidualBlock(basic_body(4, 8, 2), 4, 8, 2, shortcut="asymmetric").eval()
    _silence(block.body)
    x = torch.randn(1, 4, 6, 6)
    y = block(x)
    assert torch.allclose(y[:, :4], nn.functional.avg_pool2d(x, 2))
    assert torch.equal(y[:, 4:], torch.zeros_like(y[:, 4:]))


@pytest.mark.parametrize("sg", ["none", "identity", "block"])
def test_stop_gradient_cuts_exactly_the_intended_path(sg):
    torch.manual_seed(0)
    block = ResidualBlock(bottleneck_body(4, 4, width=2), 4, 4, sg=sg).eval()
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    block(x).sum().backward()
    probe = x.detach().clone().requires_grad_()
    block.body(probe).sum().backward()
    through_body, through_identity = probe.grad, torch.ones_like(probe)
    expected = {"none": through_body + through_identity, "identity": through_body, "block": through_identity}[sg]
    assert torch.allclose(x.grad, expected)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.body.parameters())


def test_plain_block_has_no_shortcut_and_rejects_stop_gradient():
    block = ResidualBlock(basic_body(4, 4), 4, 4, shortcut="none").eval()
    _silence(block.body)
    assert torch.equal(block(torch.randn(1, 4, 3, 3)), torch.zeros(1, 4, 3, 3))
    with pytest.raises(GradpathError, match="stop gradient"):
        ResidualBlock(basic_body(4, 4), 4, 4, shortcut="none", sg="block")


def _csp(fusion: str) -> CSPStage:
    return CSPStage(8, 8, lambda c: Stack(ResidualBlock(basic_body(c, c), c, c)), fusion=fusion).eval()


@pytest.mark.parametrize("fusion, has_tb, has_t", [("full", True, True), ("first", False, True), ("last", True, False)])
def test_csp_fusions_place_their_transitions_and_concat_block_path_first(fusion, has_tb, has_t):
    stage = _csp(fusion)
    pointwise = [m for name, m in stage.named_modules() if isinstance(m, nn.Conv2d) and not name.startswith("block")]
    assert len(pointwise) == has_tb + has_t and all(m.kernel_size == (1, 1) for m in pointwise)
    assert isinstance(stage.transition_block, ConvBNAct) == has_tb
    assert isinstance(stage.transition, ConvBNAct) == has_t
    x = torch.randn(2, 8, 4, 4)
    block_out = _capture_inputs(stage.transition_block)
    y = stage(x)
    assert torch.equal(block_out[0], stage.block(x[:, 4:]))  # x2 = second half enters the block
    fused = _capture_inputs(stage.transition)
    stage(x)
    concat = fused[0]
    assert torch.equal(concat[:, -4:], x[:, :4])  # x1 = first half crosses, concatenated last
    assert torch.equal(concat[:, :-4], stage.transition_block(stage.block(x[:, 4:])))
    if not has_t:
        assert torch.equal(y, concat)


def test_csp_conv_split_uses_two_pointwise_convs():
    stage = CSPStage(8, 8, lambda c: ResidualBlock(basic_body(c, c), c, c), fusion="first", split="conv")
    assert stage.part1.conv.kernel_size == stage.part2.conv.kernel_size == (1, 1)
    assert stage(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)


def test_sparse_connectivity_follows_powers_of_two():
    expected = [[0], [0, 1], [1, 2], [0, 2, 3], [1, 3, 4], [2, 4, 5], [3, 5, 6], [0, 4, 6, 7], [1, 5, 7, 8]]
    assert [aggregated_inputs(n, "sparse") for n in range(1, 10)] == expected
    assert aggregated_inputs(4, "dense") == [0, 1, 2, 3]


@pytest.mark.parametrize("connectivity", ["dense", "sparse"])
def test_aggregation_block_layers_receive_exactly_their_sources(connectivity):
    layers = 5
    block = AggregationBlock(3, layers, 2, connectivity).eval()
    inputs = [_capture_inputs(layer) for layer in block.layers]
    outputs: list[torch.Tensor] = []
    for layer in block.layers:
        layer.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    x = torch.randn(1, 3, 4, 4)
    y = block(x)
    features = [x] + outputs
    for n in range(1, layers + 1):
        want = torch.cat([features[i] for i in aggregated_inputs(n, connectivity)], 1)
        assert torch.equal(inputs[n - 1][0], want)
    assert torch.equal(y, torch.cat([features[i] for i in aggregated_inputs(layers + 1, connectivity)], 1))
    assert y.shape[1] == block.out_channels


def test_elan_concatenates_both_splits_and_every_stack_output():
    block = ELANBlock(8, 6, hidden=4, blocks=3, depth=2, stack_width=2).eval()
    x = torch.randn(1, 8, 4, 4)
    fused = _capture_inputs(block.transition)
    block(x)
    a, b = block.split_a(x), block.split_b(x)
    outs, y = [], b
    for stack in block.stacks:
        y = stack(y)
        outs.append(y)
    assert all(len(stack) == 2 for stack in block.stacks)
    assert torch.equal(fused[0], torch.cat([a, b, *outs], 1))


@pytest.mark.parametrize("transition", [True, False])
def test_osa_module_aggregates_its_input_and_every_layer(transition):
    module = OSAModule(4, 3, 2, c_out=5 if transition else None, transition=transition).eval()
    x = torch.randn(1, 4, 4, 4)
    fused = _capture_inputs(module.transition)
    y = module(x)
    assert torch.equal(fused[0][:, :4], x) and fused[0].shape[1] == 4 + 3 * 2
    assert y.shape[1] == module.out_channels == (5 if transition else 10)


def test_blocks_trace_with_fx_to_the_same_function():
    blocks = [
        ResidualBlock(basic_body(4, 8, 2), 4, 8, 2, shortcut="masked", sg="identity"),
        ResidualBlock(darknet_body(8, 4), 8, 4, shortcut="asymmetric", sg="block"),
        _csp("full"),
        ELANBlock(8, 8, 4),
        OSAModule(8, 2, 4, 8),
        AggregationBlock(8, 4, 2, "sparse"),
    ]
    x = torch.randn(2, 8, 6, 6)
    for block in blocks:
        block.eval()
        x_in = x[:, :4] if block is blocks[0] else x
        assert torch.equal(torch.fx.symbolic_trace(block)(x_in), block(x_in))


def test_bad_block_arguments_name_the_choices():
    with pytest.raises(GradpathError, match="valid choices: identity, masked"):
        ResidualBlock(basic_body(4, 4), 4, 4, shortcut="partial")
    with pytest.raises(GradpathError, match="mask_ratio"):
        ResidualBlock(basic_body(4, 4), 4, 4, shortcut="masked", mask_ratio=0.0)
    with pytest.raises(GradpathError, match="activation"):
        ConvBNAct(3, 4, act="gelu")
