"""Numbers and figures a reader sees: the demo's loss overview across late_loss, a one-class ROC."""

from __future__ import annotations

import numpy as np

from medlearn.mama.demo import loss_overview


def test_loss_overview_compares_like_with_like():
    # steps 1-2: CLIP only; from step 3 (late_loss=2) the total holds five terms and jumps
    recs = [
        {"step": 1, "loss": 5.4, "clip": 5.4},
        {"step": 2, "loss": 5.1, "clip": 5.1},
        {"step": 3, "loss": 24.0, "clip": 5.0, "sla_t2i": 4.9},
        {"step": 4, "loss": 23.6, "clip": 4.8, "sla_t2i": 4.7},
    ]
    assert loss_overview(recs, late_loss=2) == {
        "clip_loss_first": 5.4,
        "clip_loss_last": 4.8,
        "total_loss_first_after_late": 24.0,
        "total_loss_last": 23.6,
    }
    # late_loss beyond the run: the total is the CLIP loss throughout
    assert loss_overview(recs[:2], late_loss=10)["total_loss_last"] == 5.1
    assert loss_overview([], late_loss=2)["clip_loss_first"] is None


def test_roc_of_a_one_class_split_says_so(tmp_path, monkeypatch):
    from medlearn.mama.eval import figures

    seen = {}

    def keep(fig, path):
        seen["fig"] = fig
        return path

    monkeypatch.setattr(figures, "save_figure", keep)
    y = np.zeros(6, int)  # cancer: every test image negative
    probs = np.tile([0.7, 0.3], (6, 1))
    figures.plot_roc(y, probs, ["negative", "cancer"], "zero-shot cancer", tmp_path / "roc.png")
    ax = seen["fig"].axes[0]
    assert ax.get_legend() is None  # no empty legend
    assert [t.get_text() for t in ax.texts] == [figures.ONE_CLASS]
    assert "one class" in figures.ONE_CLASS
    figures.plot_roc(
        np.array([0, 1, 0, 1]), np.tile([0.5, 0.5], (4, 1)), ["negative", "cancer"], "t", tmp_path / "b.png"
    )
    assert seen["fig"].axes[0].get_legend() is not None and not seen["fig"].axes[0].texts
