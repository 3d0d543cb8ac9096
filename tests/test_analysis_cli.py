"""`gradpath analyze` on a registry model and on a user's own factory."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

from gradpath_lib.cli import main
from gradpath_lib.commands.analyze import compact_timestamps

USER_MODULE = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.a(x)
        x = x + self.b(x)
        return self.fc(x.mean((2, 3)))

def build():
    return Net()

def build_zero_init():
    """b starts at zero (as timm starts residual branches): no gradient crosses it at first."""
    net = Net()
    nn.init.zeros_(net.b.weight)
    nn.init.zeros_(net.b.bias)
    return net

class DeadGate(nn.Module):
    """mix's output goes through relu(-|z|), whose gradient is zero: mix gets none, and proj
    none along its path through mix."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 2, stride=2)
        self.mix = nn.Linear(4, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.proj(x).mean((2, 3))
        return self.fc(h + torch.relu(-self.mix(h).abs()))
'''


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(list(argv))
    return status, out.getvalue()


def test_user_factory_json(tmp_path, monkeypatch):
    (tmp_path / "my_user_net.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    status, out = run_cli("analyze", "my_user_net:build", "--input", "3x8x8", "--format", "json")
    assert status == 0
    payload = json.loads(out)
    layers = {row["layer"]: row for row in payload["layers"]}
    assert layers["a"]["timestamps"] == [2, 3] and layers["b"]["timestamps"] == [2]
    assert payload["network"]["longest_path"] == 3 and payload["network"]["n_weighted_layers"] == 3


def test_registry_model_csv_and_table():
    status, out = run_cli("analyze", "plain", "--scale", "smoke", "--format", "csv")
    assert status == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("layer,module,position")
    status, table = run_cli("analyze", "plain", "--scale", "smoke")
    assert status == 0 and "longest_shortest_path" in table
    # a plain net: the network's longest shortest path is its longest path, the number of layers
    depth = len(lines) - 1
    assert f"longest_shortest_path: {depth}" in table and f"longest_path: {depth}" in table


def test_bad_inputs_exit_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "registered: " in err and "resnet," in err and "reference designs: shufflenet-v2" in err
    assert main(["analyze", "plain", "--input", "3x"]) == 2
    assert "3x32x32" in capsys.readouterr().err
    assert main(["analyze", "no_such_module_xyz:build"]) == 2
    assert "cannot import" in capsys.readouterr().err
    (tmp_path / "taken").write_text("")
    assert main(["analyze", "plain", "--scale", "smoke", "--figures", "taken"]) == 2
    assert "--figures taken: cannot write the figures there" in capsys.readouterr().err


def test_compact_timestamps():
    assert compact_timestamps((2, 3, 4, 7, 9, 10)) == "2-4 7 9-10"
    assert compact_timestamps(()) == ""


def test_check_measures_the_paths_of_zero_initialised_layers_too(tmp_path, monkeypatch):
    (tmp_path / "my_user_net.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    status, out = run_cli("analyze", "my_user_net:build_zero_init", "--input", "3x8x8", "--check")
    assert status == 0
    assert out.strip().endswith("measured check: 3 of 3 channel groups get gradient at exactly their structural "
                                "timestamps")
    status, out = run_cli("analyze", "my_user_net:build", "--input", "3x8x8", "--check", "--format", "json")
    assert status == 0 and json.loads(out)["check"] == {"groups": 3, "agree": 3, "differ": []}


def test_check_fails_and_names_the_groups_whose_gradient_differs(tmp_path, monkeypatch):
    (tmp_path / "my_user_net.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    status, out = run_cli("analyze", "my_user_net:DeadGate", "--input", "3x8x8", "--check")
    assert status == 1
    summary = out[out.index("measured check:"):].splitlines()
    assert summary[0].startswith("measured check: 1 of 3 channel groups get gradient at exactly their structural "
                                 "timestamps; 2 get none at some timestamps of their paths")
    assert summary[0].endswith("These differ:") and "no path has" not in summary[0]
    assert summary[2].split() == ["proj", "0", "4", "2-3", "2"]  # structural 2-3, measured: none


def test_figures_draw_the_measured_timestamps_and_mark_the_groups_that_differ(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    from gradpath_lib.analysis import analyze_model
    from gradpath_lib.analysis.figures import timestamps_figure
    from gradpath_lib.analysis.measured import structure_check

    (tmp_path / "my_user_net.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    status, _ = run_cli("analyze", "my_user_net:DeadGate", "--input", "3x8x8", "--check", "--figures", "figs")
    assert status == 1  # the check still decides the exit status
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "my_user_net-DeadGate_path_lengths.png", "my_user_net-DeadGate_sources.png",
        "my_user_net-DeadGate_timestamps.png"]

    import my_user_net

    model = my_user_net.DeadGate()
    report = analyze_model(model, (3, 8, 8))
    fig = timestamps_figure({"gate": report}, checks={"gate": structure_check(model, (3, 8, 8), report=report)})
    red = {t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_color() == "tab:red"}
    assert red == {"proj", "mix"}  # the two groups the dead gate starves (see the test above)
    rings = [c for c in fig.axes[0].collections if c.get_label() == "measured gradient"]
    assert len(rings) == 1 and to_rgba("tab:orange") == tuple(rings[0].get_edgecolor()[0])
    plt.close(fig)


def test_figures_of_a_model_with_many_groups_label_every_kth_row():
    import matplotlib.pyplot as plt

    from gradpath_lib.analysis import analyze_model
    from gradpath_lib.analysis.figures import MAX_LABELLED_ROWS, group_labels, timestamps_figure
    from torch import nn

    deep = nn.Sequential(*[nn.Linear(4, 4) for _ in range(2 * MAX_LABELLED_ROWS + 5)])
    report = analyze_model(deep, (4,))
    fig = timestamps_figure({"deep": report})
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == group_labels(report)[::3] and len(ticks) <= MAX_LABELLED_ROWS
    plt.close(fig)
