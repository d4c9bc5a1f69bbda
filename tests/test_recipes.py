"""CIFAR-10 recipes against the solo-learn files they cite, and the optimizers vs ports.

SOLO_LEARN holds the values of vturrisi/solo-learn scripts/pretrain/cifar/
{barlow,vicreg,simclr,byol,simsiam}.yaml and augmentations/{asymmetric,
symmetric,symmetric_weak}.yaml (commit 9187ea39, April 2026), copied by hand
from those files; HEADS the projector / predictor layers of the matching
solo/methods/<method>.py; SOLO_DEFAULTS what the yaml files leave to
solo/args/pretrain.py and solo/methods/base.py. Each config must equal its
row, except for the entries of KNOWN_DEVIATIONS, which docs/methods.md must
list. The optimizers and the schedule are replayed against NumPy / Python
ports of solo/utils/lars.py, solo/utils/lr_scheduler.py, google-research/simclr
tf2/lars_optimizer.py and deepmind-research byol/utils/{optimizers,schedules}.py.
"""

import importlib
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from barlow_jax.optim import build_optimizer, simclr_lars, solo_lars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ASYMMETRIC = [  # augmentations/asymmetric.yaml: two crops, one per entry
    dict(crop_min_scale=0.08, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
         jitter_prob=0.8, grayscale=0.2, blur=0.0, solarization=0.0, flip=0.5, crop_size=32),
    dict(crop_min_scale=0.08, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
         jitter_prob=0.8, grayscale=0.2, blur=0.0, solarization=0.2, flip=0.5, crop_size=32),
]
SYMMETRIC = dict(crop_min_scale=0.08, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
                 jitter_prob=0.8, grayscale=0.2, blur=0.5, solarization=0.0, flip=0.5,
                 crop_size=32)   # augmentations/symmetric.yaml, num_crops: 2
SYMMETRIC_WEAK = dict(crop_min_scale=0.08, brightness=0.4, contrast=0.4, saturation=0.4,
                      hue=0.1, jitter_prob=0.8, grayscale=0.2, blur=0.5, solarization=0.0,
                      flip=0.5, crop_size=32)   # augmentations/symmetric_weak.yaml, num_crops: 2
VICREG_VIEW = dict(crop_min_scale=0.2, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
                   jitter_prob=0.8, grayscale=0.2, blur=0.0, solarization=0.1, flip=0.5,
                   crop_size=32)  # vicreg.yaml's own augmentations block, num_crops: 2
LARS_KW = dict(name="lars", clip_lr=True, eta=0.02, exclude_bias_n_norm=True)
COMMON = dict(batch_size=256, scheduler="warmup_cosine", max_epochs=1000, backbone="resnet18")

SOLO_LEARN = {
    "bt_cifar10": dict(COMMON, **LARS_KW, method="barlow_twins", lr=0.3, weight_decay=1e-4,
                       proj_hidden_dim=2048, proj_output_dim=2048, scale_loss=0.1,
                       views=ASYMMETRIC),
    "vicreg_cifar10": dict(COMMON, **LARS_KW, method="vicreg", lr=0.3, weight_decay=1e-4,
                           proj_hidden_dim=2048, proj_output_dim=2048, sim_loss_weight=25.0,
                           var_loss_weight=25.0, cov_loss_weight=1.0,
                           views=[VICREG_VIEW, VICREG_VIEW]),
    "simclr_cifar10": dict(COMMON, **LARS_KW, method="simclr", lr=0.4, weight_decay=1e-4,
                           proj_hidden_dim=2048, proj_output_dim=256, temperature=0.2,
                           views=[SYMMETRIC, SYMMETRIC]),
    "byol_cifar10": dict(COMMON, **LARS_KW, method="byol", lr=1.0, weight_decay=1e-5,
                         proj_hidden_dim=4096, proj_output_dim=256, pred_hidden_dim=4096,
                         base_tau=0.99, final_tau=1.0, views=ASYMMETRIC),
    "simsiam_cifar10": dict(COMMON, name="sgd", method="simsiam", lr=0.5, weight_decay=1e-5,
                            proj_hidden_dim=2048, proj_output_dim=2048, pred_hidden_dim=512,
                            views=[SYMMETRIC_WEAK, SYMMETRIC_WEAK]),
}
# solo/methods/<method>.py heads: Linear widths, BN after hidden Linears, biases, final BN.
# nn.Linear has a bias unless bias=False; SimSiam freezes its last projector bias
# (requires_grad=False) in front of BatchNorm1d(affine=False), which cancels it.
_MLP = lambda widths, hidden_bn=True, hidden_bias=True, last_bias=True, last_bn=None: dict(
    widths=widths, hidden_bn=hidden_bn, hidden_bias=hidden_bias, last_bias=last_bias,
    last_bn=last_bn)
