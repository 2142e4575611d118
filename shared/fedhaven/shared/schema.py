"""The configuration schema: what a coordinator runs, what a task asks of a site, what an experiment simulates."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fedhaven.shared.config import bounds

GradSampleMode = Literal["ghost", "ew", "hooks", "functorch"]
#: A training or coordinating process's memory limit by default, in MB (site.toml `memory_mb`, a run's
#: `memory_mb`, a simulation's `simulation.memory_mb`): batches and chunks are sized to stay under it.
DEFAULT_MEMORY_MB = 2048
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

    # "scatternet" (the default): a fixed scattering transform (no parameters, no privacy cost) before a small
    # trainable head; "lenet": the CNN of the original write-up
    name: str = "scatternet"
    activation: Literal["relu", "tanh"] = "tanh"
    norm: Literal["none", "group"] = "none"
    head: Literal["linear", "pointwise", "cnn"] = "pointwise"  # scatternet's head
    # scales: features are 2**J times smaller than the image the front end sees; "auto": the rule in
    # fedhaven.shared.scattering.front_plan (2 for 28x28, 3 from 56 pixels up)
    scattering_j: int | Literal["auto"] = field(default="auto", metadata=bounds(ge=1, le=6))
    scattering_l: int = field(default=8, metadata=bounds(ge=1, le=16))  # orientations
    # the side the front end works at: larger images are first averaged down to it; "auto": at most 56 pixels
    front_size: int | Literal["auto"] = field(default="auto", metadata=bounds(ge=4, le=1024))
    # per-example GroupNorm of the features: "auto" makes groups of 3 paths, as MNIST's 81 in 27 groups (or the
    # fewest above 3 that divide them evenly); a number: that many groups (its gcd with the paths)
    feature_groups: int | Literal["auto"] = field(default="auto", metadata=bounds(ge=1))
    width: int = field(default=32, metadata=bounds(ge=1, le=4096))  # channels of the pointwise and cnn heads

@dataclass(frozen=True)
class TrainConfig:
    """Local training on each site, per round."""

    local_epochs: float = field(default=1.0, metadata=bounds(gt=0, le=100))
    # expected examples per DP-SGD step; "auto": each site derives it from its own size (fedhaven.shared.recipe)
    batch_size: int | Literal["auto"] = field(default=512, metadata=bounds(ge=1))
    lr: float = field(default=0.5, metadata=bounds(gt=0, le=100))
    momentum: float = field(default=0.9, metadata=bounds(ge=0, lt=1))
    weight_decay: float = field(default=0.0, metadata=bounds(ge=0))
    # "auto": fedhaven.shared.recipe's rule sets rounds, lr, momentum and local_epochs from the target epsilon and
    # the number of sites (the coordinator, fl-sim or fl-server run, resolves them) and batch_size from each site's
    # size (each site resolves it), except those set explicitly
    recipe: Literal["manual", "auto"] = "manual"


@dataclass(frozen=True)
class DPConfig:
    """Local differential privacy (DP-SGD with Opacus) on every site.

    `target_epsilon` is the run's limit on each site's epsilon at `delta`, counting
    everything the site spent before (all runs): a site refuses a round, retries
    included, that would take it past the target. With `noise_multiplier = "auto"`
    each site derives its noise every round so that the rounds still planned end
    at the target; with a number, the noise is fixed. Zero noise is not private and
    is refused unless `allow_not_private` says the experiment means it.
    """

    enabled: bool = True
    target_epsilon: float = field(default=3.0, metadata=bounds(gt=0, le=100))
    noise_multiplier: float | Literal["auto"] = "auto"
    max_grad_norm: float = field(default=1.0, metadata=bounds(gt=0))
    delta: float = field(default=1e-5, metadata=bounds(gt=0, lt=1))
    accountant: Accountant = "rdp"
    grad_sample_mode: GradSampleMode = "ghost"  # fastest correct engine measured here (BENCHMARKS.md)
    allow_not_private: bool = False  # zero noise runs, reported as not private (epsilon infinite)

    @property
    def not_private(self) -> bool:
        """DP-SGD without noise: each update is released with no guarantee (epsilon infinite)."""
        return self.enabled and self.noise_multiplier == 0.0

    def problems(self) -> list[str]:
        if isinstance(self.noise_multiplier, float) and self.noise_multiplier < 0:
            return [f"noise_multiplier: must be >= 0 or \"auto\", got {self.noise_multiplier}"]
        if self.not_private and not self.allow_not_private:
            return ["noise_multiplier: 0 adds no noise, so the run would not be private (epsilon infinite). Use a "
                    "positive value or \"auto\"; or say so: dp.enabled = false (--no-dp), or "
                    "dp.allow_not_private = true to train without noise, reported as not private"]
        return []


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation (Flower's SecAgg+): the coordinator can unmask only the sum of the sites' model arrays.

    Flower's protocol masks arrays only: each site's example count (its weight),
    its metrics (site name, training loss and accuracy, epsilon, noise, sample
    rate, steps, ledger position, and under adaptive central DP its clipped bit)
    travel in the clear to the coordinator.
    """

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
                out.append("reconstruction_threshold: must be at least 2 (or a fraction in (0.5, 1])")
            elif isinstance(self.num_shares, int) and 2 * self.reconstruction_threshold <= self.num_shares:
                out.append(f"reconstruction_threshold: must be more than half of num_shares ({self.num_shares}), "
                           f"got {self.reconstruction_threshold}; fedhaven sites refuse a lower threshold (with "
                           f"half, a coordinator could collect one site's mask seed and mask key from disjoint "
                           f"halves). Use {self.num_shares // 2 + 1}")
        elif not 0.5 < self.reconstruction_threshold <= 1:
            out.append(f"reconstruction_threshold: a fraction must be in (0.5, 1] (more than half the shares; "
                       f"fedhaven sites refuse less), got {self.reconstruction_threshold}")
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
    With adaptive clipping (Andrew et al. 2021) `noise_multiplier` is the total of
    the mechanism: the noise on the clipped-site count (`clipped_count_stddev`) is
    paid for by more noise on the update, so the accountant uses `noise_multiplier`.
    """

    enabled: bool = False
    clipping: Literal["fixed", "adaptive"] = "fixed"
    noise_multiplier: float = field(default=1.0, metadata=bounds(ge=0))
    clipping_norm: float = field(default=1.0, metadata=bounds(gt=0))
    delta: float = field(default=1e-5, metadata=bounds(gt=0, lt=1))
    target_clipped_quantile: float = field(default=0.5, metadata=bounds(gt=0, lt=1))
    clip_norm_lr: float = field(default=0.2, metadata=bounds(gt=0))
    # adaptive: noise on the count of clipped sites; "auto": max(sites per round / 20, noise_multiplier)
    clipped_count_stddev: float | Literal["auto"] = "auto"
    accountant: Accountant = "rdp"
    allow_not_private: bool = False  # zero noise runs, reported as not private (epsilon infinite)

    def count_stddev(self, *, sites: int) -> float:
        """The clipped-count noise, "auto" resolved: Andrew et al.'s sites/20, raised to at least the noise
        multiplier so that Flower's split (which needs noise_multiplier < 2 * stddev) always exists and the
        update's noise grows by at most 1/sqrt(3/4), about 15%."""
        if self.clipped_count_stddev != "auto":
            return float(self.clipped_count_stddev)
        return max(sites / 20, self.noise_multiplier)

    def problems(self) -> list[str]:
        out = []
        if self.enabled and self.clipping == "adaptive" and self.noise_multiplier > 0:
            if isinstance(self.clipped_count_stddev, float) and self.noise_multiplier >= 2 * self.clipped_count_stddev:
                out.append(f"clipped_count_stddev: must exceed noise_multiplier / 2 ({self.noise_multiplier / 2:g}) "
                           f"for adaptive clipping (Andrew et al. 2021); \"auto\" always does")
        if self.enabled and self.noise_multiplier == 0 and not self.allow_not_private:
            out.append("noise_multiplier: 0 adds no noise to the aggregate, so central DP would not be private "
                       "(epsilon infinite). Use a positive value; or central_dp.enabled = false; or "
                       "central_dp.allow_not_private = true to run it anyway, reported as not private")
        return out


