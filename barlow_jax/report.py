"""Pictures and a summary of a training run.

    python -m barlow_jax.report --workdir=DIR [--step=N] [--examples=512]

Writes into ``DIR/report/``:

* ``curves.png``: loss, on/off-diagonal terms and learning rate against the
  step (from ``DIR/metrics.jsonl``); ``knn.png`` (kNN top-1 / top-5) and
  ``health.png`` (embedding std, effective rank) when those were logged.
* ``c_matrix.png``: the top-left 64 x 64 block of the Barlow Twins
  cross-correlation C = z1n^T z2n / N (``methods.barlow_twins.
  cross_correlation``) of two augmented views (the training augmentation,
  ``data.augment_jax.two_views``) of ``--examples`` eval images at the
  checkpoint, beside the identity the loss pulls it to. The network runs in
  training mode (BN batch statistics, as in the loss; nothing is updated).
* ``embedding_std.png``: per-dimension std of the embeddings z (and of the
  backbone features) over the eval images, inference mode, sorted.
* ``pca.png``: the first two principal components of the backbone features
  of the eval images, coloured by class.
* ``summary.md``: run settings, last/best metrics, linear and semi-supervised
  results when present, collapse warnings, the pictures.

The C picture is ``pictures.c_matrix_image`` (NumPy only), the one the
trainer logs to TensorBoard. Matplotlib (Agg backend) is imported only to draw the PNGs.
"""

from __future__ import annotations

import json
import sys
from typing import Dict, List, Optional

import numpy as np

from barlow_jax import paths
from barlow_jax.pictures import c_block


# ---------------------------------------------------------------- metrics

def read_metrics(workdir: str) -> List[Dict]:
    path = paths.join(workdir, "metrics.jsonl")
    if not paths.exists(path):
        return []
    return [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]


def _is_lead() -> bool:
    import jax
    return jax.process_index() == 0


def _savefig(fig, out_dir: str, name: str):
    """PNG into ``out_dir`` (local or gs://...): rendered in memory, written by process 0."""
    import io
    if not _is_lead():
        return
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    paths.write_bytes(paths.join(out_dir, name), buf.getvalue())