HEADS = {
    "barlow_twins": dict(projector=_MLP(lambda h, o: [h, h, o])),
    "vicreg": dict(projector=_MLP(lambda h, o: [h, h, o])),
    "simclr": dict(projector=_MLP(lambda h, o: [h, o], hidden_bn=False)),  # Linear-ReLU-Linear
    "byol": dict(projector=_MLP(lambda h, o: [h, o]), predictor=_MLP(lambda h, o: [h, o])),
    "simsiam": dict(projector=_MLP(lambda h, o: [h, h, o], hidden_bias=False, last_bias=False,
                                   last_bn="none"),
                    predictor=_MLP(lambda h, o: [h, o], hidden_bias=False)),
}
# solo-learn defaults that the yaml files leave implicit: solo/methods/base.py (warmup 10
# epochs from warmup_start_lr 3e-5, cosine to min_lr 0, stepped per update,
# exclude_bias_n_norm_wd off), solo/args/pretrain.py (lr x batch/256, momentum 0.9),
# solo/methods/barlow_twins.py (lamb 0.0051).
SOLO_DEFAULTS = dict(warmup_epochs=10, warmup_start_lr=3e-5, min_lr=0.0, momentum=0.9,
                     lamb=0.0051)
# (config, what) -> the docs/methods.md text that lists it as a remaining deviation.
KNOWN_DEVIATIONS = {
    ("simclr_cifar10", "projector.hidden_bn"): "`simclr_cifar10` projector",
}


def _deviation(name, what):
    return (name, what) in KNOWN_DEVIATIONS


@pytest.mark.parametrize("name", sorted(SOLO_LEARN))
def test_cifar_config_matches_its_solo_learn_file(name):
    want = SOLO_LEARN[name]
    c = importlib.import_module(f"configs.{name}").get_config()
    o = c.optimizer
    assert c.method == want["method"]
    assert c.model.name == want["backbone"] and c.model.cifar_stem
    assert c.batch_size == want["batch_size"] and c.num_epochs == want["max_epochs"]
    assert o.name == ("solo_lars" if want["name"] == "lars" else want["name"])
    assert o.scale_lr_by_batch
    assert o.lr_weights == want["lr"] and o.weight_decay == want["weight_decay"]
    if want["name"] == "lars":
        assert o.eta == want["eta"] and o.clip_lr == want["clip_lr"]
        assert o.exclude_bias_n_norm == want["exclude_bias_n_norm"]
    assert want["scheduler"] == "warmup_cosine" and o.schedule == "solo_learn"
    assert o.warmup_epochs == SOLO_DEFAULTS["warmup_epochs"]
    assert o.warmup_start_lr == SOLO_DEFAULTS["warmup_start_lr"]
    assert o.momentum == SOLO_DEFAULTS["momentum"]
    assert o.final_lr_fraction == SOLO_DEFAULTS["min_lr"] and o.reference_world_size == 0
    assert o.grad_scale == want.get("scale_loss", 1.0)
    # SimSiam's predictor group is static_lr=True in solo/methods/simsiam.py.
    assert o.fix_predictor_lr == (want["method"] == "simsiam")
    for head in ("projector", "predictor"):
        spec = HEADS[want["method"]].get(head)
        got = c[head]
        if spec is None:
            assert not got.spec, head
            continue
        hidden = want["pred_hidden_dim" if head == "predictor" else "proj_hidden_dim"]
        widths = spec["widths"](hidden, want["proj_output_dim"])
        assert got.spec == "-".join(map(str, widths)), head
        assert got.hidden_bias == spec["hidden_bias"] and got.last_bias == spec["last_bias"]
        assert got.last_bn == (spec["last_bn"] is not None), head
        if spec["last_bn"] is not None:
            assert got.last_bn_affine == spec["last_bn"], head
        # barlow_jax heads always put BN after a hidden Linear (models/heads.py).
        assert spec["hidden_bn"] or _deviation(name, f"{head}.hidden_bn"), head
    if want["method"] == "barlow_twins":
        assert c.loss.lambd == want.get("lamb", SOLO_DEFAULTS["lamb"])
    if "temperature" in want:
        assert c.loss.temperature == want["temperature"] and c.loss.simclr_loss_scale == 1.0
    if "base_tau" in want:
        assert (c.loss.ema_start, c.loss.ema_end) == (want["base_tau"], want["final_tau"])
        assert c.loss.target_init == "copy"   # initialize_momentum_params copies the online net
    if "sim_loss_weight" in want:
        assert (c.loss.sim_coeff, c.loss.std_coeff, c.loss.cov_coeff) == (
            want["sim_loss_weight"], want["var_loss_weight"], want["cov_loss_weight"])
    assert c.data.image_size == 32
    for key, v in zip(("view1", "view2"), want["views"]):
        got = c.data.augment[key]
        assert tuple(got.crop_scale) == (v["crop_min_scale"], 1.0)
        assert (got.brightness, got.contrast, got.saturation, got.hue) == (
            v["brightness"], v["contrast"], v["saturation"], v["hue"])
        assert got.jitter_prob == v["jitter_prob"] and got.grayscale_prob == v["grayscale"]
        assert got.blur_prob == v["blur"] and got.solarize_prob == v["solarization"]
        assert got.flip_prob == v["flip"] and v["crop_size"] == c.data.image_size
        assert got.color_ops == "torchvision"   # solo-learn uses torchvision.transforms