#: Flower's robust aggregation rules: each inspects every site's update, so none works under SecAgg+.
ROBUST_STRATEGIES = ("fedmedian", "trimmedavg", "krum", "multikrum", "bulyan")


@dataclass(frozen=True)
class StrategyConfig:
    """How the coordinator samples sites and combines their models.

    The robust rules (`ROBUST_STRATEGIES`, Flower's own) tolerate `malicious_sites` sites per
    round sending anything; each needs enough sites per round (checked against `min_sites`) and
    sees every site's update, so each is refused under SecAgg+, where the coordinator only sees
    the sum and the rule would silently do nothing.
    """

    name: Literal["fedavg", "fedprox", "fedadam", "fedmedian", "trimmedavg", "krum", "multikrum", "bulyan"] = "fedavg"
    fraction_fit: float = field(default=1.0, metadata=bounds(gt=0, le=1))
    proximal_mu: float = field(default=0.01, metadata=bounds(ge=0))
    server_lr: float = field(default=0.01, metadata=bounds(gt=0))
    beta_1: float = field(default=0.9, metadata=bounds(ge=0, lt=1))
    beta_2: float = field(default=0.99, metadata=bounds(ge=0, lt=1))
    tau: float = field(default=1e-3, metadata=bounds(gt=0))
    malicious_sites: int = field(default=1, metadata=bounds(ge=0))  # f: krum, multikrum, bulyan, fedmedian, trimmedavg
    trim_fraction: float = field(default=0.2, metadata=bounds(ge=0, lt=0.5))  # trimmedavg: cut from each end
    keep: int = field(default=0, metadata=bounds(ge=0))  # multikrum: updates averaged; 0: sites - malicious_sites
    # The coordinator moves the global model by a fraction of each round's aggregated update (post-processing,
    # free under DP): "cosine" decays that fraction from 1 to `step_floor` over the planned rounds.
    step_schedule: Literal["constant", "cosine"] = "constant"
    step_floor: float = field(default=0.1, metadata=bounds(ge=0, le=1))


    @property
    def robust(self) -> bool:
        return self.name in ROBUST_STRATEGIES

    def sites_per_round(self, *, sites: int, min_sites: int) -> int:
        """How many of `sites` available sites Flower's strategies sample each round (`fraction_fit` of them, at
        least `min_sites`, its `min_fit_clients`)."""
        return min(sites, max(int(sites * self.fraction_fit), min_sites))

    def fewest_sites(self) -> int:
        """Sites per round the rule needs to tolerate `malicious_sites` (Blanchard et al. 2017,
        El Mhamdi et al. 2018)."""
        f = self.malicious_sites
        return {"fedmedian": 2 * f + 1, "trimmedavg": 2 * f + 1, "krum": 2 * f + 3, "multikrum": 2 * f + 3,
                "bulyan": 4 * f + 3}.get(self.name, 1)

    def problems_for(self, *, sites: int) -> list[str]:
        """Why the rule cannot tolerate `malicious_sites` with `sites` updates per round."""
        if not self.robust:
            return []
        f, need = self.malicious_sites, self.fewest_sites()
        out = []
        if sites < need:
            rule = {"fedmedian": "2f+1", "trimmedavg": "2f+1", "krum": "2f+3", "multikrum": "2f+3",
                    "bulyan": "4f+3"}[self.name]
            out.append(f"strategy: {self.name} tolerating {f} malicious site(s) (strategy.malicious_sites) needs at "
                       f"least {rule} = {need} sites per round, but min_sites is {sites}; raise min_sites to {need} "
                       f"or lower strategy.malicious_sites")
        if self.name == "trimmedavg" and int(self.trim_fraction * sites) < f:
            out.append(f"strategy.trim_fraction: {self.trim_fraction:g} of {sites} sites cuts "
                       f"{int(self.trim_fraction * sites)} from each end, fewer than the {f} malicious site(s) "
                       f"to tolerate; raise it to at least {f / sites:.2f}")
        if self.name == "multikrum" and self.keep > sites - f:
            out.append(f"strategy.keep: multikrum averages {self.keep} updates, more than the {sites - f} honest ones "
                       f"guaranteed (min_sites - malicious_sites); lower it (0 picks sites - malicious_sites)")
        return out


