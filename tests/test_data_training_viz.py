import matplotlib.figure
import pytest
import torch
from torch import nn

import layers
from layers.data import batches, load_digits
from layers.training import accuracy, fit
from layers import viz


def test_digits_split_is_fixed_and_stratified():
    d = load_digits()
    assert d.x_train.shape == (1347, 64) and d.x_test.shape == (450, 64)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0
    assert torch.equal(load_digits().y_test, d.y_test)                  # same split every time
    counts = torch.bincount(d.y_test, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47                     # stratified: ~45 per class
    images = load_digits(images=True)
    assert images.x_train.shape == (1347, 1, 8, 8)
    assert torch.equal(images.x_train.reshape(-1, 64), d.x_train)


def test_batches_cover_every_row_once():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    seen = torch.cat([yb for _, yb in batches(x, y, 3, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    assert [len(yb) for _, yb in batches(x, y, 4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="batch_size >= 1"):
        next(batches(x, y, 0))
    with pytest.raises(ValueError, match="10 rows but y has 9"):
        next(batches(x, y[:9], 2))


def test_fit_learns_digits_and_is_deterministic(capsys):
    d = load_digits()

    def run():
        torch.manual_seed(0)
        model = nn.Sequential(layers.Linear(64, 32), layers.ReLU(), layers.Linear(32, 10))
        return model, fit(model, d, epochs=3, lr=0.05, log_every=1)

    model, h1 = run()
    out = capsys.readouterr().out
    assert out.count("epoch") == 3 and "loss" in out and "test acc" in out
    _, h2 = run()
    assert h1 == h2
    assert h1["test_acc"][-1] > 0.85
    assert h1["test_acc"][-1] == pytest.approx(accuracy(model, d.x_test, d.y_test))
    assert h1["loss"][-1] < h1["loss"][0]


def test_fit_rejects_unknown_optimizer_and_reports_divergence():
    d = load_digits()
    with pytest.raises(ValueError, match="'sgd' or 'adam', got 'rmsprop'"):
        fit(nn.Linear(64, 10), d, optimizer="rmsprop")
    with pytest.raises(FloatingPointError, match="loss became"):
        fit(nn.Linear(64, 10), d, epochs=1, verbose=False,
            loss_fn=lambda logits, y: logits.sum() * float("nan"))


def test_accuracy_restores_training_mode():
    model = nn.Sequential(nn.Linear(64, 10))
    model.train()
    accuracy(model, torch.zeros(2, 64), torch.zeros(2, dtype=torch.int64))
    assert model.training


def test_viz_helpers_return_labelled_figures():
    x = torch.linspace(-3, 3, 61)
    y, dy = viz.function_and_derivative(layers.Tanh(), x)
    torch.testing.assert_close(dy, 1 - torch.tanh(x) ** 2)
    figs = [
        viz.plot_function_and_derivative({"tanh": layers.Tanh(), "relu": layers.ReLU()}, x),
        viz.plot_histograms({"a": torch.randn(100), "b": torch.rand(100)}, ncols=1),
        viz.plot_training_curves({"run": {"epoch": [1, 2], "loss": [1.0, 0.5], "test_acc": [0.5, 0.7]}}),
        viz.plot_bars({"a": 1.0, "b": 2.0}, title="t", ylabel="y"),
        viz.plot_bars({"g1": {"a": 1.0, "b": 2.0}, "g2": {"a": 2.0, "b": 1.0}}, title="t", ylabel="y", log=True),
        viz.plot_image_grid(torch.rand(5, 1, 8, 8), titles=list("abcde"), title="grid"),
    ]
    for fig in figs:
        assert isinstance(fig, matplotlib.figure.Figure)
        labelled = [ax for ax in fig.axes if ax.get_xlabel() or ax.get_title()]
        assert labelled, "every figure needs labelled axes or titles"


def test_validation_split_comes_out_of_training_and_leaves_test_alone():
    plain, split = load_digits(), load_digits(val_size=0.2)
    assert plain.x_val is None and plain.y_val is None
    assert torch.equal(plain.x_test, split.x_test) and torch.equal(plain.y_test, split.y_test)
    assert len(split.x_train) + len(split.x_val) == len(plain.x_train)
    rows = lambda x: {tuple(r.tolist()) for r in x}                  # noqa: E731
    assert not rows(split.x_val) & rows(split.x_train)               # disjoint
    assert set(split.y_val.tolist()) == set(range(10))                # stratified: every class
    with pytest.raises(ValueError, match="val_size"):
        load_digits(val_size=1.0)


def test_fit_reports_validation_not_test_when_there_is_a_validation_split(capsys):
    data = load_digits(val_size=0.2)
    torch.manual_seed(0)
    history = fit(nn.Sequential(layers.Linear(64, 10)), data, epochs=2, lr=0.1)
    assert set(history) == {"epoch", "loss", "train_acc", "val_acc"}
    out = capsys.readouterr().out
    assert "val acc" in out and "test acc" not in out


def test_fit_without_the_training_set_evaluation_trains_the_same_model(capsys):
    data = load_digits(val_size=0.2)
    runs = []
    for eval_train in (True, False):
        torch.manual_seed(0)
        # batch norm's running statistics would move, and dropout's masks shift, if the extra
        # pass ran in train mode or drew random numbers
        model = nn.Sequential(layers.Linear(64, 16), nn.BatchNorm1d(16), layers.ReLU(), nn.Dropout(0.2),
                              layers.Linear(16, 10))
        runs.append((fit(model, data, epochs=2, lr=0.1, eval_train=eval_train), model))
    (full, model_full), (lean, model_lean) = runs
    assert set(lean) == {"epoch", "loss", "val_acc"} and "train_acc" in full
    assert lean["loss"] == full["loss"] and lean["val_acc"] == full["val_acc"]
    lean_state = model_lean.state_dict()
    for name, value in model_full.state_dict().items():
        assert torch.equal(value, lean_state[name]), name
    lines = capsys.readouterr().out.splitlines()
    assert "train acc" in lines[0] and "train acc" not in lines[-1] and "val acc" in lines[-1]


def test_cosine_schedule_decays_the_rate_to_zero():
    data = load_digits()
    torch.manual_seed(0)
    frozen_end = nn.Sequential(layers.Linear(64, 10))
    snapshots = []
    fit(frozen_end, data, epochs=2, lr=0.1, lr_schedule="cosine", verbose=False,
        on_step=lambda m, step: snapshots.append(m[0].weight.detach().clone()))
    # momentum carries the first steps on, so compare the second step with the last
    first_step = (snapshots[1] - snapshots[0]).norm()
    last_step = (snapshots[-1] - snapshots[-2]).norm()
    assert last_step < 0.05 * first_step
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(frozen_end, data, epochs=1, lr_schedule="step")


def test_training_curves_show_validation_accuracy_when_the_run_has_it():
    history = {"epoch": [1, 2], "loss": [1.0, 0.5], "train_acc": [0.5, 0.7], "val_acc": [0.4, 0.6]}
    fig = viz.plot_training_curves({"run": history})
    assert fig.axes[1].get_title() == "validation accuracy"
    assert list(fig.axes[1].lines[0].get_ydata()) == [0.4, 0.6]
