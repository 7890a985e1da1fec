"""ONNX export: the fastest deployable artifact, usable with onnxruntime alone.

BERT-family models are exported as optimum does it (optimum itself would pin an older `transformers`
than the rest of bort needs): PyTorch's TorchScript exporter, then onnxruntime's BERT graph fusions
(one Attention op per layer, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization); the graphs of
the newer dynamo exporter do not match those fusion patterns. Other models, and `fuse=False`, use the
dynamo exporter (`torch.onnx.export(dynamo=True)`, which needs onnxscript). Every export is checked
against PyTorch on unpadded and padded inputs of shapes other than the traced ones, which also proves
the batch and sequence axes are dynamic. Optional int8 is onnxruntime's dynamic quantization
(per-channel weights).
"""

from __future__ import annotations

import contextlib
import io as text_io
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bort import io
from bort.config import ExportConfig
from bort.errors import BortError
from bort.speed.models import SpeedModel, example_inputs, input_names, resolve

INSTALL_HINT = "pip install 'bort[onnx]'"
EXTERNAL_DATA_BYTES = 1_800_000_000  # ONNX protobufs stop at 2 GB; bigger weights go to a .data file


def require_onnx() -> None:
    """Fail early, in one line, when the optional ONNX packages are missing."""
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise BortError(f"ONNX support needs {', '.join(missing)}; install with: {INSTALL_HINT}")


