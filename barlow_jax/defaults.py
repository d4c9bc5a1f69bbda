"""The declared config: every key an experiment may set, with the paper's Barlow Twins on ImageNet.

Every key that any experiment may set is declared here, so a typo such as
``--config.optimizer.lr_weight=...`` fails at once instead of being ignored.
Experiment files (``configs/*.py``) start from ``get_config()`` and override
what differs; the CLI's typo check and the resume check compare against it.
``configs/base.py`` re-exports it for config files written as
``from configs import base``.
"""

import ml_collections


def augment_view(*, flip=0.5, jitter=0.8, brightness=0.4, contrast=0.4, saturation=0.2,
                 hue=0.1, grayscale=0.2, blur=1.0, solarize=0.0, color_ops="torchvision"):
    """Probabilities and strengths of one view's augmentations (FIELD_NOTES §3).

    ``color_ops``: the colour-jitter semantics, 'torchvision' (BT, VICReg
    official code), 'tf' (google-research/simclr tf.image ops) or 'byol'
    (deepmind-research byol/utils/augmentations.py); docs/methods.md.
    """
    return ml_collections.ConfigDict(dict(
        crop_scale=(0.08, 1.0), crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
        flip_prob=flip, jitter_prob=jitter, brightness=brightness, contrast=contrast,
        saturation=saturation, hue=hue, grayscale_prob=grayscale, blur_prob=blur,
        blur_sigma=(0.1, 2.0), solarize_prob=solarize, solarize_threshold=0.5,
        color_ops=color_ops))


def get_config():
    c = ml_collections.ConfigDict()
    c.method = "barlow_twins"
    c.seed = 0
    c.batch_size = 2048          # global, in image pairs
    c.num_epochs = 1000
    c.num_train_steps = -1       # > 0 overrides num_epochs
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.eval_every_steps = 0       # kNN monitor period; 0 turns it off
    # 'auto' | 'bfloat16' | 'float16' | 'float32' (activations; parameters are float32).
    # auto: bf16 on TPUs and bf16-capable GPUs, fp16 + dynamic loss scaling on older GPUs
    # (T4, V100; barlow_jax/loss_scale.py), fp32 on CPUs.
    c.compute_dtype = "auto"

    c.model = ml_collections.ConfigDict(dict(
        name="resnet50", width=64, cifar_stem=False, zero_init_residual=True))
    # Projector: "Linear-BN-ReLU ... Linear" widths (FIELD_NOTES §1). last_bn_affine:
    # the final BN's parameters, 'scale_bias' | 'scale' (SimCLR) | 'none' (SimSiam).
    c.projector = ml_collections.ConfigDict(dict(
        spec="8192-8192-8192", hidden_bias=False, last_bias=False, last_bn=False,
        last_bn_affine="scale_bias"))
    # Predictor (BYOL, SimSiam); empty spec = none.
    c.predictor = ml_collections.ConfigDict(dict(
        spec="", hidden_bias=True, last_bias=True, last_bn=False, last_bn_affine="scale_bias"))

    c.loss = ml_collections.ConfigDict(dict(
        lambd=0.0051,                                      # Barlow Twins
        sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0,     # VICReg
        temperature=0.1,                                   # SimCLR
        ema_start=0.996, ema_end=1.0,                      # BYOL target EMA
    ))

    c.optimizer = ml_collections.ConfigDict(dict(
        name="lars",
        lr_weights=0.2, lr_biases=0.0048,  # per 256 image pairs (scaled by batch/256)
        scale_lr_by_batch=True,
        weight_decay=1.5e-6,               # the paper's value (main.py default: 1e-6)
        momentum=0.9, eta=0.001,
        warmup_epochs=10.0, final_lr_fraction=0.001,
        fix_predictor_lr=False,            # sgd only: predictor keeps the base lr (SimSiam)
    ))

    # Recipe fidelity (issue 11; docs/methods.md). The gradient reaching the optimizer is
    # scaled by grad_scale / reference_world_size (0 = true full-batch gradient; W = the
    # official Barlow Twins code on W GPUs, whose C all_reduce is outside autograd).
    # grad_scale: a loss multiplier such as solo-learn's scale_loss. clip_lr and
    # exclude_bias_n_norm: solo_lars only. simclr_loss_scale: 2.0 = the official
    # tf2 mean(loss_a + loss_b), 1.0 = the mean over 2N anchors (solo-learn).
    c.optimizer.reference_world_size = 0
    c.optimizer.grad_scale = 1.0
    c.optimizer.clip_lr = True
    c.optimizer.exclude_bias_n_norm = True
    # Learning-rate schedule: 'bt' (main.py: warmup from 0, cosine to final_lr_fraction x
    # peak) or 'solo_learn' (PL Bolts LinearWarmupCosineAnnealingLR, from warmup_start_lr).
    c.optimizer.schedule = "bt"
    c.optimizer.warmup_start_lr = 3e-5   # 'solo_learn' only; absolute, not scaled by batch
    c.loss.simclr_loss_scale = 2.0
    c.loss.target_init = "copy"   # EMA target: 'copy' of the online net | 'independent' (BYOL)

    # Issue 12: how the step computes, not what (docs/performance.md). One pass over both
    # views (BN statistics still per view, or joint for SimCLR: the method declares it);
    # each gradient all-reduced once in float32 ('once') or where JAX puts it ('per_use');
    # Barlow Twins' C from gathered embeddings ('gather') or a psum of C ('psum'); the
    # health rank on at most health_rank_dims dimensions (0 = all); model.remat
    # recomputes each residual block's activations in the backward pass.
    c.step = ml_collections.ConfigDict(dict(
        one_pass=True, grad_reduction="once", health_rank_dims=2048))
    c.loss.c_reduction = "gather"
    c.model.remat = False

    c.data = ml_collections.ConfigDict(dict(
        source="folder",        # 'folder' | 'tfds' | 'arrays' | 'synthetic'
        path="",                # folder source: directory or .tar/.tar.gz of <split>/<class>/*
        tfds_name="", tfds_data_dir="",
        split="train", eval_split="test",
        cache_dir="",           # where archives are extracted/indexed once ('' = ~/.cache/barlow_jax)
        placement="host",       # 'host' | 'split' | 'device'
        image_size=224,
        num_examples=0,         # synthetic source: train-set size
        num_eval_examples=0,
        num_classes=1000,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        shuffle_buffer=16384, threads=0,  # 0 = tf.data AUTOTUNE
        augment=ml_collections.ConfigDict(dict(
            view1=augment_view(blur=1.0, solarize=0.0),
            view2=augment_view(blur=0.1, solarize=0.2))),
    ))
    # Arrays source: {'train': (images, labels), 'test': (...)} set in code.
    c.data.arrays = ml_collections.FieldReference(None, field_type=dict)

    c.eval = ml_collections.ConfigDict(dict(
        knn_k=200, knn_temperature=0.1, knn_train_examples=0, knn_test_examples=0,
        batch_size=256,
    ))

    # Issue 15: online linear probe (barlow_jax/online_probe.py), profiler trace
    # (barlow_jax/profiling.py), Weights & Biases writer (metrics.WandbWriter).
    c.online_probe = ml_collections.ConfigDict(dict(
        enabled=False, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0))
    c.eval.knn_train_split = ""  # kNN monitor's labelled train split ('' = data.split)
    c.eval.knn_at_start = False  # also evaluate the untrained network at step 0 (a baseline)
    c.profile_steps = ""         # 'START:STOP': jax.profiler trace of those steps
    c.wandb = ml_collections.ConfigDict(dict(project="", entity="", mode="online"))
    return c