def test_known_deviations_are_listed_in_the_docs():
    with open(os.path.join(ROOT, "docs", "methods.md"), encoding="utf-8") as f:
        doc = f.read()
    section = doc.split("## Deviations that remain by choice", 1)[1]
    for (name, what), text in KNOWN_DEVIATIONS.items():
        assert name in SOLO_LEARN and text in section, (name, what)


# ----------------------------------------------------------------------------
# solo-learn's learning-rate schedule.

class PLBoltsWarmupCosine:
    """solo/utils/lr_scheduler.py LinearWarmupCosineAnnealingLR.get_lr, its chained form.

    ``lr(t)`` is the rate of the optimizer step after t scheduler steps (solo-learn
    steps it once per update: interval 'step').
    """

    def __init__(self, base_lr, warmup_epochs, max_epochs, warmup_start_lr, eta_min):
        self.base, self.w, self.t_max = base_lr, warmup_epochs, max_epochs
        self.start, self.eta_min = warmup_start_lr, eta_min
        self.lrs = []

    def run(self, steps):
        lr = None
        for last_epoch in range(steps):
            if last_epoch == 0:
                lr = self.start
            elif last_epoch < self.w:
                lr = lr + (self.base - self.start) / (self.w - 1)
            elif last_epoch == self.w:
                lr = self.base
            elif (last_epoch - 1 - self.t_max) % (2 * (self.t_max - self.w)) == 0:
                lr = lr + (self.base - self.eta_min) * (
                    1 - math.cos(math.pi / (self.t_max - self.w))) / 2
            else:
                lr = ((1 + math.cos(math.pi * (last_epoch - self.w) / (self.t_max - self.w)))
                      / (1 + math.cos(math.pi * (last_epoch - self.w - 1)
                                      / (self.t_max - self.w)))
                      * (lr - self.eta_min) + self.eta_min)
            self.lrs.append(lr)
        return self.lrs


@pytest.mark.parametrize("name", ["bt_cifar10", "simsiam_cifar10"])
def test_solo_learn_schedule_matches_pl_bolts(name):
    o = importlib.import_module(f"configs.{name}").get_config().optimizer
    spe, epochs, batch = 3, 40, 512          # warmup 30 updates of 120
    _, sched = build_optimizer(o, batch_size=batch, steps_per_epoch=spe,
                               total_steps=epochs * spe)
    peak = o.lr_weights * batch / 256
    want = PLBoltsWarmupCosine(peak, o.warmup_epochs * spe, epochs * spe, 3e-5, 0.0).run(
        epochs * spe)
    got = [float(sched["lr"](t)) for t in range(epochs * spe)]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7 * peak)
    assert got[0] == pytest.approx(3e-5) and got[29] == pytest.approx(peak)
    if name == "simsiam_cifar10":   # static_lr: the predictor keeps the scaled base rate
        assert float(sched["lr_predictor"](0)) == float(sched["lr_predictor"](77)) == \
            pytest.approx(peak)


def test_schedule_kind_is_checked():
    o = importlib.import_module("configs.bt_cifar10").get_config().optimizer
    o.schedule = "linear"
    with pytest.raises(ValueError, match="optimizer.schedule='linear'"):
        build_optimizer(o, batch_size=256, steps_per_epoch=2, total_steps=10)