@dataclass(frozen=True)
class RobustConfig:
    """Defences against a site that sends a broken or malicious update (`[robust]`, on by default).

    Sites send their model delta (trained minus global), bounded in L2 norm by
    `max_update_norm` ("auto": 0.1 * sqrt(number of model parameters)) or, with `adaptive`,
    by `adaptive_factor` times the median delta norm of the round before when that is
    smaller (the bound follows the honest deltas); each site also applies its own policy bound.
    Without SecAgg+ the coordinator rejects each non-finite or ill-shaped update and clips each
    delta to the bound. Under SecAgg+ every site rotates its delta at random (a Walsh-Hadamard transform with random
    signs, the same for all sites in a round) before SecAgg+ clips each coordinate to
    `coordinate_clip * bound / sqrt(length)`: an honest, flat update is left alone, while any site's contribution
    is bounded in L2 norm by about `coordinate_clip * bound`. The coordinator rejects a round whose aggregate is not
    finite, whose delta exceeds the bound, or whose held-out loss exceeds `loss_factor` times
    the current model's and is more than `loss_slack` above it (two near-zero losses differ by
    large factors from noise alone), keeping the previous model; `max_rejected` rejected rounds in a row
    stop the run with an error.
    """

    enabled: bool = True
    max_update_norm: float | Literal["auto"] = "auto"
    adaptive: bool = True
    adaptive_factor: float = field(default=1.25, metadata=bounds(ge=1, le=100))
    coordinate_clip: float = field(default=2.0, metadata=bounds(ge=1))
    rotate: bool = True
    loss_factor: float = field(default=2.0, metadata=bounds(gt=1))
    loss_slack: float = field(default=0.01, metadata=bounds(ge=0, le=10))  # nats a round may add to any loss
    max_rejected: int = field(default=3, metadata=bounds(ge=1))
    # under SecAgg+, a rejected sum starts a search for the bad site over re-masked subgroup sums of the same
    # updates (no training, no spend): groups of at least `locate_min_group` sites, no combination of the round's
    # sums isolating fewer honest ones; up to `locate_max_bad` sites located, `locate_max_groups` groups a round
    locate: bool = True
    locate_min_group: int = field(default=3, metadata=bounds(ge=2))
    locate_max_bad: int = field(default=1, metadata=bounds(ge=1, le=3))
    locate_max_groups: int = field(default=8, metadata=bounds(ge=1, le=64))

    def problems(self) -> list[str]:
        if isinstance(self.max_update_norm, float) and self.max_update_norm <= 0:
            return [f"max_update_norm: must be > 0 or \"auto\", got {self.max_update_norm}"]
        return []


