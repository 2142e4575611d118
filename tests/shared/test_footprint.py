"""What `check` commands say a run needs: a coordinator holds every site's update of a round at once, so a large
model with many sites is refused under a limit that cannot hold them, naming the limit that would."""

from __future__ import annotations

import re

from fedhaven.shared.footprint import footprint
from fedhaven.shared.memory import COORDINATOR_UPDATE_COPIES, MB, SIMULATED_UPDATE_COPIES
from fedhaven.shared.schema import DPConfig, InputSpec, ModelConfig

RGB224 = InputSpec(channels=3, image_size=224, num_classes=10)


def _coordinator(name: str, *, sites: int, memory_mb: int = 2048, simulated: bool = True, secagg: bool = True):
    return footprint(model_cfg=ModelConfig(name=name), spec=RGB224, images=2000, memory_mb=memory_mb, dp=DPConfig(),
                     round_sites=sites, secagg=secagg, simulated=simulated)


def test_round_updates_against_a_naive_count_of_the_parameters():
    from fedhaven.shared.models import build_model, split_front

    _front, head = split_front(build_model(cfg=ModelConfig(name="lenet"), spec=RGB224, dp=False))
    params = sum(p.numel() for p in head.parameters())
    fp = _coordinator("lenet", sites=10)
    assert fp.parameters == params and fp.update_wire_bytes == 8 * params  # SecAgg+ masks int64 values
    assert fp.update_bytes == SIMULATED_UPDATE_COPIES * 8 * params
    plain = _coordinator("lenet", sites=10, simulated=False, secagg=False)
    assert plain.update_bytes == COORDINATOR_UPDATE_COPIES * 4 * params
    assert f"10 sites x {8 * params / MB:.1f} MB as sent" in "\n".join(fp.describe())


def test_lenet_at_224_with_ten_sites_is_refused_naming_the_limit_that_holds_them():
    fp = _coordinator("lenet", sites=10)  # 5.4 M parameters, 43 MB masked per site
    problems = fp.memory_problems(setting="memory_mb")
    assert len(problems) == 1 and "cannot hold one round's updates" in problems[0], problems
    named = int(re.search(r"raise it to at least (\d+)", problems[0]).group(1))
    assert named >= fp.held_mb + 10 * SIMULATED_UPDATE_COPIES * fp.update_wire_bytes / MB
    assert "strategy.fraction_fit" in problems[0]
    assert not _coordinator("lenet", sites=10, memory_mb=named + 512).memory_problems(setting="memory_mb")


def test_the_default_model_and_a_site_have_no_round_update_problem():
    assert not _coordinator("scatternet", sites=100).memory_problems(setting="memory_mb")
    site = footprint(model_cfg=ModelConfig(name="lenet"), spec=RGB224, images=2000, memory_mb=2048, dp=DPConfig())
    assert site.round_sites == 0 and not any("round updates" in line for line in site.describe())


def test_the_model_copies_count_against_one_training_example():
    small = footprint(model_cfg=ModelConfig(name="mlp"), spec=RGB224, images=10, memory_mb=1, dp=DPConfig())
    (problem,) = small.memory_problems(setting="memory_mb")
    assert f"{small.model_bytes / MB:.0f} MB of model copies" in problem and small.model_bytes > 400 * MB
