"""The feature cache: computed once in chunks, invalidated by other data or transform parameters, never trusting a
bad file."""

from __future__ import annotations

import torch
from torch import nn

from fedhaven.shared.data import ImageData
from fedhaven.shared.features import cached_features
from fedhaven.shared.models import build_model, split_front
from fedhaven.shared.schema import InputSpec, ModelConfig


class CountingFront(nn.Module):
    """A fixed front end that counts the images it transformed."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.inner(x)


def _front(j: int = 2) -> tuple[CountingFront, str]:
    model = build_model(cfg=ModelConfig(name="scatternet", scattering_j=j, scattering_l=4), spec=InputSpec(1, 8, 3))
    front, _ = split_front(model)
    return CountingFront(front), model.front_key


def test_computed_once_then_read_from_the_cache(tmp_path, synthetic_images):
    front, key = _front()
    first = cached_features(front=front, front_key=key, data=synthetic_images, cache_dir=tmp_path)
    assert front.images == len(synthetic_images)
    again, other = _front()
    second = cached_features(front=again, front_key=key, data=synthetic_images, cache_dir=tmp_path)
    assert again.images == 0  # a second site process reads the file
    assert torch.equal(first.features[:], second.features[:])
    assert torch.equal(second.labels, synthetic_images.labels) and second.classes == synthetic_images.classes
    assert len(list(tmp_path.glob("*.rows"))) == 1


def test_features_are_what_the_model_computes(tmp_path, synthetic_images):
    model = build_model(cfg=ModelConfig(name="scatternet", scattering_l=4), spec=InputSpec(1, 8, 3))
    front, head = split_front(model)
    feats = cached_features(front=front, front_key=model.front_key, data=synthetic_images, cache_dir=tmp_path)
    x = synthetic_images.inputs(slice(0, 16))
    # stored in half precision: what the head sees differs from the full model's input by its rounding only
    assert feats.features.dtype == torch.float16
    assert torch.allclose(head(feats.inputs(slice(0, 16))), model(x), atol=1e-2)
    exact = front(x)
    assert torch.allclose(feats.inputs(slice(0, 16)), exact, rtol=1e-3, atol=1e-3)


def test_other_data_or_other_transform_is_recomputed(tmp_path, synthetic_images):
    front, key = _front()
    cached_features(front=front, front_key=key, data=synthetic_images, cache_dir=tmp_path)
    changed = synthetic_images.images[:].clone()
    changed[0, 0, 0, 0] ^= 1  # one pixel of one image
    other_data = ImageData(changed, synthetic_images.labels, synthetic_images.classes)
    front2, _ = _front()
    out = cached_features(front=front2, front_key=key, data=other_data, cache_dir=tmp_path)
    assert front2.images == len(synthetic_images)
    assert not torch.equal(out.features[0], cached_features(front=front, front_key=key, data=synthetic_images,
                                                            cache_dir=tmp_path).features[0])
    front_j1, key_j1 = _front(j=1)
    assert key_j1 != key
    out = cached_features(front=front_j1, front_key=key_j1, data=synthetic_images, cache_dir=tmp_path)
    assert front_j1.images == len(synthetic_images) and out.features.shape[-1] == 4  # J=1: 8x8 -> 4x4
    assert len(list(tmp_path.glob("*.rows"))) == 3


def test_labels_do_not_key_the_cache(tmp_path, synthetic_images):
    front, key = _front()
    cached_features(front=front, front_key=key, data=synthetic_images, cache_dir=tmp_path)
    relabelled = synthetic_images.aligned_to(("c", "b", "a"))
    out = cached_features(front=front, front_key=key, data=relabelled, cache_dir=tmp_path)
    assert front.images == len(synthetic_images)  # not recomputed
    assert torch.equal(out.labels, relabelled.labels)


def test_a_corrupt_or_tampered_file_is_recomputed_not_trusted(tmp_path, synthetic_images):
    front, key = _front()
    good = cached_features(front=front, front_key=key, data=synthetic_images, cache_dir=tmp_path).features[:]
    (path,) = tmp_path.glob("*.rows")
    whole = path.read_bytes()

    for broken in (whole[:1000],                                   # truncated
                   bytes([whole[0] ^ 1]) + whole[1:],              # one feature altered, layout kept
                   whole[:-20] + b"x" * 20,                        # trailer damaged
                   b"not a rows file at all"):
        path.write_bytes(broken)
        again, _ = _front()
        out = cached_features(front=again, front_key=key, data=synthetic_images, cache_dir=tmp_path)
        assert again.images == len(synthetic_images) and torch.equal(out.features[:], good)


def test_without_a_cache_dir_nothing_is_written(tmp_path, synthetic_images, monkeypatch):
    monkeypatch.chdir(tmp_path)
    front, key = _front()
    cached_features(front=front, front_key=key, data=synthetic_images, cache_dir=None)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_cache_dir_costs_only_the_cache(tmp_path, synthetic_images):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    front, key = _front()
    out = cached_features(front=front, front_key=key, data=synthetic_images, cache_dir=blocker / "cache")
    assert len(out) == len(synthetic_images)


def test_digest_covers_shape_and_bytes(synthetic_images):
    same_bytes = ImageData(synthetic_images.images[:].reshape(len(synthetic_images), 1, 16, 4),
                           synthetic_images.labels, synthetic_images.classes)
    assert same_bytes.digest() != synthetic_images.digest()


def test_features_are_computed_a_chunk_at_a_time(tmp_path, synthetic_images):
    """The front end never sees more than `chunk` images at once, and the result is the same for any chunk."""

    class Widest(CountingFront):
        widest = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Widest.widest = max(Widest.widest, len(x))
            return super().forward(x)

    inner, key = _front()
    front = Widest(inner.inner)
    small = cached_features(front=front, front_key=key, data=synthetic_images, cache_dir=tmp_path / "a", chunk=7)
    assert Widest.widest == 7
    whole = cached_features(front=_front()[0], front_key=key, data=synthetic_images, cache_dir=tmp_path / "b",
                            chunk=1000)
    assert torch.equal(small.features[:], whole.features[:])