#: "auto" update bounds: an L2 norm of AUTO_UPDATE_RMS * sqrt(parameters), i.e. this root mean square per parameter.
AUTO_UPDATE_RMS = 0.1


def auto_update_norm(num_params: int) -> float:
    """The "auto" L2 bound of a model delta for a model with `num_params` parameters."""
    root: float = num_params ** 0.5
    return AUTO_UPDATE_RMS * root


_ATTACK = re.compile(r"^(none|nan|inf|signflip|labelflip|scale:(?P<k>-?[0-9]*\.?[0-9]+(e-?[0-9]+)?)"
                     r"|gaussian:(?P<s>[0-9]*\.?[0-9]+(e-?[0-9]+)?))$")


@dataclass(frozen=True)
class AttackConfig:
    """SIMULATION ONLY: simulated sites that attack, to measure robustness (`[attack]` of an fl-sim experiment).

    `kind` acts where a real malicious site would: on the update it sends, before masking
    (`nan`, `inf`: every value; `scale:K`: its update (trained minus global) times K;
    `signflip`: its update negated; `gaussian:S`: its update replaced by N(0, S^2) noise per
    parameter), or on its data (`labelflip`: it trains with label c as C-1-c). `sites` are
    indices of simulated sites (site-00 is 0); the attack starts at round `from_round`.
    """

    kind: str = "none"
    sites: tuple[int, ...] = (0,)
    from_round: int = field(default=1, metadata=bounds(ge=1))

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    def parameter(self) -> float | None:
        """K of scale:K, S of gaussian:S, else None."""
        m = _ATTACK.match(self.kind)
        value = m and (m.group("k") or m.group("s"))
        return float(value) if value else None

    def problems(self) -> list[str]:
        out = []
        if not _ATTACK.match(self.kind):
            out.append(f"kind: expected none, nan, inf, scale:K, signflip, labelflip or gaussian:S (e.g. scale:1000, "
                       f"gaussian:1.0), got {self.kind!r}")
        if len(set(self.sites)) != len(self.sites) or any(i < 0 for i in self.sites):
            out.append(f"sites: distinct site indices >= 0 (site-00 is 0), got {list(self.sites)}")
        return out


