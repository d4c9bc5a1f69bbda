"""docs/config.md, generated: every key of barlow_jax/defaults.py with its default and meaning.

    python -m barlow_jax.config_doc            # rewrites docs/config.md
    python -m barlow_jax.config_doc --check    # exit 1 when docs/config.md is stale

Defaults are read from ``barlow_jax.defaults.get_config()``; meanings from
``DESCRIPTIONS`` below (one entry per key; ``<view>`` stands for both
``view1`` and ``view2``). tests/test_onboarding_docs.py fails when a key of
base.py has no description, a description names no key, or docs/config.md
differs from what this module writes: add the meaning here and rerun.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "config.md")

SECTIONS = {
    "": "Run",
    "model": "Backbone (`model.*`)",
    "projector": "Projector head (`projector.*`)",
    "predictor": "Predictor head (`predictor.*`, BYOL and SimSiam)",
    "loss": "Loss (`loss.*`)",
    "optimizer": "Optimizer and schedule (`optimizer.*`)",
    "data": "Data (`data.*`)",
    "data.augment": "Augmentation of each view (`data.augment.view1.*`, `data.augment.view2.*`)",
    "eval": "kNN monitor and evaluation (`eval.*`)",
    "online_probe": "Online linear probe (`online_probe.*`)",
    "wandb": "Weights & Biases (`wandb.*`)",
    "step": "How the step computes, not what (`step.*`, docs/performance.md)",
}

DESCRIPTIONS: Dict[str, str] = {
    "method": "SSL method: 'barlow_twins', 'vicreg', 'simclr', 'byol' or 'simsiam' "
              "(docs/methods.md).",
    "seed": "Seeds parameter init, data order and every augmentation; a resumed run redraws "
            "the same numbers.",
    "batch_size": "Global batch in image pairs, over all devices and hosts; must divide by "
                  "the device count.",
    "num_epochs": "Run length in epochs of the training split (used when num_train_steps "
                  "is -1).",
    "num_train_steps": "Run length in steps; > 0 overrides num_epochs. May change on resume "
                       "(the schedule is recomputed for the new total).",
    "log_every_steps": "Steps between progress lines and metrics.jsonl records.",
    "checkpoint_every_steps": "Steps between orbax checkpoints (a checkpoint is also "
                              "written at the end and on Ctrl-C / SIGTERM).",
    "keep_checkpoints": "How many of the latest checkpoints are kept.",
    "eval_every_steps": "kNN monitor period in steps (on the eval split); 0 turns it off.",
    "compute_dtype": "Activation dtype: 'auto' (bfloat16 on TPUs and GPUs with bf16 units, "
                     "float16 with dynamic loss scaling on older GPUs such as T4/V100, "
                     "float32 on CPUs), 'bfloat16', 'float16' or 'float32'. Parameters "
                     "are always float32. May change on resume.",
    "profile_steps": "'START:STOP': write a jax.profiler trace of those steps to "
                     "workdir/profile ('' = off).",
    "model.name": "Backbone: 'resnet18', 'resnet34', 'resnet50' (torchvision-exact) or "
                  "'resnet_tiny' (one BasicBlock per stage, for tests and CPUs).",
    "model.width": "Channels of the first stage (64 in torchvision; smaller = faster).",
    "model.cifar_stem": "3x3 stride-1 first conv and no max-pool (for 32x32 images) "
                        "instead of the 7x7 stride-2 conv + max-pool.",
    "model.zero_init_residual": "Last BatchNorm scale of every residual block starts at 0 "
                                "(torchvision zero_init_residual, as the BT paper).",
    "projector.spec": "Projector widths 'A-B-C': Linear-BN-ReLU blocks, then a last Linear "
                      "(the paper: '8192-8192-8192'; '' = no projector).",
    "projector.hidden_bias": "Bias in the hidden Linear layers.",
    "projector.last_bias": "Bias in the last Linear layer.",
    "projector.last_bn": "BatchNorm after the last Linear layer (SimCLR, SimSiam).",
    "projector.last_bn_affine": "Parameters of that last BN: 'scale_bias', 'scale' (SimCLR) "
                                "or 'none' (SimSiam).",
    "predictor.spec": "Predictor widths (BYOL '4096-256', SimSiam '512-2048'); '' = none.",
    "predictor.hidden_bias": "Bias in the predictor's hidden Linear layers.",
    "predictor.last_bias": "Bias in the predictor's last Linear layer.",
    "predictor.last_bn": "BatchNorm after the predictor's last Linear layer.",
    "predictor.last_bn_affine": "Parameters of that BN: 'scale_bias', 'scale' or 'none'.",
    "loss.lambd": "Barlow Twins weight of the off-diagonal terms (0.0051 in the paper).",
    "loss.sim_coeff": "VICReg invariance coefficient.",
    "loss.std_coeff": "VICReg variance coefficient.",
    "loss.cov_coeff": "VICReg covariance coefficient.",
    "loss.temperature": "SimCLR softmax temperature.",
    "loss.ema_start": "BYOL target EMA rate at step 0 (rises to ema_end on a cosine).",
    "loss.ema_end": "BYOL target EMA rate at the last step.",
    "loss.simclr_loss_scale": "2.0 = the official tf2 mean(loss_a + loss_b); 1.0 = the mean "
                              "over the 2N anchors (solo-learn).",
    "loss.target_init": "BYOL target at step 0: 'copy' of the online network or "
                        "'independent' (its own init, as deepmind's BYOL).",
    "optimizer.name": "'lars' (the BT paper's, lr after momentum), 'simclr_lars', "
                      "'solo_lars' (solo-learn) or 'sgd' (SimSiam); see barlow_jax/optim.py.",
    "optimizer.lr_weights": "Peak learning rate of the weights, per 256 pairs when "
                            "scale_lr_by_batch (the paper: 0.2). May change on resume.",
    "optimizer.lr_biases": "Peak learning rate of biases and BN parameters ('lars' only; "
                           "the paper: 0.0048). May change on resume.",
    "optimizer.scale_lr_by_batch": "Multiply the learning rates by batch_size / 256.",
    "optimizer.weight_decay": "Weight decay of the weights (not biases/BN); the paper 1.5e-6.",
    "optimizer.momentum": "Momentum.",
    "optimizer.eta": "LARS trust coefficient (0.001 in the paper, 0.02 in solo-learn).",
    "optimizer.warmup_epochs": "Linear warm-up from 0, in epochs.",
    "optimizer.final_lr_fraction": "Cosine decay ends at this fraction of the peak.",
    "optimizer.fix_predictor_lr": "'sgd' only: the predictor keeps the base rate (SimSiam).",
    "optimizer.reference_world_size": "0 = the true full-batch gradient; W = divide it by W "
                                      "to reproduce the official BT code run on W GPUs.",
    "optimizer.grad_scale": "Multiplies the gradient (a loss multiplier such as solo-learn's "
                            "scale_loss).",
    "optimizer.clip_lr": "'solo_lars' only: clip the trust ratio at 1.",
    "optimizer.exclude_bias_n_norm": "'solo_lars' only: no LARS adaptation of biases and BN.",
    "optimizer.schedule": "'bt' (main.py: warm-up from 0, cosine to final_lr_fraction x "
                          "peak) or 'solo_learn' (PL Bolts warm-up from warmup_start_lr, "
                          "cosine to 0).",
    "optimizer.warmup_start_lr": "'solo_learn' schedule only: the warm-up's first rate "
                                 "(absolute, not scaled by the batch).",
    "loss.c_reduction": "Barlow Twins' C: 'gather' (from all-gathered embeddings, fewer "
                        "bytes) or 'psum' (psum of the D x D matrix); same value and gradient.",
    "model.remat": "Recompute each residual block's activations in the backward pass "
                   "(less memory, more compute).",
    "step.one_pass": "Both views through the network in one pass (BN statistics still per "
                     "view, or joint where the method declares it); False = two passes.",
    "step.grad_reduction": "'once': each gradient all-reduced once per step in float32; "
                           "'per_use': where JAX puts it (per view, in the compute dtype).",
    "step.health_rank_dims": "Effective rank of the embedding on at most this many fixed "
                             "dimensions (0 = all D).",
    "data.source": "'folder' (image tree or .tar/.tar.gz), 'tfds', 'arrays' (in memory) or "
                   "'synthetic'.",
    "data.path": "Folder source: a directory or .tar/.tar.gz of <split>/<class>/*.jpg.",
    "data.tfds_name": "TFDS source: the dataset name, e.g. 'cifar10', 'imagenet2012'.",
    "data.tfds_data_dir": "TFDS source: its data_dir ('' = TFDS's default).",
    "data.split": "Training split (a folder name or a TFDS split).",
    "data.eval_split": "Split of the kNN monitor's queries and the probes' test set.",
    "data.cache_dir": "Where archives are extracted, indexed and decoded once "
                      "('' = ~/.cache/barlow_jax).",
    "data.placement": "Where augmentation runs: 'host' (tf.data), 'split' (crop on the "
                      "host, colour on the accelerator), 'device' (all on the accelerator, "
                      "for CIFAR-sized data) or 'auto' (device on an accelerator, host on a "
                      "CPU).",
    "data.image_size": "Side of the square training views, pixels.",
    "data.num_examples": "Synthetic source: training-set size.",
    "data.num_eval_examples": "Synthetic source: eval-set size.",
    "data.num_classes": "Number of classes (kNN and probes).",
    "data.mean": "Per-channel mean used to normalise pixels in [0, 1].",
    "data.std": "Per-channel standard deviation used to normalise pixels.",
    "data.shuffle_buffer": "TFDS source: shuffle buffer size (indexed sources permute "
                           "exactly).",
    "data.threads": "tf.data private thread pool size (0 = AUTOTUNE).",
    "data.arrays": "Arrays source: {'train': (uint8 images [N,H,W,3], labels), 'test': ...}, "
                   "set in code (barlow_jax/data/download.py).",
    "data.augment.<view>.crop_scale": "Random resized crop: area fraction range.",
    "data.augment.<view>.crop_ratio": "Random resized crop: aspect-ratio range.",
    "data.augment.<view>.flip_prob": "Horizontal flip probability.",
    "data.augment.<view>.jitter_prob": "Colour-jitter probability.",
    "data.augment.<view>.brightness": "Colour-jitter brightness strength.",
    "data.augment.<view>.contrast": "Colour-jitter contrast strength.",
    "data.augment.<view>.saturation": "Colour-jitter saturation strength.",
    "data.augment.<view>.hue": "Colour-jitter hue strength.",
    "data.augment.<view>.grayscale_prob": "Grayscale probability.",
    "data.augment.<view>.blur_prob": "Gaussian blur probability (CIFAR recipes: 0).",
    "data.augment.<view>.blur_sigma": "Gaussian blur sigma range.",
    "data.augment.<view>.solarize_prob": "Solarization probability.",
    "data.augment.<view>.solarize_threshold": "Solarization threshold on [0, 1] pixels.",
    "data.augment.<view>.color_ops": "Colour-jitter semantics: 'torchvision', 'tf' "
                                     "(SimCLR) or 'byol' (docs/methods.md).",
    "eval.knn_k": "kNN monitor: neighbours k.",
    "eval.knn_temperature": "kNN monitor: temperature T of the exp(sim / T) votes.",
    "eval.knn_train_examples": "kNN monitor: random subset of the train split used as the "
                               "bank (0 = all).",
    "eval.knn_test_examples": "kNN monitor: random subset of the eval split used as "
                              "queries (0 = all).",
    "eval.batch_size": "Images per embedding batch during evaluation.",
    "eval.knn_train_split": "kNN monitor's labelled train split ('' = data.split).",
    "eval.knn_at_start": "Also evaluate the untrained network at step 0 and print it next "
                         "to every later kNN (the baseline a run must beat).",
    "online_probe.enabled": "Train a linear classifier on the stop-gradient features "
                            "during pretraining (online_top1 in the logs).",
    "online_probe.optimizer": "'sgd' or 'adam'.",
    "online_probe.lr": "Online probe learning rate.",
    "online_probe.momentum": "Online probe momentum (sgd).",
    "online_probe.weight_decay": "Online probe weight decay.",
    "wandb.project": "Weights & Biases project ('' = no wandb writer).",
    "wandb.entity": "Weights & Biases entity (team or user).",
    "wandb.mode": "'online', 'offline' or 'disabled'.",
}


def _flat(d, prefix="") -> List[Tuple[str, object]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def doc_key(key: str) -> str:
    """The DESCRIPTIONS key of a config key (both views share ``<view>``)."""
    parts = key.split(".")
    if len(parts) == 4 and parts[:2] == ["data", "augment"]:
        return f"data.augment.<view>.{parts[3]}"
    return key


def defaults() -> List[Tuple[str, object]]:
    """(key, default) of every leaf of barlow_jax/defaults.py, in declaration order."""
    from barlow_jax import defaults as base
    return _flat(base.get_config().to_dict())


def drift() -> Tuple[List[str], List[str]]:
    """(keys of base.py without a description, descriptions that name no key)."""
    keys = {doc_key(k) for k, _ in defaults()}
    return sorted(keys - set(DESCRIPTIONS)), sorted(set(DESCRIPTIONS) - keys)


def _fmt(v) -> str:
    if isinstance(v, tuple):
        v = tuple(round(x, 4) if isinstance(x, float) else x for x in v)
    return f"`{v!r}`"


def render() -> str:
    missing, stale = drift()
    if missing or stale:
        raise ValueError(f"barlow_jax/config_doc.py DESCRIPTIONS is out of date: no meaning for "
                         f"{missing}, no key for {stale}; edit DESCRIPTIONS.")
    rows: Dict[str, List[str]] = {s: [] for s in SECTIONS}
    seen = set()
    for key, value in defaults():
        dk = doc_key(key)
        section = "data.augment" if dk.startswith("data.augment.") else (
            key.split(".")[0] if "." in key else "")
        if section not in rows:
            raise ValueError(f"barlow_jax/defaults.py has a section {section!r} that "
                             f"barlow_jax/config_doc.py SECTIONS lacks; give it a title there.")
        shown = dk
        view_default = value
        if dk != key:  # one row per view key: view1 default / view2 default
            if dk in seen:
                continue
            seen.add(dk)
            v2 = dict(defaults())[key.replace(".view1.", ".view2.")]
            view_default = value if v2 == value else None
            shown = dk.replace("data.augment.<view>.", "")
            default = (_fmt(value) if view_default is not None
                       else f"{_fmt(value)} / {_fmt(v2)}")
        else:
            default = _fmt(value)
        rows[section].append(f"| `{shown}` | {default} | {DESCRIPTIONS[dk]} |")
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m barlow_jax.config_doc` from barlow_jax/defaults.py; do not "
        "edit by hand (tests/test_onboarding_docs.py checks it). -->",
        "",
        "Every key an experiment config may set, with the default of `barlow_jax/defaults.py` (the",
        "paper's Barlow Twins on ImageNet). Configs in `configs/` override some of them;",
        "any key can be set on the command line: `--config.optimizer.lr_weights=0.3`.",
        "A key not listed here is refused with a suggestion. Keys marked \"May change on",
        "resume\" (and the logging, evaluation and data-location keys) can differ when a",
        "run is resumed; the others must match the checkpoint (docs/faults.md).",
        "",
    ]
    for section, title in SECTIONS.items():
        if not rows.get(section):
            continue
        lines += [f"## {title}", ""]
        if section == "data.augment":
            lines += ["Defaults: view 1 / view 2 where they differ (the paper's asymmetric "
                      "views, FIELD_NOTES §3).", ""]
        lines += ["| key | default | meaning |", "|---|---|---|"] + rows[section] + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        current = open(DOC, encoding="utf-8").read() if os.path.exists(DOC) else ""
        if current != text:
            print(f"{DOC} is out of date; run python -m barlow_jax.config_doc", file=sys.stderr)
            return 1
        print(f"{DOC} is up to date.")
        return 0
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"Wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
