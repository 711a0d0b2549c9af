"""PNG plots of a run: accuracy per epoch, and the method's per-step trace (steps.csv columns)."""
from __future__ import annotations

from pathlib import Path


def plot_run(rows: list[dict], steps: list[tuple], path: Path, trace: tuple[str, ...]) -> None:
    """`steps`: (epoch, step, *one value per key of `trace`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [r["epoch"] for r in rows]
    for key, label in (("val/acc", "fused"), ("val/acc_audio", "audio"), ("val/acc_visual", "visual")):
        ax1.plot(epochs, [r[key] for r in rows], label=label)
    ax1.set(xlabel="epoch", ylabel="accuracy (selection split)", title="accuracy")
    ax1.legend()
    if steps:
        x = range(len(steps))
        for i, key in enumerate(trace):
            ax2.plot(x, [s[2 + i] for s in steps], lw=0.8, label=key.removeprefix("mod/"))
        ax2.axhline(1.0, color="grey", lw=0.5)
        ax2.set(xlabel="training step", title="modulation")
        ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