#: MNIST as shipped with fedhaven (CC BY-SA 3.0, Y. LeCun and C. Cortes), so the default run works offline.
BUNDLED_MNIST = Path(__file__).parent / "datasets" / "mnist"


@dataclass(frozen=True)
class DataConfig:
    """A data source: MNIST bundled with fedhaven, IDX files, an ImageFolder tree, or scikit-learn's digits."""

    source: Literal["mnist", "idx", "imagefolder", "digits"] = "mnist"
    path: str | None = None
    test_path: str | None = None
    image_size: int | None = field(default=None, metadata=bounds(ge=4, le=1024))
    channels: Literal[1, 3] | None = None

    def folder(self, split: Literal["train", "test"]) -> Path | None:
        """The folder `split` is read from; None for digits (inside scikit-learn) and for an ImageFolder source
        without that split's folder."""
        if self.source == "digits":
            return None
        if self.source == "mnist":
            return Path(self.path) if self.path else BUNDLED_MNIST
        if self.source == "idx":
            return Path(self.path or "")
        root = self.test_path if split == "test" else self.path
        return Path(root) if root else None

    def problems(self) -> list[str]:
        if self.source in ("idx", "imagefolder") and not self.path:
            return [f"path: the {self.source!r} source needs a path to the data"]
        if self.source == "imagefolder" and self.image_size is None:
            return ["image_size: an ImageFolder source needs an image_size (images are resized to it)"]
        return []


@dataclass(frozen=True)
class WaitConfig:
    """How long the coordinator waits, on every path (Flower's own: forever, or 86,400 s, silently)."""

    stage: float = field(default=600.0, metadata=bounds(gt=0, le=86_400))  # each message round (a SecAgg+ stage,
    # or a whole fit round without SecAgg+): sites that have not answered by then count as dropped
    min_sites: float = field(default=600.0, metadata=bounds(gt=0, le=86_400))  # for min_sites sites to be online
    report_every: float = field(default=30.0, metadata=bounds(gt=0))  # how often a wait says who is missing


@dataclass(frozen=True)
class TrackingConfig:
    """Experiment tracking by the coordinator (sites never need it): MLflow and TensorBoard event files."""

    enabled: bool = True
    # MLflow tracking URI ("http://mlflow.example:5000", "file:/data/mlruns", ...); "" takes MLFLOW_TRACKING_URI,
    # else a local file store `mlruns` beside the run directories
    uri: str = ""
    experiment: str = "fedhaven"  # the MLflow experiment every run of this config is logged under