# ----------------------------------------------------------------------------
# Optimizers on replayed gradients.

def _params_and_grads(seed, steps):
    rng = np.random.default_rng(seed)
    params = {"w": rng.standard_normal((4, 3)) * 0.5, "b": rng.standard_normal(3) * 0.1,
              "bn": np.ones(3), "zero": np.zeros((2, 2))}
    grads = [{k: rng.standard_normal(v.shape) * (0.1 if k == "b" else 1.0)
              for k, v in params.items()} for _ in range(steps)]
    return params, grads


def solo_lars_port(params, grads, lrs, *, wd, eta, momentum=0.9, clip=True, exclude=True,
                   eps=1e-8):
    """solo/utils/lars.py LARS.step in NumPy float64 (dampening 0, no Nesterov)."""
    p = {k: v.copy() for k, v in params.items()}
    buf = {}
    for g_all, lr in zip(grads, lrs):
        for k in p:
            d = g_all[k]
            pn, gn = np.linalg.norm(p[k]), np.linalg.norm(d)
            if p[k].ndim != 1 or not exclude:
                if pn != 0 and gn != 0:
                    r = eta * pn / (gn + pn * wd + eps)
                    if clip:
                        r = min(r / lr, 1) if lr > 0 else 1.0
                    d = (d + wd * p[k]) * r
            buf[k] = d.copy() if k not in buf else momentum * buf[k] + d
            p[k] = p[k] - lr * buf[k]
    return p


def simclr_lars_port(params, grads, lrs, *, wd, eeta, momentum=0.9):
    """tf2/lars_optimizer.py, classic_momentum=True, bias/BN excluded (ndim 1 here)."""
    p = {k: v.copy() for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for g_all, lr in zip(grads, lrs):
        for k in p:
            g = g_all[k]
            excluded = p[k].ndim == 1
            if not excluded and wd:
                g = g + wd * p[k]
            trust = 1.0
            if not excluded:
                wn, gn = np.linalg.norm(p[k]), np.linalg.norm(g)
                trust = eeta * wn / gn if (wn > 0 and gn > 0) else 1.0
            v[k] = momentum * v[k] + lr * trust * g
            p[k] = p[k] - v[k]
    return p


def _replay(tx, params, grads):
    prm = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = tx.init(prm)
    for g in grads:
        u, state = tx.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state, prm)
        prm = jax.tree.map(jnp.add, prm, u)
    return {k: np.asarray(v, np.float64) for k, v in prm.items()}


def _close(got, want, params):
    for k in want:
        moved = np.abs(want[k] - params[k]).max()
        np.testing.assert_allclose(got[k] - params[k], want[k] - params[k], rtol=0,
                                   atol=1e-4 * max(moved, 1e-6) + 1e-7, err_msg=k)


def _cfg(name, **kw):
    return ml_collections.ConfigDict(dict(
        name=name, lr_weights=0.3, lr_biases=0.3, scale_lr_by_batch=True, weight_decay=1e-4,
        momentum=0.9, eta=0.02, warmup_epochs=2.0, final_lr_fraction=0.0,
        fix_predictor_lr=False, reference_world_size=0, grad_scale=1.0, clip_lr=True,
        exclude_bias_n_norm=True, **kw))


@pytest.mark.parametrize("clip,exclude", [(True, True), (False, True), (True, False)])
def test_solo_lars_matches_the_port_on_replayed_gradients(clip, exclude):
    steps = 12
    params, grads = _params_and_grads(1, steps)
    cfg = _cfg("solo_lars", )
    cfg.clip_lr, cfg.exclude_bias_n_norm = clip, exclude
    tx, sched = build_optimizer(cfg, batch_size=512, steps_per_epoch=3, total_steps=steps)
    lrs = [float(sched["lr"](t)) for t in range(steps)]
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(0.6)   # warmup from 0, x 512/256
    want = solo_lars_port(params, grads, lrs, wd=1e-4, eta=0.02, clip=clip, exclude=exclude)
    _close(_replay(tx, params, grads), want, params)


