"""`gradpath analyze` on a registry model and on a user's own factory."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest

from gradpath_lib.cli import main
from gradpath_lib.commands.analyze import TABLE_COLUMNS, compact_timestamps

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
    assert "--figures taken is a file, not a folder" in capsys.readouterr().err


BAD_USER_CODE = {  # module file -> its text, for the factory `f`
    "raising": "def f():\n    raise RuntimeError('boom')\n",
    "needs_arg": "def f(width):\n    pass\n",
    "syntax_error": "def f(:\n",
    "name_error": "undefined_name\n",
}


@pytest.mark.parametrize("spec, expected", [
    ("raising:f", "raising:f: the factory raised RuntimeError: boom, at "),
    ("needs_arg:f", "needs_arg:f: the factory raised TypeError: f() missing 1 required positional argument: "
                    "'width' (it is called with no arguments)"),
    ("syntax_error:f", "syntax_error:f: importing syntax_error raised SyntaxError: "),
    ("name_error:f", "name_error:f: importing name_error raised NameError: name 'undefined_name' is not defined"),
    (":f", "MODEL ':f' names no module before ':'"),
    ("absent_module:f", "No module named 'absent_module'; give a module on the Python path (run from its folder or "
                        "set PYTHONPATH) or a path/to/file.py"),
    ("absent.py:f", "MODEL 'absent.py:f': there is no file absent.py"),
])
def test_errors_of_the_users_code_are_one_line(spec, expected, tmp_path, monkeypatch, capsys):
    for name, text in BAD_USER_CODE.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradpath: error: ") and expected in err and len(err.splitlines()) == 1


def test_a_factory_given_by_file_path_imports_its_neighbours(tmp_path, monkeypatch):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "net_parts.py").write_text(USER_MODULE)
    (folder / "path_net.py").write_text("from net_parts import Net\n\ndef build():\n    return Net()\n")
    monkeypatch.chdir(tmp_path)
    status, out = run_cli("analyze", str(folder / "path_net.py") + ":build", "--input", "3x8x8", "--format", "json")
    assert status == 0 and json.loads(out)["network"]["n_weighted_layers"] == 3


def test_figures_folder_is_checked_and_created_before_the_analysis(tmp_path, monkeypatch, capsys):
    (tmp_path / "taken").write_text("")
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", "absent_module:f", "--figures", "taken"]) == 2  # the folder is refused first
    assert "--figures taken is a file, not a folder" in capsys.readouterr().err
    assert main(["analyze", "absent_module:f", "--figures", "new/figs"]) == 2
    assert (tmp_path / "new" / "figs").is_dir()


@pytest.mark.parametrize("argv, expected", [
    (["shufflenet-v2", "--scale", "paper"], "--scale sizes a registered model; shufflenet-v2 is a reference design"),
    (["my_user_net:build", "--scale", "mini"], "my_user_net:build is built by its own factory: drop --scale"),
    (["shufflenet-v2", "--trust-custom-backward"], "drop --trust-custom-backward"),
])
def test_flags_that_do_not_apply_are_refused(argv, expected, tmp_path, monkeypatch, capsys):
    (tmp_path / "my_user_net.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", *argv]) == 2
    assert expected in capsys.readouterr().err


def test_a_detector_is_analysed_on_its_canvas_by_default():
    from gradpath_lib.models.yolor import INPUT_SIZES

    status, out = run_cli("analyze", "yolor-v3", "--scale", "smoke", "--format", "json")
    side = INPUT_SIZES["smoke"]
    assert status == 0 and json.loads(out)["input"] == f"3x{side}x{side}"


def test_help_defines_every_column_and_network_metric(capsys):
    from gradpath_lib.analysis import analyze_model
    from torch import nn

    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    help_text = capsys.readouterr().out
    metrics = analyze_model(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), (4,)).network
    named = {m.replace("_max", "_mean") for m in metrics}  # "aggregated_features_mean, _max"
    assert all(f"\n  {name}" in help_text or f", {name}" in help_text for name in [*TABLE_COLUMNS, *named])
    words = " ".join(help_text.split())
    assert "(default table)" in words and "(default mini)" in words and "called without arguments" in words


UNSUPPORTED_MODULE = '''
import torch
from torch import nn

class Fourier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.fft.fft2(self.conv(x)).real.mean((2, 3))

class Doubling(nn.Module):
    def forward(self, x):
        return x * 2
'''
MAX_ERROR_LINE = 400  # characters: the first clause and where the supported ops are listed


@pytest.mark.parametrize("factory, clause", [
    ("Fourier", "does not support the call function 'fft_fft2'"),
    ("Doubling", "Doubling has no weighted layer"),
])
def test_unsupported_models_get_a_short_line_pointing_to_the_supported_ops(factory, clause, tmp_path, monkeypatch,
                                                                           capsys):
    (tmp_path / "unsupported_net.py").write_text(UNSUPPORTED_MODULE)
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", f"unsupported_net:{factory}", "--input", "3x8x8"]) == 2
    err = capsys.readouterr().err
    assert clause in err and "gradpath_lib/analysis/op_tables.py" in err and len(err) < MAX_ERROR_LINE


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