def _series(records, key):
    """(steps, values) of ``key``; -1 ranks mean "not computed" (health.py)."""
    skip = -1.0 if key in ("embed_eff_rank", "embed_rank_frac") else None
    pts = [(r["step"], r[key]) for r in records
           if "step" in r and isinstance(r.get(key), (int, float)) and r[key] != skip]
    return (np.array([p[0] for p in pts]), np.array([p[1] for p in pts], np.float64))


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(records: List[Dict], out_dir: str) -> List[str]:
    """curves.png, knn.png, health.png (those with data); returns the file names."""
    plt = _plt()
    written = []
    panels = [(k, lbl) for k, lbl in (("loss", "loss"), ("on_diag", "on-diagonal term"),
                                      ("off_diag", "off-diagonal term (unweighted)"),
                                      ("lr", "learning rate (weights)"))
              if len(_series(records, k)[0])]
    if panels:
        fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.3 * len(panels)), sharex=True,
                                 squeeze=False)
        for ax, (key, label) in zip(axes[:, 0], panels):
            x, y = _series(records, key)
            ax.plot(x, y, lw=1.4)
            if key != "lr" and np.all(y > 0) and y.max() / max(y.min(), 1e-12) > 20:
                ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        fig.suptitle("training curves")
        fig.tight_layout()
        _savefig(fig, out_dir, "curves.png")
        plt.close(fig)
        written.append("curves.png")
    if len(_series(records, "knn_top1")[0]):
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for key in ("knn_top1", "knn_top5"):
            x, y = _series(records, key)
            if len(x):
                ax.plot(x, y, marker="o", ms=3, label=key.replace("knn_", "kNN "))
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("kNN monitor (eval split)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        _savefig(fig, out_dir, "knn.png")
        plt.close(fig)
        written.append("knn.png")
    health = [(k, lbl) for k, lbl in (("embed_std_mean", "embedding std (mean over dims)"),
                                      ("embed_std_min", "embedding std (min over dims)"),
                                      ("embed_eff_rank", "effective rank of z"))
              if len(_series(records, k)[0])]
    if health:
        fig, axes = plt.subplots(len(health), 1, figsize=(7, 2.2 * len(health)), sharex=True,
                                 squeeze=False)
        for ax, (key, label) in zip(axes[:, 0], health):
            x, y = _series(records, key)
            ax.plot(x, y, lw=1.4, color="tab:green")
            ax.set_ylabel(label, fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        fig.suptitle("embedding health (training batches)")
        fig.tight_layout()
        _savefig(fig, out_dir, "health.png")
        plt.close(fig)
        written.append("health.png")
    return written


# ---------------------------------------------------------------- checkpoint pictures

def checkpoint_statistics(config, variables, images: np.ndarray, labels: np.ndarray,
                          seed: int = 0) -> Dict[str, np.ndarray]:
    """C of two augmented views (train-mode BN), z and features (inference mode).

    Returns {'c': [D, D], 'z': [N, D], 'features': [N, F], 'labels': [N]}
    (NumPy). Runs on the default device, one batch: keep ``images`` small.
    """
    import jax
    import jax.numpy as jnp
    from barlow_jax.data import augment_jax
    from barlow_jax.eval.features import Embedder
    from barlow_jax.methods.barlow_twins import cross_correlation
    from barlow_jax.models import build_ssl_net
    from barlow_jax.parallel import make_mesh

    net = build_ssl_net(config)
    tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    @jax.jit
    def views_c(tree, images, key):
        v1, v2 = augment_jax.two_views(images, key, config.data)
        z1 = net.apply(tree, v1, train=True, mutable=["batch_stats"])[0]["z"]
        z2 = net.apply(tree, v2, train=True, mutable=["batch_stats"])[0]["z"]
        return cross_correlation(z1, z2)

    c = np.asarray(views_c(tree, jnp.asarray(images), jax.random.key(seed)))
    mesh = make_mesh(jax.devices()[:1])
    out = Embedder(config, mesh, batch_size=min(len(images), 256)).embed(variables, images)
    return {"c": c, "z": out["z"], "features": out["features"], "labels": labels}


def plot_checkpoint(stats: Dict[str, np.ndarray], out_dir: str, step: int) -> List[str]:
    plt = _plt()
    written = []
    block = c_block(stats["c"])
    d = block.shape[0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    for ax, m, title in ((axes[0], block, f"C (first {d} dims), step {step}"),
                         (axes[1], np.eye(d), "target: identity")):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, fraction=0.046, pad=0.04)
    _savefig(fig, out_dir, "c_matrix.png")
    plt.close(fig)
    written.append("c_matrix.png")

    fig, ax = plt.subplots(figsize=(7, 3.2))
    lo, hi = np.inf, 0.0
    for key, label in (("z", "embedding z"), ("features", "backbone features")):
        std = np.sort(stats[key].std(axis=0))[::-1]
        lo, hi = min(lo, std.min()), max(hi, std.max())
        ax.plot(np.arange(1, len(std) + 1), std, label=f"{label} ({len(std)} dims)")
    ax.set_xlabel("dimension (sorted by std)")
    ax.set_ylabel("std over eval images")
    if hi > 30 * max(lo, 1e-12):  # dead dimensions show up on a log axis
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(lo, hi * 1e-8))
    ax.set_title(f"per-dimension std, step {step} (inference mode)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _savefig(fig, out_dir, "embedding_std.png")
    plt.close(fig)
    written.append("embedding_std.png")

    feats = stats["features"] - stats["features"].mean(axis=0)
    u, s, _ = np.linalg.svd(feats, full_matrices=False)
    pcs = u[:, :2] * s[:2]
    if pcs.shape[1] < 2:
        pcs = np.pad(pcs, ((0, 0), (0, 2 - pcs.shape[1])))
    explained = s[:2] ** 2 / max(np.sum(s ** 2), 1e-12)
    fig, ax = plt.subplots(figsize=(5.6, 5))
    labels = stats["labels"]
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes[:20]):
        sel = labels == c
        ax.scatter(pcs[sel, 0], pcs[sel, 1], s=6, color=cmap(i % cmap.N), label=str(c))
    if len(classes) <= 20:
        ax.legend(title="class", fontsize=7, markerscale=2, loc="best")
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.1f}% var)")
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.1f}% var)" if len(explained) > 1 else "PC 2")
    ax.set_title(f"backbone features of eval images, step {step}")
    fig.tight_layout()
    _savefig(fig, out_dir, "pca.png")
    plt.close(fig)
    written.append("pca.png")
    return written


# ---------------------------------------------------------------- summary