def test_solo_lars_with_grad_scale_equals_a_scaled_loss():
    """scale_loss multiplies the loss, hence every gradient: replay the scaled gradients."""
    steps = 6
    params, grads = _params_and_grads(2, steps)
    cfg = _cfg("solo_lars", )
    cfg.grad_scale = 0.1
    tx, sched = build_optimizer(cfg, batch_size=256, steps_per_epoch=2, total_steps=steps)
    lrs = [float(sched["lr"](t)) for t in range(steps)]
    scaled = [{k: 0.1 * g for k, g in gs.items()} for gs in grads]
    want = solo_lars_port(params, scaled, lrs, wd=1e-4, eta=0.02)
    _close(_replay(tx, params, grads), want, params)
    unscaled = solo_lars_port(params, grads, lrs, wd=1e-4, eta=0.02)
    assert np.abs(unscaled["b"] - want["b"]).max() > 1e-3   # the scale is visible


def test_simclr_lars_matches_the_tf2_port_on_replayed_gradients():
    steps = 12
    params, grads = _params_and_grads(3, steps)
    cfg = _cfg("simclr_lars", )
    cfg.eta, cfg.weight_decay = 0.001, 1e-6
    tx, sched = build_optimizer(cfg, batch_size=4096, steps_per_epoch=3, total_steps=steps)
    lrs = [float(sched["lr"](t)) for t in range(steps)]
    want = simclr_lars_port(params, grads, lrs, wd=1e-6, eeta=0.001)
    _close(_replay(tx, params, grads), want, params)
    # The Barlow Twins LARS (lr after momentum) gives a different trajectory under warmup.
    bt = _replay(build_optimizer(_cfg("lars", ), batch_size=4096, steps_per_epoch=3,
                                 total_steps=steps)[0], params, grads)
    assert np.abs(bt["w"] - want["w"]).max() > 1e-3 * np.abs(want["w"] - params["w"]).max()


def test_pure_transformations_accept_constant_rates():
    params, grads = _params_and_grads(4, 3)
    lrs = [0.5] * 3
    _close(_replay(solo_lars(0.5, weight_decay=1e-4), params, grads),
           solo_lars_port(params, grads, lrs, wd=1e-4, eta=0.02), params)
    _close(_replay(simclr_lars(0.5, weight_decay=1e-6), params, grads),
           simclr_lars_port(params, grads, lrs, wd=1e-6, eeta=0.001), params)


# ----------------------------------------------------------------------------
# BYOL (byol_in1k): deepmind-research byol/utils/optimizers.py lars and
# byol/utils/schedules.py learning_schedule.

def byol_schedule_port(step, batch_size, base_lr, total_steps, warmup_steps):
    scaled = base_lr * batch_size / 256.0
    if step < warmup_steps:
        return step / warmup_steps * scaled
    s, m = min(step - warmup_steps, total_steps - warmup_steps), total_steps - warmup_steps
    return scaled * 0.5 * (1 + math.cos(math.pi * s / m))


def byol_lars_port(params, grads, lrs, *, wd, eta=1e-3, momentum=0.9):
    """optax.chain(add_weight_decay, scale_by_lars, scale(-lr)), bias/norm (ndim 1) filtered."""
    p = {k: v.copy() for k, v in params.items()}
    mu = {k: np.zeros_like(v) for k, v in p.items()}
    for g_all, lr in zip(grads, lrs):
        for k in p:
            u = g_all[k]
            adapted = p[k].ndim != 1          # exclude_bias_and_norm
            if adapted:
                u = u + wd * p[k]
                pn, un = np.linalg.norm(p[k]), np.linalg.norm(u)
                u = u * (eta * pn / un if (pn > 0 and un > 0) else 1.0)
            mu[k] = momentum * mu[k] + u
            p[k] = p[k] - lr * mu[k]
    return p


def test_byol_in1k_optimizer_is_deepminds_lars_and_schedule():
    from configs import byol_in1k
    o = byol_in1k.get_config().optimizer
    steps, spe, batch = 14, 1, 4096                   # warmup 10 updates of 14
    tx, sched = build_optimizer(o, batch_size=batch, steps_per_epoch=spe, total_steps=steps)
    lrs = [byol_schedule_port(t, batch, 0.2, steps, 10 * spe) for t in range(steps)]
    np.testing.assert_allclose([float(sched["lr"](t)) for t in range(steps)], lrs,
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose([float(sched["lr_biases"](t)) for t in range(steps)], lrs,
                               rtol=1e-6, atol=1e-9)   # one rate for every parameter
    params, grads = _params_and_grads(5, steps)
    want = byol_lars_port(params, grads, lrs, wd=o.weight_decay, eta=o.eta)
    _close(_replay(tx, params, grads), want, params)
