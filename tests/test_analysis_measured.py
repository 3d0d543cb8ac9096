"""The measured gradient spectrum: exact per-timestamp split whose support is the structure's."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradpath_lib.analysis import analyze_model
from gradpath_lib.analysis.measured import gradients_by_timestamp, measured_gradient_spectrum

C = 4
SHAPE = (3, 5, 5)
INPUT_KINDS = ("single", "add", "partial_add", "cat_halves", "detached_add")


class RandomNet(nn.Module):
    """A random DAG of 1x1/3x3 convs joined by adds, partial adds, half concats and detaches."""

    def __init__(self, seed: int, layers: int = 7):
        super().__init__()
        rng = random.Random(seed)
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.convs = nn.ModuleList(nn.Conv2d(C, C, rng.choice([1, 3]), padding="same") for _ in range(layers))
        self.bns = nn.ModuleList(nn.BatchNorm2d(C) for _ in range(layers))
        self.plan = [(rng.choice(INPUT_KINDS), rng.randrange(k + 1), rng.randrange(k + 1)) for k in range(layers)]
        self.head_inputs = sorted(rng.sample(range(layers + 1), 2))
        self.fc = nn.Linear(2 * C, 3)

    def forward(self, x):
        outputs = [F.leaky_relu(self.stem(x), 0.1)]
        for conv, bn, (kind, i, j) in zip(self.convs, self.bns, self.plan):
            a, b = outputs[i], outputs[j]
            if kind == "single":
                y = a
            elif kind == "add":
                y = a + b
            elif kind == "partial_add":
                y = torch.cat([a[:, :2] + b[:, :2], a[:, 2:]], 1)
            elif kind == "cat_halves":
                y = torch.cat([a[:, :2], b[:, 2:]], 1)
            else:
                y = a + b.detach()
            outputs.append(F.leaky_relu(bn(conv(y)), 0.1))
        pooled = torch.cat([outputs[i] for i in self.head_inputs], 1).mean((2, 3))
        return self.fc(pooled)


def batch(n: int = 3):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, *SHAPE, generator=gen), torch.randint(0, 3, (n,), generator=gen)


@pytest.mark.parametrize("seed", range(6))
def test_measured_support_equals_structural_timestamps(seed):
    torch.manual_seed(seed)
    model = RandomNet(seed)
    report = analyze_model(model, SHAPE)
    spectrum = measured_gradient_spectrum(model, *batch(), report=report)
    measured = spectrum[spectrum.grad_norm > 0].groupby(["layer", "group_start"]).timestamp.apply(tuple)
    for g in report.groups:
        assert measured.get((g.position.name, g.start), ()) == g.timestamps, (g.position.name, g.start)


class ChannelsLast(nn.Module):
    """Linear layers on a permuted (N, H, W, C) map; `lin`'s two halves reach the loss differently."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 2 * C, 1)
        self.lin = nn.Linear(2 * C, 2 * C)
        self.inner = nn.Linear(C, C)
        self.fc = nn.Linear(2 * C, 3)

    def forward(self, x):
        y = self.lin(self.stem(x).permute(0, 2, 3, 1))
        z = torch.cat([self.inner(y[..., :C]), y[..., C:]], -1)
        return self.fc(z.mean((1, 2)))


def test_measured_support_follows_channels_last_groups():
    torch.manual_seed(0)
    model = ChannelsLast()
    report = analyze_model(model, SHAPE)
    assert [(g.start, g.timestamps) for g in report.groups if g.position.module == "lin"] == [(0, (3,)), (C, (2,))]
    spectrum = measured_gradient_spectrum(model, *batch(), report=report)
    measured = spectrum[spectrum.grad_norm > 0].groupby(["layer", "group_start"]).timestamp.apply(tuple)
    for g in report.groups:
        assert measured.get((g.position.name, g.start), ()) == g.timestamps, (g.position.name, g.start)


def test_timestamp_slices_sum_to_the_ordinary_gradient():
    torch.manual_seed(0)
    model = RandomNet(3)
    model.train()
    images, labels = batch()
    longest = analyze_model(model, SHAPE).network["longest_path"]
    split = gradients_by_timestamp(model, images, labels, longest)
    assert model.training  # restored

    model.eval()
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, name=name: outputs.__setitem__(name, out))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    loss = F.cross_entropy(model(images), labels)
    for h in hooks:
        h.remove()
    names = list(outputs)
    ordinary = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
    for name, grad in zip(names, ordinary):
        if grad is None:
            assert split[(name, 0)] is None or not split[(name, 0)].any()
        else:
            torch.testing.assert_close(split[(name, 0)].sum(0), grad, rtol=1e-5, atol=1e-7)


