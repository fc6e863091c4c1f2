"""The four methods' configs: every hyperparameter and toggle, its paper default and its source, in one place.

Each is a typed pydantic model (unknown keys and wrong types are errors); ``python -m tuneclust list --keys`` prints
them as the README's key tables. ``weights()`` turns a config into its loss-term weights (a term is off iff its
weight is 0); the papers' ablation switches (IDFD's ``variant``, DCCS's ``mi``/``aug``/``adv``, CDC's
``pretrain_corr``/``affinity``/``regularize``) are names for weights of 0.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneclust.losses.idfd import variant_weights
from tuneclust.methods.base import MethodConfig
from tuneclust.nets.dccs_nets import EncoderName


class IDFDConfig(MethodConfig):
    """IDFD hyperparameters and toggles; each default with its source."""

    variant: Literal["id", "idfo", "idfd"] = "idfd"
    """Loss: L_I only, L_I + alpha L_FO, or L_I + alpha L_F (paper Eq. 2, 7, 6; Table 1 ablation)."""
    backbone: Literal["resnet18", "resnet34", "vgg16", "convnet"] = "resnet18"
    """Paper App. A: ResNet18 with the CIFAR stem; Table 2 adds ConvNet, VGG16, ResNet34."""
    feature_dim: int = Field(128, ge=2)
    """d, the feature size (App. A, after Wu et al. 2018)."""
    tau: float = Field(1.0, gt=0)
    """Temperature of L_I (Sec. 4: 1 for ID(tuned)/IDFO/IDFD; 0.07 is ID(original); Fig. 3 sweep)."""
    tau2: float = Field(2.0, gt=0)
    """Temperature of L_F (Sec. 4; Fig. 4 sweep)."""
    alpha: float = Field(1.0, ge=0)
    """Weight of the feature term: 1 for IDFD; IDFO used 10 (CIFAR) and 0.5 (STL-10, ImageNet subsets) (App. A)."""
    lr: float = Field(0.03, gt=0)
    """SGD learning rate (App. A; public code)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum (App. A)."""
    weight_decay: float = Field(5e-4, ge=0)
    """SGD weight decay (public code)."""
    batch_size: int = Field(128, ge=2)
    """B (App. A)."""
    lr_milestones: list[int] = [600, 950, 1300, 1650]
    """Epochs at which the lr is multiplied by lr_gamma (public code; App. A: after 600, every 350)."""
    lr_gamma: float = Field(0.1, gt=0, le=1)
    """lr decay factor (App. A)."""
    bank_momentum: float = Field(0.5, ge=0, lt=1)
    """Memory bank update M_i <- normalize(m M_i + (1 - m) f_i) (public code: 0.5)."""
    aug_crop: bool = True
    """RandomResizedCrop (public code; Fig. 11 toggle)."""
    aug_crop_scale: float = Field(0.2, gt=0, le=1)
    """Smallest crop area fraction (public code: scale (0.2, 1))."""
    aug_color: bool = True
    """ColorJitter (public code; Fig. 11 toggle)."""
    aug_color_strength: float = Field(0.4, ge=0)
    """Brightness = contrast = saturation jitter (public code: 0.4 each, no hue)."""
    aug_gray: bool = True
    """RandomGrayscale (public code; Fig. 11 toggle)."""
    aug_gray_p: float = Field(0.2, ge=0, le=1)
    """Probability of graying (public code: 0.2)."""
    aug_flip: bool = True
    """RandomHorizontalFlip (paper App. C.3 / Fig. 11 and Wu et al. 2018; the public IDFD script omits it)."""
    embed: Literal["model", "memory"] = "model"
    """What k-means clusters: clean eval-mode features (methods.md) or the memory bank (public code)."""
    max_steps_per_epoch: int | None = Field(None, ge=1)
    """Cap on optimisation steps per epoch (None: a full pass). For smoke runs and quick looks only."""

    def weights(self) -> dict[str, float]:
        """``variant`` and ``alpha`` as term weights (Table 1: ID, IDFO, IDFD)."""
        return variant_weights(self.variant, self.alpha)

    def lr_at(self, epoch: int) -> float:
        """The learning rate of 0-based ``epoch``: ``lr`` times ``lr_gamma`` per milestone reached (App. A)."""
        return self.lr * self.lr_gamma ** bisect_right(sorted(self.lr_milestones), epoch)


class DCCSConfig(MethodConfig):
    """DCCS hyperparameters; every default with its source."""

    style_dim: int = Field(50, ge=0)
    """Size of the style code zs (Sec. 4.1.3; Fig. 6 sweeps 0..70; 0: z = zc)."""
    prior_sigma: float = Field(0.1, gt=0)
    """Std of the Gaussian prior on zs (Sec. 3.3 / 4.1.3)."""
    mi: bool = True
    """Table 5 toggle: the MI term L_MI (M1: adv; M2: adv+mi; M3: adv+aug; M4: all)."""
    aug: bool = True
    """Table 5 toggle: the augmentation-invariance term L_Aug."""
    adv: bool = True
    """Table 5 toggle: the adversarial prior term L_Adv (WGAN-GP critic)."""
    beta_mi: float = Field(0.5, ge=0)
    """Weight of L_MI in the encoder objective (Sec. 4.1.3)."""
    beta_aug: float = Field(4.0, ge=0)
    """Weight of L_Aug (Sec. 4.1.3: 4 for CIFAR/STL/ImageNet; specs set 2 for MNIST/FMNIST)."""
    beta_adv: float = Field(1.0, ge=0)
    """Weight of L_Adv in the encoder objective (Sec. 4.1.3)."""
    aug_detach_target: bool = False
    """methods.md: the public code does not detach Q(zc|x)"""
    lambda_gp: float = Field(10.0, ge=0)
    """Gradient-penalty weight lambda of the WGAN-GP critic (Sec. 4.1.3)."""
    n_critic: int = Field(4, ge=1)
    """Critic steps per encoder step, each on a fresh batch (Sec. 4.1.3)."""
    lr: float = Field(1e-4, gt=0)
    """Adam learning rate of both optimisers (Sec. 4.1.3)."""
    adam_beta1: float = Field(0.5, ge=0, lt=1)
    """Adam beta1 (Sec. 4.1.3)."""
    adam_beta2: float = Field(0.9, ge=0, lt=1)
    """Adam beta2 (Sec. 4.1.3)."""
    batch_size: int = Field(64, ge=2)
    """Batch size (Sec. 4.1.3)."""
    image_mode: Literal["gray", "rgb"] = "gray"
    """Sec. 4.1.1 (as IIC); Table 15 compares rgb"""
    normalize: Literal["half", "dataset"] = "half"
    """public code: Normalize(0.5, 0.5)"""
    encoder: EncoderName = "auto"
    """appendix A, by image size (see nets.dccs_nets)"""
    width: int | None = Field(None, ge=4)
    """residual base width; None: Tables 7/8 (128 / 64)"""
    mlp_hidden: int = Field(1024, ge=2)
    """Tables 9/10: critic and D hidden sizes h, h/2"""
    crop: bool = True
    """appendix B (1): random resized crop"""
    crop_scale_min: float = Field(0.4, gt=0, le=1)
    """appendix B: area in [40%, 100%]"""
    hflip: bool = True
    """appendix B (2): on for every dataset but MNIST (digits are direction-sensitive): set false for digits"""
    color_jitter: bool = True
    """appendix B (3)"""
    jitter: float = Field(0.4, ge=0, le=1)
    """appendix B: brightness/contrast/saturation factor in [0.6, 1.4]"""
    jitter_hue: float = Field(0.125, ge=0, le=0.5)
    """appendix B: hue in [0.875, 1.125]"""
    channel_shuffle: bool = True
    """appendix B (4): colour images, before graying"""

    @model_validator(mode="after")
    def _some_term(self) -> DCCSConfig:
        if not any(self.weights().values()):
            raise ValueError("DCCS needs at least one of mi, aug, adv switched on with a weight above 0")
        return self

    def weights(self) -> dict[str, float]:
        """Eq. 12's weights; a Table 5 switch (``mi``, ``aug``, ``adv``) off sets its weight to 0."""
        return {
            "mi": self.beta_mi * self.mi,
            "aug": self.beta_aug * self.aug,
            "adv": self.beta_adv * self.adv,
        }


