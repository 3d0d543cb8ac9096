"""Recurrent modules in the gradient path analysis: `nn.RNN`, `nn.LSTM`, `nn.GRU` and their cells are
unrolled step by step (`analysis.unroll`); the unrolled copy computes what the module computes, and
the structural timestamps through time are the measured ones."""

import pytest
import torch
from torch import nn

from conftest import assert_structure_is_measured
from gradpath_lib.analysis import analyze_model
from gradpath_lib.analysis.designs import LastStepClassifier, recurrent_paths_table
from gradpath_lib.analysis.figures import time_paths_figure
from gradpath_lib.analysis.unroll import UnrolledCell, UnrolledRecurrent, unroll_modules
from gradpath_lib.errors import GradpathError

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

STEPS, FEATURES, HIDDEN = 5, 4, 6

MODULES = {
    "lstm": lambda: nn.LSTM(FEATURES, HIDDEN),
    "lstm, 2 layers, bidirectional": lambda: nn.LSTM(FEATURES, HIDDEN, num_layers=2, bidirectional=True),
    "lstm, batch first, no bias": lambda: nn.LSTM(FEATURES, HIDDEN, batch_first=True, bias=False),
    "lstm, projected, 2 layers, bidirectional": lambda: nn.LSTM(FEATURES, HIDDEN, num_layers=2, bidirectional=True,
                                                                proj_size=3),
    "gru": lambda: nn.GRU(FEATURES, HIDDEN),
    "gru, 3 layers, batch first": lambda: nn.GRU(FEATURES, HIDDEN, num_layers=3, batch_first=True),
    "gru, bidirectional": lambda: nn.GRU(FEATURES, HIDDEN, bidirectional=True),
    "rnn tanh, 2 layers": lambda: nn.RNN(FEATURES, HIDDEN, num_layers=2),
    "rnn relu, bidirectional": lambda: nn.RNN(FEATURES, HIDDEN, nonlinearity="relu", bidirectional=True),
}


def leaves(outputs) -> list[torch.Tensor]:
    return torch.utils._pytree.tree_leaves(outputs)


def assert_same_outputs(module: nn.Module, *args) -> None:
    unrolled = unroll_modules(module)
    assert unrolled is not module
    expected, got = leaves(module(*args)), leaves(unrolled(*args))
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", MODULES)
def test_the_unrolled_recurrence_computes_the_modules_outputs_and_final_states(name):
    rnn = MODULES[name]().eval()
    batched = torch.randn(2, STEPS, FEATURES) if rnn.batch_first else torch.randn(STEPS, 2, FEATURES)
    assert_same_outputs(rnn, batched)
    assert_same_outputs(rnn, torch.randn(STEPS, FEATURES))  # unbatched
    d = 2 if rnn.bidirectional else 1
    h0 = torch.randn(rnn.num_layers * d, 2, rnn.proj_size or HIDDEN)
    hx = (h0, torch.randn(rnn.num_layers * d, 2, HIDDEN)) if isinstance(rnn, nn.LSTM) else h0
    assert_same_outputs(rnn, batched, hx)


@pytest.mark.parametrize("cell", [nn.LSTMCell(FEATURES, HIDDEN), nn.GRUCell(FEATURES, HIDDEN),
                                  nn.RNNCell(FEATURES, HIDDEN, nonlinearity="relu")], ids=type)
def test_an_unrolled_cell_computes_the_cells_step(cell):
    assert isinstance(unroll_modules(cell), UnrolledCell)
    assert_same_outputs(cell, torch.randn(3, FEATURES))
    assert_same_outputs(cell, torch.randn(FEATURES))
    h = torch.randn(3, HIDDEN)
    assert_same_outputs(cell, torch.randn(3, FEATURES), (h, torch.randn(3, HIDDEN)) if isinstance(cell, nn.LSTMCell) else h)


class CellLoop(nn.Module):
    """A loop over the steps written with an nn.LSTMCell, classifying from the last hidden state."""

    def __init__(self):
        super().__init__()
        self.cell, self.head = nn.LSTMCell(FEATURES, HIDDEN), nn.Linear(HIDDEN, 3)

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], HIDDEN)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.head(h)


