"""The configuration schema: what a coordinator runs, what a task asks of a site, what an experiment simulates."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from fedhaven.shared.config import bounds

GradSampleMode = Literal["ghost", "ew", "hooks", "functorch"]
Accountant = Literal["rdp", "prv"]


@dataclass(frozen=True)
class InputSpec:
    """What a model consumes and predicts: image channels, square image size, number of classes."""

    channels: int
    image_size: int
    num_classes: int

    def problems(self) -> list[str]:
        out = []
        if self.channels not in (1, 3):
            out.append(f"channels: expected 1 (grey) or 3 (RGB), got {self.channels}")
        if self.image_size < 4:
            out.append(f"image_size: expected at least 4 pixels, got {self.image_size}")
        if self.num_classes < 2:
            out.append(f"num_classes: expected at least 2 classes, got {self.num_classes}")
        return out


@dataclass(frozen=True)
class ModelConfig:
    """Which registered model to train, and its options."""

    name: str = "lenet"
    activation: Literal["relu", "tanh"] = "tanh"
    norm: Literal["none", "group"] = "none"
    # scatternet: a fixed scattering transform (no parameters, no privacy cost) before a small trainable head
    head: Literal["linear", "pointwise", "cnn"] = "linear"
    scattering_j: int = field(default=2, metadata=bounds(ge=1, le=6))  # scales: features are 2**J times smaller
    scattering_l: int = field(default=8, metadata=bounds(ge=1, le=16))  # orientations
    feature_groups: int = field(default=27, metadata=bounds(ge=1))  # per-example GroupNorm of the features
    width: int = field(default=32, metadata=bounds(ge=1, le=4096))  # channels of the pointwise and cnn heads


@dataclass(frozen=True)
class TrainConfig:
    """Local training on each site, per round."""

    local_epochs: float = field(default=1.0, metadata=bounds(gt=0, le=100))
    batch_size: int = field(default=512, metadata=bounds(ge=1))
    lr: float = field(default=0.5, metadata=bounds(gt=0, le=100))
    momentum: float = field(default=0.9, metadata=bounds(ge=0, lt=1))
    weight_decay: float = field(default=0.0, metadata=bounds(ge=0))
    # "auto": fedhaven.shared.recipe's rule sets rounds, batch_size, lr, momentum and local_epochs from the
    # target epsilon, the sites' size and their number, except those set explicitly (resolved by fl-sim)
    recipe: Literal["manual", "auto"] = "manual"


@dataclass(frozen=True)
class DPConfig:
    """Local differential privacy (DP-SGD with Opacus) on every site.

    With `noise_multiplier = "auto"` each site derives its noise so that, after
    the planned rounds and counting everything it spent before, its epsilon at
    `delta` is `target_epsilon`. With a number, the noise is fixed and
    `target_epsilon` is the run's stated privacy target (sites report when
    they pass it).
    """

    enabled: bool = True
    target_epsilon: float = field(default=3.0, metadata=bounds(gt=0, le=100))
    noise_multiplier: float | Literal["auto"] = "auto"
    max_grad_norm: float = field(default=1.0, metadata=bounds(gt=0))
    delta: float = field(default=1e-5, metadata=bounds(gt=0, lt=1))
    accountant: Accountant = "rdp"
    grad_sample_mode: GradSampleMode = "ghost"  # fastest correct engine measured here (BENCHMARKS.md)

    def problems(self) -> list[str]:
        if isinstance(self.noise_multiplier, float) and self.noise_multiplier < 0:
            return [f"noise_multiplier: must be >= 0 or \"auto\", got {self.noise_multiplier}"]
        return []


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation (Flower's SecAgg+): the coordinator only ever sees the masked sum."""

    enabled: bool = True
    num_shares: int | float = 5
    reconstruction_threshold: int | float = 3
    max_weight: float | Literal["auto"] = "auto"
    clipping_range: float = field(default=8.0, metadata=bounds(gt=0))
    quantization_range: int = field(default=2**22, metadata=bounds(gt=0))
    modulus_range: int = field(default=2**32, metadata=bounds(gt=0, le=2**32))
    timeout: float = field(default=600.0, metadata=bounds(gt=0))

    def problems(self) -> list[str]:
        out: list[str] = []
        if isinstance(self.num_shares, int):
            if self.num_shares <= 2:
                out.append(f"num_shares: must be an odd integer >= 3 or a fraction in (0, 1], got {self.num_shares}")
            elif self.num_shares % 2 == 0:
                out.append(f"num_shares: {self.num_shares} is even; Flower's SecAgg+ halts every round with an "
                           f"even share count while the run still reports success. Use {self.num_shares + 1} "
                           f"or {self.num_shares - 1}, or a fraction such as 0.5")
            if isinstance(self.reconstruction_threshold, int) and self.reconstruction_threshold >= self.num_shares:
                out.append(f"reconstruction_threshold: must be less than num_shares ({self.num_shares}), "
                           f"got {self.reconstruction_threshold}")
        elif not 0 < self.num_shares <= 1:
            out.append(f"num_shares: a fraction must be in (0, 1], got {self.num_shares}")
        if isinstance(self.reconstruction_threshold, int):
            if self.reconstruction_threshold < 2:
                out.append("reconstruction_threshold: must be at least 2 (or a fraction in (0, 1])")
        elif not 0 < self.reconstruction_threshold <= 1:
            out.append(f"reconstruction_threshold: a fraction must be in (0, 1], got {self.reconstruction_threshold}")
        if isinstance(self.max_weight, float) and self.max_weight <= 0:
            out.append(f"max_weight: must be > 0 (at least the largest site's example count), got {self.max_weight}")
        if self.modulus_range & (self.modulus_range - 1) or self.modulus_range <= self.quantization_range:
            out.append("modulus_range: must be a power of two larger than quantization_range")
        return out

    def min_sites(self) -> int:
        """Fewest sites per round with which the protocol can unmask (threshold of shares)."""
        if isinstance(self.reconstruction_threshold, int):
            return max(self.reconstruction_threshold, 2)
        return 2