def _fmt(v, digits=4):
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def write_summary(workdir: str, out_dir: str, records: List[Dict], pictures: List[str],
                  config=None, step: Optional[int] = None, stats=None) -> str:
    from barlow_jax.health import collapse_warnings, embedding_health
    lines = [f"# Run report: `{paths.absolute(workdir)}`", ""]
    if config is not None:
        lines += [f"- method: {config.method}; backbone {config.model.name} (width "
                  f"{config.model.width}); projector {config.projector.spec}",
                  f"- data: {config.data.source} {config.data.get('path', '')} "
                  f"({config.data.image_size} px), batch {config.batch_size}"]
    if step is not None:
        lines.append(f"- checkpoint pictured: step {step}")
    if records:
        last = records[-1]
        lines.append(f"- logged steps: {len(records)}, last step {last.get('step')}")
        keys = [k for k in ("loss", "on_diag", "off_diag", "mean_abs_off_diag", "knn_top1",
                            "knn_top5", "embed_std_mean", "embed_eff_rank", "pairs_per_sec")
                if k in last]
        lines += ["", "| metric (last logged) | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(last[k])} |" for k in keys]
        knn = [r for r in records if "knn_top1" in r]
        if knn:
            best = max(knn, key=lambda r: r["knn_top1"])
            lines += ["", f"Best kNN top-1: {best['knn_top1']:.2f}% at step {best['step']}."]
            if knn[0]["step"] == 0 and len(knn) > 1:  # config.eval.knn_at_start
                lines.append(f"Untrained network (step 0): {knn[0]['knn_top1']:.2f}%; last "
                             f"(step {knn[-1]['step']}): {knn[-1]['knn_top1']:.2f}%.")
        from barlow_jax.methods import METHODS
        warnings = collapse_warnings(last, METHODS.get(config.method) if config else None)
        lines += ["", "## Collapse warnings (last logged step)", ""]
        lines += [f"- {w}" for w in warnings] if warnings else ["- none"]
    if stats is not None:
        import jax.numpy as jnp
        c = stats["c"]
        diag = np.diag(c)
        off = np.abs(c - np.diag(diag)).sum() / max(c.shape[0] * (c.shape[0] - 1), 1)
        health = {k: float(v) for k, v in embedding_health(jnp.asarray(stats["z"])).items()}
        lines += ["", "## At the checkpoint (eval images)", "",
                  f"- C: mean diagonal {diag.mean():.3f}, mean |off-diagonal| {off:.3f} "
                  f"({c.shape[0]} dims, {len(stats['labels'])} images, two augmented views)",
                  f"- z: effective rank {health['embed_eff_rank']:.1f} "
                  f"({100 * health['embed_rank_frac']:.1f}% of the possible), std mean "
                  f"{health['embed_std_mean']:.3g}, min {health['embed_std_min']:.3g}"]
    for name, title in (("linear_eval.json", "Linear probe"), ("semisup_eval.json", None)):
        path = paths.join(workdir, name)
        if not paths.exists(path):
            continue
        res = json.loads(paths.read_text(path))
        entries = {title: res} if title else {f"Semi-supervised {k}": v for k, v in res.items()}
        for t, r in entries.items():
            if r.get("final"):
                lines += ["", f"## {t}", "",
                          f"- final (epoch {r['final']['epoch']}/{r['setup']['epochs']}): top-1 "
                          f"{r['final']['top1']:.2f}%, top-5 {r['final']['top5']:.2f}%; best "
                          f"top-1 {r['best']['top1']:.2f}% (epoch {r['best']['top1_epoch']})"
                          + ("" if r.get("complete") else " — run not finished")]
    if pictures:
        lines += ["", "## Pictures", ""] + [f"![{p}]({p})" for p in pictures]
    path = paths.join(out_dir, "summary.md")
    if _is_lead():
        paths.write_text(path, "\n".join(lines) + "\n")
    return path


def make_report(workdir: str, *, step: Optional[int] = None, examples: int = 512,
                log=print, config=None) -> Dict:
    """Writes DIR/report/*; returns {'pictures': [...], 'summary': path}.

    ``config``: the run's config when it holds what config.json cannot (the arrays
    source's images, in a notebook); default: the workdir's config.json.
    """
    out_dir = paths.join(workdir, "report")
    records = read_metrics(workdir)
    has_ckpt = paths.isdir(paths.join(workdir, "checkpoints"))
    if not records and not has_ckpt:
        raise FileNotFoundError(f"{workdir} has neither metrics.jsonl nor checkpoints/; point "
                                f"--workdir at the directory a training run wrote.")
    paths.makedirs(out_dir)
    pictures = plot_curves(records, out_dir)
    stats = None
    if has_ckpt:
        from barlow_jax import checkpointing
        from barlow_jax.eval.features import load_labelled
        saved, variables, step = checkpointing.load_variables(workdir, step)
        config = config if config is not None else saved
        data = load_labelled(config.data, config.data.eval_split, max_examples=examples,
                             seed=int(config.seed))
        stats = checkpoint_statistics(config, variables, data.images, data.labels,
                                      seed=int(config.seed))
        pictures += plot_checkpoint(stats, out_dir, step)
    summary = write_summary(workdir, out_dir, records, pictures, config, step, stats)
    log(f"report: {', '.join(pictures)} and summary.md in {out_dir}")
    return {"pictures": pictures, "summary": summary, "dir": out_dir}


def main(argv=None):
    from absl import app, flags
    flags.DEFINE_string("workdir", None, "Directory of a training run.")
    flags.DEFINE_integer("step", None, "Checkpoint to picture (default: the latest).")
    flags.DEFINE_integer("examples", 512, "Eval images for C, std and PCA.")
    flags.mark_flag_as_required("workdir")
    from barlow_jax import distributed
    distributed.define_flags(flags)  # a checkpoint of any topology loads on this one

    def run(argv):
        from absl import logging
        logging.set_verbosity(logging.WARNING)  # JAX's backend notices at INFO
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
        f = flags.FLAGS
        try:
            distributed.initialize_from_flags(f)
            make_report(f.workdir, step=f.step, examples=f.examples)
        except (ValueError, FileNotFoundError, distributed.DistributedInitError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(1)

    from barlow_jax.cli import parse_flags
    app.run(run, argv, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