def test_spectrum_shares_sum_to_one_per_receiving_group():
    model = RandomNet(1)
    report = analyze_model(model, SHAPE)
    spectrum = measured_gradient_spectrum(model, *batch(), report=report)
    sums = spectrum.groupby(["layer", "group_start"]).share.sum()
    for g in report.groups:
        assert sums[(g.position.name, g.start)] == pytest.approx(1.0 if g.timestamps else 0.0)
    assert set(spectrum.columns) >= {"layer", "group_start", "group_stop", "timestamp", "grad_norm", "share"}


class CachingZeroInit(nn.Module):
    """Zero-initialised second conv (no gradient crosses it) and a tensor cached by the forward
    pass, as timm's LeViT caches its attention biases (such a module cannot be deep-copied)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, C, 1), nn.Conv2d(C, C, 1), nn.Linear(C, 3)
        nn.init.zeros_(self.b.weight)
        self.cache = None

    def forward(self, x):
        y = self.a(x)
        self.cache = y.mean()  # a non-leaf tensor kept on the module
        return self.fc((y + self.b(y)).mean((2, 3)))


def test_the_check_sees_through_zero_weights_and_puts_the_model_back():
    from gradpath_lib.analysis.measured import structure_check

    torch.manual_seed(0)
    model = CachingZeroInit().train()
    model(torch.randn(1, *SHAPE))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check = structure_check(model, SHAPE)
    assert check.agrees.all() and check.set_index("layer").loc["a", "measured"] == (2, 3)
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert model.training and not model.b.weight.count_nonzero()


class TinyWeights(nn.Module):
    """Two float64 layers scaled by 1e-100 after `a`: the gradient reaching `a` is about 1e-200,
    whose square underflows (gMLP's spatial gates, initialised near zero, do this over 30 blocks)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.double()
        with torch.no_grad():
            self.b.weight.mul_(1e-100)
            self.c.weight.mul_(1e-100)

    def forward(self, x):
        return self.c(self.b(self.a(x.mean((2, 3)))))


def test_a_tiny_gradient_is_measured_without_underflow():
    from gradpath_lib.analysis.measured import structure_check

    torch.manual_seed(0)
    check = structure_check(TinyWeights(), SHAPE, torch.float64).set_index("layer")
    assert check.loc["a", "measured"] == (3,) and check.agrees.all()


class VanishingChain(nn.Module):
    """Five float64 layers each scaled by 1e-80 after `a`: the gradient reaching `a` is about
    1e-400, below the least float64 (CaiT's LayerScale of 1e-5 does this over dozens of blocks)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.chain = nn.Sequential(*[nn.Linear(4, 4) for _ in range(5)])
        self.double()
        with torch.no_grad():
            for layer in self.chain:
                layer.weight.mul_(1e-80)

    def forward(self, x):
        return self.chain(self.a(x.mean((2, 3))))


def test_a_gradient_below_the_least_float64_is_measured_by_its_log():
    from gradpath_lib.analysis.measured import structure_check

    torch.manual_seed(0)
    model = VanishingChain()
    check = structure_check(model, SHAPE, torch.float64).set_index("layer")
    assert check.loc["a", "measured"] == (6,) and check.agrees.all()
    spectrum = measured_gradient_spectrum(model, torch.randn(2, *SHAPE, dtype=torch.float64), torch.tensor([0, 1]))
    a = spectrum[(spectrum.layer == "a") & (spectrum.timestamp == 6)].iloc[0]
    assert a.grad_norm == 0.0 and -1500 < a.log2_grad_norm < -1100  # about 1e-400: 2 ** -1330


class SeveralOutputs(nn.Module):
    """Returns a dict holding a tensor and a tuple, as a model output does: logits through one more
    Linear, an auxiliary head, and an argmax (an integer output, no gradient)."""

    def __init__(self):
        super().__init__()
        self.a, self.deep, self.head, self.aux = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        logits = self.head(torch.tanh(self.deep(h)))
        return {"logits": logits, "aux": (self.aux(h), logits.argmax(-1))}


def test_the_check_reads_every_output_of_a_model_returning_several():
    from gradpath_lib.analysis.measured import structure_check

    model = SeveralOutputs()
    report = analyze_model(model, (4,))
    assert report.parameters.set_index("module").loc["a", "timestamps"] == (2, 3)  # by the aux head and the logits
    check = structure_check(model, (4,), report=report)
    assert check.agrees.all() and len(check) == 4, check.to_string()