@dataclass(frozen=True)
class CentralDPConfig:
    """Optional client-level DP on the aggregate (Flower's client-side clipping wrappers).

    Each site clips its model update to `clipping_norm` before SecAgg+ masks it;
    the coordinator adds Gaussian noise of std `noise_multiplier * clipping_norm / m`
    to the mean of the m updates it aggregated. Every site then counts equally.
    """

    enabled: bool = False
    clipping: Literal["fixed", "adaptive"] = "fixed"
    noise_multiplier: float = field(default=1.0, metadata=bounds(ge=0))
    clipping_norm: float = field(default=1.0, metadata=bounds(gt=0))
    delta: float = field(default=1e-5, metadata=bounds(gt=0, lt=1))
    target_clipped_quantile: float = field(default=0.5, metadata=bounds(gt=0, lt=1))
    clip_norm_lr: float = field(default=0.2, metadata=bounds(gt=0))
    clipped_count_stddev: float | Literal["auto"] = "auto"  # adaptive: noise on the count of clipped sites
    accountant: Accountant = "rdp"

    def problems(self) -> list[str]:
        if self.enabled and self.clipping == "adaptive" and self.noise_multiplier > 0:
            if isinstance(self.clipped_count_stddev, float) and self.noise_multiplier >= 2 * self.clipped_count_stddev:
                return [f"clipped_count_stddev: must exceed noise_multiplier / 2 ({self.noise_multiplier / 2:g}) for "
                        f"adaptive clipping (Andrew et al. 2021)"]
        return []


@dataclass(frozen=True)
class StrategyConfig:
    """How the coordinator samples sites and combines their models."""

    name: Literal["fedavg", "fedprox", "fedadam"] = "fedavg"
    fraction_fit: float = field(default=1.0, metadata=bounds(gt=0, le=1))
    proximal_mu: float = field(default=0.01, metadata=bounds(ge=0))
    server_lr: float = field(default=0.01, metadata=bounds(gt=0))
    beta_1: float = field(default=0.9, metadata=bounds(ge=0, lt=1))
    beta_2: float = field(default=0.99, metadata=bounds(ge=0, lt=1))
    tau: float = field(default=1e-3, metadata=bounds(gt=0))
    # The coordinator moves the global model by a fraction of each round's aggregated update (post-processing,
    # free under DP): "cosine" decays that fraction from 1 to `step_floor` over the planned rounds.
    step_schedule: Literal["constant", "cosine"] = "constant"
    step_floor: float = field(default=0.1, metadata=bounds(ge=0, le=1))


@dataclass(frozen=True)
class DataConfig:
    """A data source: MNIST bundled with fedhaven, IDX files, an ImageFolder tree, or scikit-learn's digits."""

    source: Literal["mnist", "idx", "imagefolder", "digits"] = "mnist"
    path: str | None = None
    test_path: str | None = None
    image_size: int | None = field(default=None, metadata=bounds(ge=4, le=1024))
    channels: Literal[1, 3] | None = None

    def problems(self) -> list[str]:
        if self.source in ("idx", "imagefolder") and not self.path:
            return [f"path: the {self.source!r} source needs a path to the data"]
        if self.source == "imagefolder" and self.image_size is None:
            return ["image_size: an ImageFolder source needs an image_size (images are resized to it)"]
        return []