class CDCConfig(MethodConfig):
    """CDC hyperparameters and loss toggles. Defaults: paper Sec. 3-4 and methods.md; pre-training from public code."""

    dims: list[int] = Field([500, 500, 2000, 10], min_length=1)
    """Encoder sizes after the input, ending with the embedding d; the decoder mirrors them (Sec. 3.1, from DEC)."""
    init: Literal["dec_uniform", "glorot_uniform"] = "dec_uniform"
    """Dense init: DEC's U(+-1/sqrt(fan_in)) (public code: FMNIST, Reuters) or Glorot (public code: STL-10, CIFAR-10)."""
    t_dof: float = Field(1.0, gt=0)
    """Student-t degrees of freedom of every kernel, the paper's alpha (Eq. 5, 8: "set to 1 for all experiments";
    named apart from IDFD's and ICS's alpha, which are loss weights)."""
    kernel_norm: Literal["row", "global"] = "row"
    """Pairwise kernel normalisation: per row, diagonal included (public code; methods.md) or over all pairs (Eq. 5)."""
    corr_sharpen: bool = True
    """Sharpen C_Z with Eq. 10 inside L_cr, as the public code does (True; chosen by benchmarks/fidelity.py, see
    docs/methods.md); Eq. 6 does not (False)."""
    batch_size: int = Field(64, ge=2)
    """m, both phases (Sec. 3.4; public code)."""
    pretrain_epochs: int = Field(100, ge=0)
    """Pre-training passes; the paper gives none: public code FMNIST 100, Reuters/STL-10 30, CIFAR-10 60."""
    pretrain_optimizer: Literal["sgd", "adam"] = "sgd"
    """Pre-training optimiser (public code: SGD with momentum for the four datasets, Adam otherwise)."""
    pretrain_lr: float = Field(0.1, gt=0)
    """Public code: FMNIST/Reuters 0.1, STL-10/CIFAR-10 1.0 (SGD); Keras' Adam default would be 1e-3."""
    pretrain_momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum of pre-training (public code)."""
    pretrain_corr: bool = True
    """Pre-train with L_AE (Eq. 7); False = plain AE with L_r only (Table 3 "AE + L_r")."""
    lam: float = Field(1e-3, ge=0)
    """lambda of Eq. 7 (Sec. 4.4: 1e-3; 1e-6 for CIFAR-10); grid over {1e-6, ..., 1}."""
    finetune: bool = True
    """Run the fine-tuning phase; False = the AE rows of Table 3 (k-means on Z after pre-training)."""
    finetune_iters: int = Field(5000, ge=1)
    """T, fine-tuning iterations (Sec. 3.4)."""
    update_interval: int = Field(50, ge=1)
    """h, iterations between target updates (Sec. 3.4; methods.md: 50, 80 for CIFAR-10)."""
    finetune_lr: float = Field(0.01, gt=0)
    """Fine-tuning SGD learning rate (Sec. 3.4)."""
    finetune_momentum: float = Field(0.9, ge=0, lt=1)
    """Fine-tuning SGD momentum (Sec. 3.4)."""
    eta: float = Field(0.75, ge=0)
    """Weight of L_a in Eq. 13 (Sec. 4.4)."""
    beta: float = Field(1e-3, ge=0)
    """Weight of L_re in Eq. 13 (Sec. 4.4)."""
    affinity: bool = True
    """L_a on/off (Table 3)."""
    regularize: bool = True
    """L_re on/off (Table 3)."""
    affinity_sharpen: bool = True
    """C_Q "computed in a similar manner to P" (Sec. 3.3; public code)."""
    affinity_detach_target: bool = False
    """Stop the gradient through C_Q; False as Algorithm 1 line 12 (centres updated by L_a) and the public code."""
    kmeans_init_n_init: int = Field(20, ge=1)
    """k-means restarts of the centre initialisation (public code: 20)."""

    def weights(self, finetuning: bool = False) -> dict[str, float]:
        """Eq. 7's (pre-training) or Eq. 13's (fine-tuning) term weights; Table 3's switches set them to 0."""
        if not finetuning:
            cr = self.lam * self.pretrain_corr
            return {"r": 1.0, "cr_x": cr, "cr_xrec": cr}
        re = self.beta * self.regularize
        return {"c": 1.0, "a": self.eta * self.affinity, "cr_x": re, "cr_xrec": re}

    @field_validator("dims")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if min(v) < 1:
            raise ValueError(f"layer sizes must be >= 1, got {v}")
        return v