def test_unrolling_replaces_nested_modules_in_a_copy():
    model = LastStepClassifier(nn.LSTM(FEATURES, HIDDEN, batch_first=True))
    unrolled = unroll_modules(model)
    assert isinstance(unrolled.rnn, UnrolledRecurrent) and isinstance(model.rnn, nn.LSTM)
    assert {name for name, _ in unrolled.rnn.named_children()} == {"ih_l0", "hh_l0"}
    # what a model's forward may read of its recurrent module
    assert (unrolled.rnn.input_size, unrolled.rnn.hidden_size, unrolled.rnn.bidirectional) == (FEATURES, HIDDEN, False)


@pytest.mark.parametrize("kind", [nn.RNN, nn.LSTM, nn.GRU], ids=lambda k: k.__name__)
def test_timestamps_through_time(kind):
    """The input gates of step t (0-based) reach the last step's output through the steps after it.
    A plain RNN's only path crosses `hh` at each of them: one timestamp, STEPS - t + 1 (with the
    head). An LSTM's cell state and a GRU's update gate carry step t's state to the end through no
    weighted layer, so every timestamp from 2 (ih, then the head) to STEPS - t + 1 arrives: like a
    residual shortcut, the gating gives every step a short gradient path."""
    report = analyze_model(LastStepClassifier(kind(FEATURES, HIDDEN, batch_first=True)), (STEPS, FEATURES))
    by_step = {g.start: g.timestamps for g in report.groups if g.position.name == "rnn.ih_l0"}
    longest = {t: STEPS - t + 1 for t in range(STEPS)}
    if kind is nn.RNN:
        assert by_step == {t: (longest[t],) for t in range(STEPS)}
        assert report.network["longest_shortest_path"] == STEPS + 1
    else:
        assert by_step == {t: tuple(range(2, longest[t] + 1)) for t in range(STEPS)}
        assert report.network["longest_shortest_path"] == 2
    assert {g.position.name for g in report.groups} == {"rnn.ih_l0", "rnn.hh_l0", "head"} | {
        f"rnn.hh_l0@{t}" for t in range(1, STEPS)}


@pytest.mark.parametrize("model", [
    lambda: LastStepClassifier(nn.LSTM(FEATURES, HIDDEN, batch_first=True, num_layers=2, bidirectional=True)),
    lambda: LastStepClassifier(nn.GRU(FEATURES, HIDDEN, batch_first=True, num_layers=2)),
    lambda: LastStepClassifier(nn.RNN(FEATURES, HIDDEN, batch_first=True, bidirectional=True)),
    CellLoop,
], ids=["lstm 2 layers bidirectional", "gru 2 layers", "rnn bidirectional", "lstm cell loop"])
def test_measured_support_equals_structural_timestamps(model):
    assert_structure_is_measured(model(), (STEPS, FEATURES))


def test_a_packed_sequence_is_refused_by_name():
    rnn = UnrolledRecurrent(nn.LSTM(FEATURES, HIDDEN))
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(STEPS, 2, FEATURES), [STEPS, 3])
    with pytest.raises(GradpathError, match="PackedSequence"):
        rnn(packed)


def test_the_chapters_table_and_figure_of_paths_through_time(tmp_path):
    table = recurrent_paths_table(sequence=(6, 3), hidden=4)
    assert set(table.design) == {"Elman RNN (tanh)", "GRU", "LSTM"}
    for design, rows in table.groupby("design"):
        after = rows["steps after it"]
        assert sorted(after) == list(range(6))
        assert (rows["longest path"] == after + 2).all()
        if design.startswith("Elman"):
            assert (rows["shortest path"] == after + 2).all() and (rows.paths == 1).all()
        else:  # a gated carry or the hidden Linear at every later step
            assert (rows["shortest path"] == 2).all() and (rows.paths == 2 ** after).all()
    time_paths_figure(table, tmp_path)
    assert (tmp_path / "recurrent_paths.png").stat().st_size > 0