@dataclass(frozen=True)
class RunConfig:
    """Everything the coordinator needs for one federated run; the same in simulation and deployment."""

    rounds: int = field(default=15, metadata=bounds(ge=1, le=100_000))
    seed: int = 0
    min_sites: int = field(default=3, metadata=bounds(ge=1))
    round_retries: int = field(default=1, metadata=bounds(ge=0, le=10))
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    central_dp: CentralDPConfig = field(default_factory=CentralDPConfig)

    def known_max_weight(self) -> float | None:
        """SecAgg+'s max_weight when it is known without seeing the sites: 1 under central DP (every site
        counts once), the configured number, or None for "auto" (the largest site's example count)."""
        if self.central_dp.enabled:
            return 1.0
        return None if self.secagg.max_weight == "auto" else float(self.secagg.max_weight)

    def problems(self) -> list[str]:
        out: list[str] = []
        if type(self) is RunConfig and self.train.recipe == "auto":
            out.append("train.recipe: \"auto\" is resolved by fl-sim, which knows the sites' sizes; a coordinator "
                       "cannot see them. Print the rule's values with `python -m fedhaven.shared.recipe --epsilon E "
                       "--site-size N --sites S`, set them, and set train.recipe = \"manual\"")
        if self.central_dp.enabled and self.strategy.name == "fedadam":
            out.append("central_dp: the noise is calibrated to a mean of clipped updates; use fedavg or fedprox")
        if self.secagg.enabled and self.min_sites < self.secagg.min_sites():
            out.append(f"min_sites: SecAgg+ needs at least {self.secagg.min_sites()} sites per round "
                       f"(its reconstruction_threshold); raise min_sites or lower the threshold")
        return out


@dataclass(frozen=True)
class SitePolicy:
    """Limits the coordinator cannot override: checked on the site before any data is read for a task."""

    max_epsilon: float = field(default=8.0, metadata=bounds(gt=0))
    delta: float = field(default=1e-5, metadata=bounds(gt=0, lt=1))
    accountant: Accountant = "rdp"
    min_noise_multiplier: float = field(default=0.5, metadata=bounds(ge=0))
    require_dp: bool = True
    require_secure_aggregation: bool = True
    allowed_models: tuple[str, ...] = ("lenet",)  # "*" allows any registered model

    def allows_model(self, name: str) -> bool:
        return "*" in self.allowed_models or name in self.allowed_models


#: The policy of a simulated site: no limits beyond what the experiment asks for.
SIMULATION_POLICY = SitePolicy(max_epsilon=float("inf"), min_noise_multiplier=0.0, require_dp=False,
                               require_secure_aggregation=False, allowed_models=("*",))


_PARTITION = re.compile(r"^(iid|folders|dirichlet:(?P<alpha>[0-9]*\.?[0-9]+(e-?[0-9]+)?))$")


@dataclass(frozen=True)
class SimulationConfig:
    """Resources of the simulation engine (Flower's, on Ray)."""

    cpus_per_site: float = field(default=1.0, metadata=bounds(gt=0))
    gpus_per_site: float = field(default=0.0, metadata=bounds(ge=0))
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class ExperimentConfig(RunConfig):
    """A simulated federation: a run plus the sites it simulates and how data is split among them."""

    name: str = "experiment"
    sites: int = field(default=10, metadata=bounds(ge=1, le=100_000))
    partition: str = "iid"
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    site_policy: SitePolicy = field(default_factory=lambda: SIMULATION_POLICY)  # what every simulated site enforces

    def problems(self) -> list[str]:
        out = super().problems()
        if not _PARTITION.match(self.partition):
            out.append(f"partition: expected 'iid', 'folders' or 'dirichlet:ALPHA' (e.g. dirichlet:0.3), "
                       f"got {self.partition!r}")
        if self.partition == "folders" and self.data.source != "imagefolder":
            out.append("partition: 'folders' (one sub-folder per site) needs data.source = 'imagefolder'")
        if self.sites < self.min_sites:
            out.append(f"sites: {self.sites} simulated sites is fewer than min_sites ({self.min_sites})")
        return out

    def partition_alpha(self) -> float | None:
        """The Dirichlet concentration, when the partition is label-skewed."""
        m = _PARTITION.match(self.partition)
        return float(m.group("alpha")) if m and m.group("alpha") else None

    def run_config(self) -> RunConfig:
        """The part of the experiment the coordinator runs, unchanged."""
        from dataclasses import fields

        return RunConfig(**{f.name: getattr(self, f.name) for f in fields(RunConfig)})
