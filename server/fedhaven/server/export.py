"""The trained model for people who take it home: safetensors (tensors only, nothing to unpickle) and ONNX (the
whole model, raw images to logits), the ONNX file checked against torch with onnxruntime when it is written."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedhaven.shared.config import to_dict
from fedhaven.shared.files import write_atomic
from fedhaven.shared.models import InputSpec, build_model
from fedhaven.shared.schema import ModelConfig
from fedhaven.shared.weights import state_dict_from_weights

log = logging.getLogger("fedhaven.server")

SAFETENSORS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
#: ONNX operator set: 17 has every operator the models need (GroupNorm is decomposed) and runs on any
#: onnxruntime of the last years.
OPSET = 17
#: Seeded inputs the ONNX file is checked on when it is written (the tests check it on a real test set).
CHECK_IMAGES = 16
INPUT_NAME, OUTPUT_NAME = "images", "logits"
#: How the model's input is made from an image's uint8 pixels (fedhaven.shared.data.to_model_input).
PREPROCESSING = "float32 (N, C, H, W) = uint8 pixels / 127.5 - 1 (values in [-1, 1]), images resized to H x W"


@dataclass(frozen=True)
class Exported:
    """One exported file: where, its SHA-256, and what was checked, or why it could not be written."""

    format: str
    file: str | None
    ok: bool
    sha256: str | None = None
    detail: str = ""
    check: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_metadata(*, model_cfg: ModelConfig, spec: InputSpec, classes: Sequence[str]) -> dict[str, str]:
    """What a reader needs to use the weights, as strings (safetensors' and ONNX's metadata are string maps)."""
    return {"fedhaven.model": json.dumps(to_dict(model_cfg), sort_keys=True),
            "fedhaven.input": json.dumps(asdict(spec)), "fedhaven.classes": json.dumps(list(classes)),
            "fedhaven.preprocessing": PREPROCESSING}


def write_safetensors(*, state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """The weights as safetensors (a header and raw tensors: loading it runs no code), written atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    write_atomic(path, save(tensors, metadata=metadata))
    return path


def onnx_bytes(*, model: nn.Module, spec: InputSpec, metadata: dict[str, str]) -> bytes:
    """`model` (raw images to logits, any batch size) as an ONNX model, with `metadata` in its properties.

    torch's TorchScript exporter (`dynamo=False`): the dynamo exporter needs the extra onnxscript package and
    converts no more of these models. A scattering front end is exported through `fedhaven.shared.portable`."""
    import onnx

    from fedhaven.shared.portable import portable

    net = portable(model, image_size=spec.image_size)
    example = torch.zeros(2, spec.channels, spec.image_size, spec.image_size)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="fedhaven-onnx-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes: not the operator's concern
        path = Path(tmp) / ONNX_FILE
        torch.set_num_threads(1)  # tracing computes on two examples: more threads only contend
        try:
            torch.onnx.export(net, (example,), path, dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=OPSET,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        finally:
            torch.set_num_threads(threads)
        proto = onnx.load(path)
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    data: bytes = proto.SerializeToString()
    return data


def onnx_agreement(*, model: nn.Module, onnx_model: bytes | Path, images: torch.Tensor,
                   batch: int = 256) -> dict[str, Any]:
    """Run `images` through torch and through onnxruntime: how many, the largest logit difference, and how many
    predicted classes differ (0 when the two agree)."""
    import onnxruntime as ort

    source = onnx_model.read_bytes() if isinstance(onnx_model, Path) else onnx_model
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: its notes are not ours
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # a check, beside training: never a thread per core
    session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    model = model.eval()
    worst, differ = 0.0, 0
    for start in range(0, len(images), batch):
        x = images[start: start + batch].float()
        with torch.no_grad():
            want = model(x).cpu().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})[0]
        worst = max(worst, float(np.abs(got - want).max()))
        differ += int((got.argmax(1) != want.argmax(1)).sum())
    return {"images": len(images), "max_abs_logit_diff": worst, "predictions_differ": differ}


def export_model(*, run_dir: Path, model_cfg: ModelConfig, spec: InputSpec, classes: Sequence[str],
                 weights: Sequence[np.ndarray], seed: int = 0) -> list[Exported]:
    """Write model.safetensors and model.onnx into `run_dir`; never raises: a format that fails is logged as one
    error line, returned with its reason, and the run's other files stay as they are."""
    try:
        model = build_model(cfg=model_cfg, spec=spec, dp=False).eval()
        state = state_dict_from_weights(model, weights)
    except Exception as exc:  # noqa: BLE001 - weights that fit no model: said for each format, never fatal
        return [_failed("safetensors", exc), _failed("onnx", exc)]
    meta = model_metadata(model_cfg=model_cfg, spec=spec, classes=classes)
    out: list[Exported] = []
    path = run_dir / SAFETENSORS_FILE
    try:
        write_safetensors(state_dict=dict(state), path=path, metadata=meta)
        out.append(Exported(format="safetensors", file=path.name, ok=True, sha256=_sha256(path),
                            detail=f"{len(state)} tensors; rebuild the model from metadata fedhaven.model"))
    except Exception as exc:  # noqa: BLE001 - any failure of the writer is reported, never lost or fatal
        out.append(_failed("safetensors", exc))
    path = run_dir / ONNX_FILE
    try:
        blob = onnx_bytes(model=model, spec=spec, metadata=meta)
        images = torch.rand(CHECK_IMAGES, spec.channels, spec.image_size, spec.image_size,
                            generator=torch.Generator().manual_seed(seed)) * 2 - 1
        check = onnx_agreement(model=model, onnx_model=blob, images=images)
        if check["predictions_differ"]:
            raise RuntimeError(f"onnxruntime's predictions differ from torch's on {check['predictions_differ']} of "
                               f"{check['images']} check inputs (largest logit difference "
                               f"{check['max_abs_logit_diff']:.3g}): not written")
        write_atomic(path, blob)
        out.append(Exported(format="onnx", file=path.name, ok=True, sha256=_sha256(path), check=check,
                            detail=f"opset {OPSET}, input '{INPUT_NAME}' {PREPROCESSING}, output '{OUTPUT_NAME}'; "
                                   f"onnxruntime matches torch on {check['images']} seeded inputs (largest logit "
                                   f"difference {check['max_abs_logit_diff']:.2g})"))
    except Exception as exc:  # noqa: BLE001 - any failure of the exporter is reported, never lost or fatal
        out.append(_failed("onnx", exc))
    return out


def _failed(fmt: str, exc: BaseException) -> Exported:
    why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    log.error("export: model.%s NOT written (%s); the run's other files (model.pt, privacy report) are unaffected",
              fmt, why)
    return Exported(format=fmt, file=None, ok=False, detail=why)