@dataclass(frozen=True)
class RunConfig:
    """Everything the coordinator needs for one federated run; the same in simulation and deployment."""

    rounds: int = field(default=15, metadata=bounds(ge=1, le=100_000))
    seed: int = 0
    min_sites: int = field(default=3, metadata=bounds(ge=1))
    round_retries: int = field(default=1, metadata=bounds(ge=0, le=10))
    output_dir: str = "runs"
    # the coordinator's run process stays under this (MB): its test set is decoded and evaluated in chunks
    memory_mb: int = field(default=DEFAULT_MEMORY_MB, metadata=bounds(ge=256))
    # Set by `fl-server run --resume` / `fl-sim run --resume`, not by hand: the directory of an interrupted run,
    # continued from its last complete round (same config, same metrics.jsonl, same sites' ledgers).
    resume_from: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    central_dp: CentralDPConfig = field(default_factory=CentralDPConfig)
    waits: WaitConfig = field(default_factory=WaitConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    #: Settings that exist only in simulation: refused with the reason rather than as an unknown setting.
    unknown_hints = {"attack": "the attack harness is simulation-only: only fl-sim experiments may have an [attack] "
                               "section; a deployed coordinator or site never attacks"}

    def cache_dir(self) -> Path:
        """Where the coordinator (and, in simulation, every simulated site) caches decoded images and a front
        end's features: `<output_dir>/.feature-cache`, keyed by content, so runs share it."""
        return Path(self.output_dir) / ".feature-cache"

    def known_max_weight(self) -> float | None:
        """SecAgg+'s max_weight when it is known without seeing the sites: 1 under central DP (every site
        counts once), the configured number, or None for "auto" (the largest site's example count)."""
        if self.central_dp.enabled:
            return 1.0
        return None if self.secagg.max_weight == "auto" else float(self.secagg.max_weight)

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.central_dp.enabled and self.strategy.name == "fedadam":
            out.append("central_dp: the noise is calibrated to a mean of clipped updates; use fedavg or fedprox")
        if self.secagg.enabled and self.min_sites < self.secagg.min_sites():
            out.append(f"min_sites: SecAgg+ needs at least {self.secagg.min_sites()} sites per round "
                       f"(its reconstruction_threshold); raise min_sites or lower the threshold")
        s = self.strategy
        if s.robust and self.secagg.enabled:
            out.append(f"strategy: {s.name} inspects every site's update, but under SecAgg+ the coordinator sees only "
                       f"their sum (Flower hands the strategy one copy of it per site), so {s.name} would silently do "
                       f"nothing. Either turn SecAgg+ off (secagg.enabled = false, fl-sim --no-secagg) to use "
                       f"{s.name}, or keep SecAgg+ with strategy.name = \"fedavg\" and [robust] on, whose defences "
                       f"work under it")
        if s.robust and self.central_dp.enabled:
            out.append(f"central_dp: the noise is calibrated to a mean of clipped updates, not to {s.name}; use "
                       f"fedavg or fedprox")
        out.extend(s.problems_for(sites=self.min_sites))
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
    allowed_models: tuple[str, ...] = ("scatternet", "lenet")  # fedhaven's own models; "*" allows any registered
    # true: replies carry the round's training loss and accuracy, computed on private data with weights the
    # coordinator chose and NOT covered by epsilon; off unless the site says so
    send_training_metrics: bool = False
    # SHA-256 of the run packages (FABs) this site reviewed; empty: any package that only names the
    # installed fedhaven ClientApp. A site never runs code from a package either way.
    allowed_app_packages: tuple[str, ...] = ()
    # L2 bound on the model delta (trained minus received) this site sends, whatever the coordinator asks:
    # "auto" is 0.1 * sqrt(number of model parameters). Post-processing of DP-SGD: free in privacy.
    max_update_norm: float | Literal["auto"] = "auto"
    # SecAgg+ on this site's terms, whatever the coordinator sends (every SecAgg+ round; the threshold must also
    # exceed half the shares, always): the fewest sites whose updates are summed with this site's (a site can
    # subtract its own update from a 2-site sum), the lowest reconstruction threshold (shares needed to rebuild a
    # site's mask secrets), and the fewest other sites whose pairwise masks cover this site's update
    min_sites: int = field(default=3, metadata=bounds(ge=1))
    secagg_min_threshold: int = field(default=2, metadata=bounds(ge=1))
    secagg_min_neighbours: int = field(default=2, metadata=bounds(ge=0))
    # the fewest sites a re-masked subgroup sum (locating a bad site, `[robust] locate`) may hide this site's update
    # among, counting every combination with the round's sum and the groups it joined before in that round
    locate_min_group: int = field(default=3, metadata=bounds(ge=2))
    # opt-in (off: nothing about the site's data leaves it but DP training updates): once per run, share a noisy
    # class histogram with the coordinator, Gaussian noise of standard deviation `class_histogram_noise` images on
    # each count (L2 sensitivity 1: one image changes one count by one); its epsilon is a ledger entry, counted
    # against max_epsilon like a round of training, and it is not shared when the budget cannot pay for it
    share_class_histogram: bool = False
    class_histogram_noise: float = field(default=20.0, metadata=bounds(gt=0))

    def allows_model(self, name: str) -> bool:
        return "*" in self.allowed_models or name in self.allowed_models

    def update_bound(self, num_params: int) -> float:
        """This site's own L2 bound on its model delta, for a model with `num_params` parameters."""
        return auto_update_norm(num_params) if self.max_update_norm == "auto" else float(self.max_update_norm)

    def problems(self) -> list[str]:
        out = [f"allowed_app_packages: {h!r} is not a SHA-256 hex digest (64 hex characters)"
               for h in self.allowed_app_packages if not re.fullmatch(r"[0-9a-f]{64}", h)]
        if isinstance(self.max_update_norm, float) and self.max_update_norm <= 0:
            out.append(f"max_update_norm: must be > 0 or \"auto\", got {self.max_update_norm}")
        return out


#: The policy of a simulated site: no limits beyond what the experiment asks for.
SIMULATION_POLICY = SitePolicy(max_epsilon=float("inf"), min_noise_multiplier=0.0, require_dp=False,
                               require_secure_aggregation=False, allowed_models=("*",),
                               max_update_norm=float("inf"), send_training_metrics=True, min_sites=1,
                               secagg_min_threshold=1, secagg_min_neighbours=0)


_PARTITION = re.compile(r"^(iid|folders|dirichlet:(?P<alpha>[0-9]*\.?[0-9]+(e-?[0-9]+)?))$")


@dataclass(frozen=True)
class SimulationConfig:
    """Resources of the simulation engine (Flower's, on Ray)."""

    cpus_per_site: float = field(default=1.0, metadata=bounds(gt=0))
    gpus_per_site: float = field(default=0.0, metadata=bounds(ge=0))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    memory_mb: int = field(default=DEFAULT_MEMORY_MB, metadata=bounds(ge=256))  # each simulation worker's limit
    # an existing Ray cluster to run on ("ray://host:10001" or "host:6379"; "" starts a local one)
    ray_address: str = ""


@dataclass(frozen=True)
class ExperimentConfig(RunConfig):
    """A simulated federation: a run plus the sites it simulates and how data is split among them."""

    name: str = "experiment"
    sites: int = field(default=10, metadata=bounds(ge=1, le=100_000))
    partition: str = "iid"
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    site_policy: SitePolicy = field(default_factory=lambda: SIMULATION_POLICY)  # what every simulated site enforces
    attack: AttackConfig = field(default_factory=AttackConfig)  # SIMULATION ONLY: sites that attack

    unknown_hints = {}

    def problems(self) -> list[str]:
        out = super().problems()
        out.extend(f"attack.sites: site index {i} does not exist ({self.sites} sites: 0..{self.sites - 1})"
                   for i in self.attack.sites if self.attack.enabled and i >= self.sites)
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
