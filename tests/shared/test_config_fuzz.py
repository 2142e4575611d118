"""Fuzzed configuration: whatever a file or command line holds, the answer is a config or a ConfigError listing the
problems, never another exception and never an accepted NaN."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedhaven.client.site_config import SiteConfig, load_site_config
from fedhaven.shared.config import ConfigError, load_toml, parse, parse_override, unflatten
from fedhaven.shared.schema import ExperimentConfig, RunConfig


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += dotted_keys(tp, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


SCALARS = st.one_of(st.booleans(), st.integers(min_value=-2**40, max_value=2**40),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["auto", "iid", "dirichlet:0.3", "fedavg", "lenet", "rdp", "ghost", "digits"]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=5), SCALARS, max_size=2))


def nested(keys: list[str]):
    """Flat dicts of schema keys (and some unknown ones) with arbitrary values, nested without clashes."""
    flat = st.dictionaries(st.one_of(st.sampled_from(keys), st.text(min_size=1, max_size=8)), VALUES, max_size=8)

    def build(d: dict) -> dict:
        ok = {}
        for k, v in d.items():
            if any(o == k or o.startswith(k + ".") or k.startswith(o + ".") for o in ok):
                continue
            ok[k] = v
        return unflatten(ok)

    return flat.map(build)


def assert_finite(obj: object) -> None:
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            assert_finite(getattr(obj, f.name))
    elif isinstance(obj, float):
        assert not math.isnan(obj)
    elif isinstance(obj, tuple):
        for x in obj:
            assert_finite(x)


@settings(max_examples=300, deadline=None)
@given(data=nested(dotted_keys(ExperimentConfig)))
def test_experiment_files_give_a_config_or_a_listed_error(data):
    try:
        exp = parse(ExperimentConfig, data, source="fuzz")
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    assert_finite(exp)
    assert isinstance(exp.run_config(), RunConfig)


@settings(max_examples=200, deadline=None)
@given(data=nested(dotted_keys(SiteConfig)))
def test_site_files_give_a_config_or_a_listed_error(data):
    try:
        cfg = parse(SiteConfig, data, source="fuzz")
    except ConfigError as exc:
        assert exc.problems
        return
    assert_finite(cfg)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_any_bytes_as_a_toml_file_are_a_config_error_or_a_table(tmp_path, raw):
    path = tmp_path / "x.toml"
    path.write_bytes(raw)
    try:
        data = load_toml(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(data, dict)


@settings(max_examples=300, deadline=None)
@given(item=st.text(max_size=30))
def test_any_override_is_a_nested_dict_or_a_config_error(item):
    try:
        out = parse_override(item)
    except ConfigError as exc:
        assert "key=value" in str(exc)
        return
    assert isinstance(out, dict) and out


def test_nan_is_refused_wherever_a_number_is_expected():
    with pytest.raises(ConfigError, match="train.lr: expected a number, got nan"):
        parse(RunConfig, tomllib.loads("[train]\nlr = nan\n"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=120))
def test_site_toml_text_loads_or_fails_with_the_file_named(tmp_path, text):
    path = tmp_path / "site.toml"
    path.write_text(text)
    try:
        load_site_config(path)
    except ConfigError as exc:
        assert exc.problems