ARCH_DEFAULTS: dict[str, dict[str, float]] = {
    "shallow": {"beta": 0.8, "gamma": 0.01, "omega": 0.1, "margin": 0.24, "latent_dim": 64},  # Sec. 4.4, 4.3
    "deep": {"beta": 0.7, "gamma": 0.01, "omega": 0.3, "margin": 0.3, "latent_dim": 10},  # Sec. 4.4, 4.3
}


class ICSConfig(MethodConfig):
    """ICS hyperparameters. ``None`` = the architecture's paper value (ARCH_DEFAULTS), filled in at validation."""

    arch: Literal["shallow", "deep"] = "shallow"
    """Autoencoder depth: shallow (3 conv) for MNIST/USPS, deep (+2 conv) for CIFAR/FRGC/ImageNet (Sec. 4.3)."""
    latent_dim: int | None = Field(default=None, ge=1)
    """Code size d; None: 64 shallow, 10 deep (Sec. 4.3 "feature dimensions ... 64 and 10")."""
    alpha: float = Field(default=1.0, ge=0)
    """Weight of L_r, the reconstruction term (Sec. 4.4: fixed at 1)."""
    beta: float | None = Field(default=None, ge=0)
    """Weight of L_c, DEC's KL(P||Q); None: 0.8 shallow, 0.7 deep (Sec. 4.4)."""
    gamma: float | None = Field(default=None, ge=0)
    """Weight of L_b, the balance term; None: 0.01 (Sec. 4.4)."""
    omega: float | None = Field(default=None, ge=0)
    """Weight of L_t, the triplet term; None: 0.1 shallow, 0.3 deep (Sec. 4.4)."""
    margin: float | None = Field(default=None, ge=0)
    """Triplet margin; None: 0.24 shallow, 0.3 deep (Sec. 4.4)."""
    lr: float = Field(default=1e-3, gt=0)
    """Adam learning rate (Sec. 4.3: 0.001)."""
    batch_size: int = Field(default=256, ge=2)
    """Batch size (paper silent; DEC's 256)."""
    pretrain_epochs: int = Field(default=3, ge=0)
    """Epochs of L_r alone before the centres and negative selection start (Sec. 3.3: three)."""
    target_update_every: int = Field(default=0, ge=0)
    """Iterations between refreshes of P and the code bank; 0: once per epoch (paper silent)."""
    n_aug_neg: int = Field(default=10, ge=1)
    """Augmentations per anchor for negative selection and the positive (Algorithm 1: 10)."""
    neg_tries: int = Field(default=50, ge=1)
    """Random draws per anchor when looking for a negative (the paper's loop is unbounded; our bound)."""
    reduction: Literal["mean", "sum"] = "sum"
    """Term scales: `sum` = the printed Eqs. 1, 4, 5, 6 (the scale of Sec. 4.4's weights), `mean` = per-sample
    means; docs/methods.md gives the benchmark evidence for the default (benchmarks/fidelity.py)."""
    aug_rotation: float = Field(default=15.0, ge=0, le=180)
    """Positive: random rotation up to this many degrees (Sec. 3.3 names rotation, no range)."""
    aug_scale: float = Field(default=0.1, ge=0, lt=1)
    """Positive: random zoom in [1 - s, 1 + s] (Sec. 3.3 "scale")."""
    aug_erasing: float = Field(default=0.5, ge=0, le=1)
    """Positive: probability of random erasing (Sec. 3.3 "erasing")."""
    aug_flip: float = Field(default=0.5, ge=0, le=1)
    """Positive: probability of a horizontal flip (Sec. 3.3 "flip")."""
    aug_brightness: float = Field(default=0.2, ge=0)
    """Positive: brightness jitter strength (Algorithm 1 "brightness")."""
    aug_contrast: float = Field(default=0.2, ge=0)
    """Positive: contrast jitter strength (Algorithm 1 "contrast")."""

    @model_validator(mode="after")
    def _arch_defaults(self) -> ICSConfig:
        for key, value in ARCH_DEFAULTS[self.arch].items():
            if getattr(self, key) is None:
                self.__dict__[key] = type(value)(value)  # bypass validate_assignment (no re-entry)
        return self

    def weights(self) -> dict[str, float]:
        """The joint phase's term weights (Sec. 3.4): alpha L_r + beta L_c + gamma L_b + omega L_t."""
        return {"r": self.alpha, "c": self.beta, "b": self.gamma, "t": self.omega}