def ort_session(path: str | os.PathLike, threads: int | None = None, spinning: bool = True):
    """An onnxruntime CPU session with all graph optimisations and a fixed thread count; `spinning=False` stops
    idle worker threads busy-waiting after a run, which would slow down runs of other models interleaved with it."""
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _TupleOutputs(torch.nn.Module):
    """Positional inputs in, a fixed tuple of named outputs out: what the exporter maps to ONNX names."""

    def __init__(self, model: torch.nn.Module, inputs: list[str], outputs: list[str]):
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        result = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return tuple(result[name] for name in self.outputs)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter narrates every step and warns about optional packages; users only need errors."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "")]  # quantizer warns on the root logger
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(text_io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def output_names(module: torch.nn.Module) -> list[str]:
    """A classification checkpoint exports its logits; a bare encoder its hidden states and pooled [CLS]."""
    classifier = type(module).__name__.endswith("ForSequenceClassification")
    return ["logits"] if classifier else ["last_hidden_state", "pooler_output"]


DYNAMO_MIN_OPSET = 18  # the lowest opset torch.onnx's dynamo exporter writes; the TorchScript (fused) path goes lower


def export_module(module: torch.nn.Module, model: SpeedModel, path: Path, opset: int = 18,
                  fuse: bool = True) -> dict[str, int]:
    """Write `module` (eval mode) as ONNX with dynamic batch and sequence axes at `path`; returns the fused
    operators and their counts (empty when the graph was not fused)."""
    require_onnx()
    names = input_names(model.config)
    wrapper = _TupleOutputs(module, names, output_names(module)).eval()
    sample = example_inputs(model, batch_size=2, seq_len=min(16, model.family.max_seq_len))
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    path.parent.mkdir(parents=True, exist_ok=True)
    fusable = fuse and model.config.model_type == "bert"
    try:
        with _quiet():
            if fusable:
                return _export_fused(wrapper, model, sample, path, opset, large=size > EXTERNAL_DATA_BYTES)
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
            torch.onnx.export(wrapper, (), str(path), kwargs={n: sample[n] for n in names}, dynamo=True,
                              input_names=names, output_names=output_names(module), opset_version=opset,
                              dynamic_shapes={n: {0: batch, 1: sequence} for n in names},
                              external_data=size > EXTERNAL_DATA_BYTES, verbose=False)
    except Exception as exc:  # the exporters raise many types; one line is what the user can act on
        hint = "; try fuse=False (bort export --no-fuse)" if fusable else ""
        raise BortError(f"ONNX export of '{model.label}' failed ({type(exc).__name__}: {io.reason(exc, 200)}){hint}"
                        ) from exc
    return {}


def _export_fused(wrapper: _TupleOutputs, model: SpeedModel, sample: dict[str, torch.Tensor], path: Path,
                  opset: int, large: bool) -> dict[str, int]:
    """TorchScript export, then onnxruntime's BERT fusions; the unfused graph is not kept. The attention is
    traced in its eager form: the fusion matches that pattern, not the SDPA one."""
    from onnxruntime.transformers.optimizer import optimize_model

    raw = path.with_name(path.stem + ".unfused.onnx")
    axes = {n: {0: "batch", 1: "sequence"} for n in [*wrapper.inputs, "last_hidden_state"]}
    axes |= {n: {0: "batch"} for n in ("pooler_output", "logits")}
    attention = wrapper.model.config._attn_implementation
    wrapper.model.set_attn_implementation("eager")
    try:
        torch.onnx.export(wrapper, tuple(sample[n] for n in wrapper.inputs), str(raw), dynamo=False,
                          input_names=wrapper.inputs, output_names=wrapper.outputs, opset_version=opset,
                          dynamic_axes=axes)
    finally:  # the caller's module keeps the attention it had
        wrapper.model.set_attn_implementation(attention)
    try:
        graph = optimize_model(str(raw), model_type="bert", num_heads=model.config.num_attention_heads,
                               hidden_size=model.config.hidden_size)
        graph.save_model_to_file(str(path), use_external_data_format=large)
    finally:
        for leftover in raw.parent.glob(raw.name + "*"):
            leftover.unlink()
    return {op: n for op, n in graph.get_fused_operator_statistics().items() if n}


def written_opset(path: Path) -> int:
    """The default-domain opset the file really carries (an exporter may raise the one asked for)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def quantize_int8(fp32_path: Path, int8_path: Path, per_channel: bool = True) -> Path:
    """Dynamic int8 quantization of the weights of MatMul/Gemm/Attention nodes (activations quantized at run time).
    Weights get one scale per output channel by default: on a fine-tuned MiniLM (SST-2 dev), one scale per tensor cost
    2.1 accuracy points, one per channel nothing, for 0-8% more time (benchmarks/bench_int8.py)."""
    require_onnx()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():  # the default tensor type lets the quantizer type the outputs of fused (contrib) ops
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=per_channel,
                         use_external_data_format=(fp32_path.parent / (fp32_path.name + ".data")).exists(),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return int8_path


def compare(module: torch.nn.Module, session, model: SpeedModel, batch_size: int = 3,
            seq_len: int = 23) -> dict[str, Any]:
    """Max abs difference ONNX vs PyTorch on unpadded and padded inputs of an untraced shape."""
    names, outs = input_names(model.config), output_names(module)
    seq_len = min(seq_len, model.family.max_seq_len)
    result: dict[str, Any] = {"shape": [batch_size, seq_len]}
    for key in ("unpadded", "padded"):
        inputs = example_inputs(model, batch_size, seq_len, padded=key == "padded", seed=1)
        with torch.inference_mode():
            reference = module(**inputs)
        got = session.run(outs, {n: inputs[n].numpy() for n in names})
        result[key] = max(float(np.abs(g - reference[o].numpy()).max()) for o, g in zip(outs, got, strict=True))
        if outs == ["logits"]:
            agree = got[0].argmax(-1) == reference["logits"].numpy().argmax(-1)
            result[f"{key}_argmax_agreement"] = float(agree.mean())
        else:
            a, b = got[0].reshape(-1), reference[outs[0]].numpy().reshape(-1)
            result[f"{key}_cosine"] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
    result["max_abs_diff"] = max(result["padded"], result["unpadded"])
    return result


def _save_tokenizer(model: SpeedModel, output: Path) -> str | None:
    source = model.tokenizer_source()
    with contextlib.suppress(BortError):
        if source is not None:
            io.save_model(output, io.load_tokenizer(source))
            return source
    return None


# Text columns of GLUE/SuperGLUE-style files, most specific first; the label column is `label`.
TEXT_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                ("question", "sentence"), ("sentence",), ("text",))


def read_labelled(path: str | os.PathLike) -> tuple[list[tuple[str, ...]], list[str]]:
    """Texts and labels of a .tsv (GLUE layout), .csv or .jsonl file with a `label` column."""
    path = Path(path)
    if not path.is_file():
        raise BortError(f"dev file {path} does not exist")
    rows = io.read_table(path)
    columns = next((c for c in TEXT_COLUMNS if rows and all(k in rows[0] for k in c)), None)
    if columns is None or "label" not in rows[0]:
        raise BortError(f"dev file {path} needs a `label` column and text columns, one of: "
                        f"{'; '.join(','.join(c) for c in TEXT_COLUMNS)}")
    return [tuple(str(r[c]) for c in columns) for r in rows], [str(r["label"]) for r in rows]


def read_dev(model: SpeedModel, dev_file: str | os.PathLike) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Texts and gold class ids of a dev file, checked against the classifier's label set (names or ids), so a file of
    another task is one line rather than a meaningless accuracy."""
    texts, labels = read_labelled(dev_file)
    classes = model.config.num_labels
    if classes < 2:
        raise BortError(f"'{model.label}' is a regressor (one output); --dev measures the accuracy of a classifier")
    label2id = {str(k): int(v) for k, v in (model.config.label2id or {}).items()} or {
        str(v): int(k) for k, v in (model.config.id2label or {}).items()}

    def class_id(label: str) -> int | None:
        if label in label2id:
            return label2id[label]
        try:
            number = float(label)
        except ValueError:
            return None
        return int(number) if number.is_integer() and 0 <= number < classes else None

    ids = {y: class_id(y) for y in set(labels)}
    if unknown := sorted(y for y, i in ids.items() if i is None):
        raise BortError(f"labels of {dev_file} ({', '.join(unknown[:4])}) are not among the model's {classes} labels "
                        f"({', '.join(label2id) or 'ids 0..' + str(classes - 1)}); pass the dev file of the task this "
                        "model was fine-tuned on")
    return texts, np.array([ids[y] for y in labels])


def dev_accuracy(module: torch.nn.Module, sessions: dict[str, Any], model: SpeedModel, tokenizer: Any,
                 dev_file: str | os.PathLike, batch_size: int = 32, max_len: int = 128) -> dict[str, Any]:
    """Accuracy of the PyTorch classifier and of each ONNX session on a labelled dev file. This is what decides whether
    int8 is acceptable: output differences alone do not say it."""
    texts, gold = read_dev(model, dev_file)
    names = input_names(model.config)
    predictions: dict[str, list[np.ndarray]] = {"torch": [], **{k: [] for k in sessions}}
    for start in range(0, len(texts), batch_size):
        chunk = list(zip(*texts[start:start + batch_size], strict=True))
        batch = tokenizer(*chunk, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        batch = {n: batch[n] if n in batch else torch.zeros_like(batch["input_ids"]) for n in names}
        with torch.inference_mode():
            predictions["torch"].append(module(**batch)["logits"].argmax(-1).numpy())
        for key, session in sessions.items():
            predictions[key].append(session.run(["logits"], {n: t.numpy() for n, t in batch.items()})[0].argmax(-1))
    accuracy = {k: float((np.concatenate(v) == gold).mean()) for k, v in predictions.items()}
    out: dict[str, Any] = {"file": str(dev_file), "examples": len(texts), "accuracy": accuracy}
    if "onnx_int8" in accuracy:
        out["int8_change"] = accuracy["onnx_int8"] - accuracy["onnx"]
    return out


def export(config: ExportConfig) -> dict[str, Any]:
    """Export `config.model` to `config.output` (model.onnx, optional model_int8.onnx, tokenizer, config) and check it.
    Returns a report with the files written and the max abs difference vs PyTorch on padded and unpadded inputs; fp32
    beyond `tolerance` (or NaN) is an error, int8 differences are reported (judge them by task accuracy: give a
    fine-tuned classifier and `dev_file`). `fuse=False` keeps the dynamo exporter's unfused graph, for BERT too."""
    require_onnx()
    spec = resolve(config.model)
    if config.dev_file is not None and not spec.classifier:
        raise BortError(f"a dev-set check needs a model fine-tuned with a sequence-classification head; "
                        f"'{spec.label}' has none")
    if config.dev_file is not None:
        read_dev(spec, config.dev_file)
    if config.opset < DYNAMO_MIN_OPSET and not (config.fuse and spec.config.model_type == "bert"):
        raise BortError(f"--opset {config.opset} needs the fused BERT export; the dynamo exporter writes opset "
                        f"{DYNAMO_MIN_OPSET} or newer: pass --opset {DYNAMO_MIN_OPSET}")
    out = io.prepare_output(config.output, "export", overwrite=config.overwrite, inputs=(config.model, config.dev_file),
                            resumable=False)
    module = spec.build(head=True)
    fp32 = out / "model.onnx"
    fusions = export_module(module, spec, fp32, config.opset, config.fuse)
    report: dict[str, Any] = {"model": spec.label, "source": spec.source, "output": str(out),
                              "pretrained_weights": spec.weights is not None,
                              "inputs": input_names(spec.config), "outputs": output_names(module),
                              "files": {"onnx": str(fp32)}, "opset": written_opset(fp32), "fused_ops": fusions}
    sessions = {"onnx": ort_session(fp32, config.threads)}
    report["check"] = compare(module, sessions["onnx"], spec)
    if not report["check"]["max_abs_diff"] <= config.tolerance:  # NaN is not a pass
        raise BortError(f"ONNX output differs from PyTorch by {report['check']['max_abs_diff']:.2e} "
                        f"(> tolerance {config.tolerance:g}); the export of '{spec.label}' is not faithful")
    if config.quantize == "int8":
        int8 = quantize_int8(fp32, out / "model_int8.onnx")
        report["files"]["onnx_int8"] = str(int8)
        sessions["onnx_int8"] = ort_session(int8, config.threads)
        report["check_int8"] = compare(module, sessions["onnx_int8"], spec)
    io.save_model(out, spec.config)
    report["tokenizer"] = _save_tokenizer(spec, out)
    if config.dev_file is not None:
        if report["tokenizer"] is None:
            raise BortError(f"'{spec.label}' has no tokenizer to read {config.dev_file} with")
        report["dev"] = dev_accuracy(module, sessions, spec, io.load_tokenizer(out), config.dev_file)
    report["sizes_mb"] = {k: round(_size(Path(p)) / 2**20, 2) for k, p in report["files"].items()}
    io.write_json(out / "export_report.json", report)
    return report


def _size(path: Path) -> int:
    data = path.parent / (path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def cached_export(model: SpeedModel, cache_dir: Path, int8: bool = False, fuse: bool = True) -> Path:
    """The fp32 (or int8) ONNX file of `model` in `cache_dir`, exported once per run for benchmarking."""
    # a prefixed, sanitised name: no label ('..', 'a/b') can reach outside `cache_dir`; labels are unique per run
    folder = cache_dir / ("onnx-" + re.sub(r"[^\w.-]", "_", model.label) + ("" if fuse else "-unfused"))
    fp32 = folder / "model.onnx"
    if not fp32.exists():  # a failed earlier export of this model left at most files that this one rewrites
        export_module(model.build(), model, fp32, fuse=fuse)
    if not int8:
        return fp32
    path = folder / "model_int8.onnx"
    return path if path.exists() else quantize_int8(fp32, path)
