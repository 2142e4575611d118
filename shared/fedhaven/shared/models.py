"""Models by name: the DP-compatible LeNet CNN and a registry for more, each checked by Opacus when built."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

from fedhaven.shared.schema import InputSpec, ModelConfig

__all__ = ["FrontEndModel", "InputSpec", "LeNet", "ModelError", "build_model", "dp_problems", "model_names",
           "model_problems", "register_model", "split_front"]


class ModelError(ValueError):
    """A model that cannot be built or cannot be trained with differential privacy."""


ModelFactory = Callable[[InputSpec, ModelConfig], nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory `(InputSpec, ModelConfig) -> nn.Module` under `name`."""

    def deco(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def model_names() -> tuple[str, ...]:
    """Names of every registered model."""
    return tuple(sorted(_REGISTRY))


def _activation(name: str) -> type[nn.Module]:
    return {"relu": nn.ReLU, "tanh": nn.Tanh}[name]


class LeNet(nn.Module):
    """conv(5x5) -> pool -> conv(5x5) -> pool -> fc -> fc -> fc, as in the original write-up.

    No BatchNorm (per-sample gradients forbid it); optional GroupNorm after each
    convolution. Images under 16 pixels are zero-padded in the convolutions so
    the 8x8 digits keep the same architecture; MNIST's 28x28 keeps the classic
    16x4x4 feature map.
    """

    def __init__(self, spec: InputSpec, *, activation: str = "tanh", norm: str = "none") -> None:
        super().__init__()
        act = _activation(activation)
        pad = 2 if spec.image_size < 16 else 0
        side = spec.image_size
        for _ in range(2):
            side = (side + 2 * pad - 4) // 2
        if side < 1:
            raise ModelError(f"lenet: image_size {spec.image_size} is too small for two 5x5 convolutions")

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 5, padding=pad)]
            if norm == "group":
                layers.append(nn.GroupNorm(min(2, c_out), c_out))
            return [*layers, act(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(spec.channels, 6), *block(6, 16))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120), act(),
            nn.Linear(120, 84), act(),
            nn.Linear(84, spec.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


@register_model("lenet")
def _lenet(spec: InputSpec, cfg: ModelConfig) -> nn.Module:
    return LeNet(spec, activation=cfg.activation, norm=cfg.norm)


@register_model("mlp")
def _mlp(spec: InputSpec, cfg: ModelConfig) -> nn.Module:
    act = _activation(cfg.activation)
    return nn.Sequential(nn.Flatten(), nn.Linear(spec.channels * spec.image_size**2, 128), act(),
                         nn.Linear(128, spec.num_classes))


class FrontEndModel(nn.Module):
    """A fixed, data-independent front end (no parameters: it costs no privacy) followed by a trainable head.

    Only the head has weights, so only the head's weights are exchanged and saved;
    the front end is rebuilt from the model config. Sites compute the front end's
    output once (`fedhaven.shared.features`) and train the head on it; the whole
    model still maps raw images to logits.
    """

    def __init__(self, *, front: nn.Module, head: nn.Module, front_key: str) -> None:
        super().__init__()
        if any(True for _ in front.parameters()) or front.state_dict():
            raise ModelError("a front end must have no parameters and no saved state: it is never trained or sent")
        self.front = front
        self.head = head
        self.front_key = front_key  # names exactly what the front end computes (for the feature cache)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.front(x))
        return out


def split_front(model: nn.Module) -> tuple[nn.Module | None, nn.Module]:
    """(fixed front end or None, the part that trains): what a site caches and what DP-SGD updates."""
    if isinstance(model, FrontEndModel):
        return model.front, model.head
    return None, model


class _AreaResize(nn.Module):
    """Images averaged down to `size` x `size` (area interpolation: each output pixel the mean of the input pixels
    it covers, so nothing finer than the new pixel aliases in)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, size=(self.size, self.size), mode="area")


class _FeatureNorm(nn.Module):
    """Per-example GroupNorm without parameters: each example's feature groups scaled to mean 0, variance 1."""

    def __init__(self, groups: int, channels: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.group_norm(x, self.groups)


#: Paths per GroupNorm group under feature_groups = "auto": MNIST's 81 paths in the 27 groups the recipe was
#: chosen with.
PATHS_PER_GROUP = 3


def feature_groups(paths: int, setting: int | str) -> int:
    """How many GroupNorm groups `paths` scattering channels get: `setting` (its gcd with `paths`), or under "auto"
    groups of PATHS_PER_GROUP paths, else of the fewest more that divide `paths` evenly."""
    if isinstance(setting, int):
        return math.gcd(setting, paths)
    if paths < PATHS_PER_GROUP:
        return 1
    return paths // next(s for s in range(PATHS_PER_GROUP, paths + 1) if paths % s == 0)


@register_model("scatternet")
def _scatternet(spec: InputSpec, cfg: ModelConfig) -> nn.Module:
    """Tramer & Boneh (2021)'s ScatterNet: Morlet scattering (J scales, L angles) and per-example GroupNorm, fixed;
    then a trainable head: "linear"; "pointwise" (a 1x1 convolution to `width` channels, activation, linear: the
    same small network at every position); or "cnn" (3x3 convolution to `width` channels, activation, pool,
    linear)."""
    from fedhaven.shared.scattering import Scattering2D, ScatteringSpec, front_plan

    work, J = front_plan(spec.image_size, J=cfg.scattering_j, size=cfg.front_size)
    sspec = ScatteringSpec(channels=spec.channels, image_size=work, J=J, L=cfg.scattering_l)
    problems = sspec.problems()
    if problems:
        raise ModelError("scatternet: " + "; ".join(problems))
    channels, side, _ = sspec.out_shape
    groups = feature_groups(channels, cfg.feature_groups)
    layers: list[nn.Module] = [Scattering2D(sspec), _FeatureNorm(groups, channels)]
    resize = ""
    if work != spec.image_size:
        layers.insert(0, _AreaResize(work))
        resize = f"area{spec.image_size}to{work}-"
    front = nn.Sequential(*layers)
    # read by fedhaven.shared.memory
    front.work_bytes_per_image = sspec.work_bytes_per_image  # type: ignore[assignment]  # not a tensor or module
    if cfg.head == "linear":
        head: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, spec.num_classes))
    elif cfg.head == "pointwise":
        head = nn.Sequential(nn.Conv2d(channels, cfg.width, 1), _activation(cfg.activation)(), nn.Flatten(),
                             nn.Linear(cfg.width * side * side, spec.num_classes))
    else:
        pooled = side // 2 if side >= 2 else side
        head = nn.Sequential(nn.Conv2d(channels, cfg.width, 3, padding=1), _activation(cfg.activation)(),
                             nn.MaxPool2d(2) if side >= 2 else nn.Identity(), nn.Flatten(),
                             nn.Linear(cfg.width * pooled * pooled, spec.num_classes))
    return FrontEndModel(front=front, head=head, front_key=f"{resize}{sspec.key}-gn{groups}")


def dp_problems(model: nn.Module) -> list[str]:
    """What Opacus' ModuleValidator finds wrong with `model` for DP-SGD (empty when fine)."""
    from fedhaven.shared.runtime import quiet_opacus_import

    quiet_opacus_import()
    from opacus.validators import ModuleValidator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        errors = ModuleValidator.validate(model, strict=False)
    return [str(e) for e in errors]


def build_model(*, cfg: ModelConfig, spec: InputSpec, seed: int | None = None, dp: bool = True) -> nn.Module:
    """Build the model `cfg.name` for `spec`; refuse one that DP-SGD cannot train when `dp`."""
    problems = spec.problems()
    if problems:
        raise ModelError(f"{cfg.name}: bad input spec: " + "; ".join(problems))
    factory = _REGISTRY.get(cfg.name)
    if factory is None:
        raise ModelError(f"unknown model {cfg.name!r}; valid models: {', '.join(model_names())}")
    if seed is not None:
        torch.manual_seed(seed)
    model = factory(spec, cfg)
    if dp:
        found = dp_problems(model)
        if found:
            raise ModelError(
                f"{cfg.name} cannot be trained with DP-SGD: " + "; ".join(found)
                + ". Replace BatchNorm with GroupNorm (opacus.validators.ModuleValidator.fix does this)."
            )
    return model


def model_problems(*, cfg: ModelConfig, spec: InputSpec, dp: bool) -> list[str]:
    """Why `cfg` cannot be built for `spec` (unknown name, too small an input, not DP-trainable), or nothing."""
    try:
        build_model(cfg=cfg, spec=spec, dp=dp)
    except ModelError as exc:
        return [f"model: {exc}"]
    return []
