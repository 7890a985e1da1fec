"""The `bort` command line: flags come from the config dataclasses in `bort.config`; the work is `bort.api`'s.

`--config FILE.yaml` (training commands) sets any option by its name; flags given on the command line win.
Errors a user can fix arrive as BortError and are printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
from dataclasses import fields
from typing import Any

import bort
from bort import config as cfg
from bort import io
from bort.errors import BortError

COMMANDS: dict[str, tuple[type[cfg.Options], str]] = {
    "cost": (cfg.CostConfig, "predicted size and cost of one architecture, without training"),
    "extract": (cfg.ExtractConfig, "find the optimal sub-architecture of a source model (the FPTAS)"),
    "pretrain": (cfg.PretrainConfig, "distil an architecture from the teacher (Bort step 2)"),
    "finetune": (cfg.AgoraConfig, "fine-tune on a task (GLUE, SuperGLUE, your files), optionally with Agora "
                                  "(Bort step 3)"),
    "bench": (cfg.BenchConfig, "time several models side by side (runtimes x batch sizes x lengths)"),
    "export": (cfg.ExportConfig, "export a model to ONNX (optionally int8), checked against PyTorch"),
    "run": (cfg.PipelineConfig, "from a source model and a task to a deployable small model, with a report"),
}
TRAINING = ("extract", "pretrain", "finetune", "run")
REPORTS = ("cost", "bench", "export")  # print a JSON report with --json, or write it to --json FILE


def add_flags(parser: argparse.ArgumentParser, cls: type[cfg.Options]) -> None:
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in sorted(fields(cls), key=lambda f: not f.metadata.get("required")):  # required flags first
        if not (meta := f.metadata).get("cli", True):
            continue
        target = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"])) if meta.get(
            "group") else parser
        kind, default = hints[f.name], cfg.default_of(f)
        args, origin = [a for a in typing.get_args(kind) if a is not type(None)], typing.get_origin(kind)
        hidden = default is None or isinstance(default, bool) or default == [] or meta.get("required")
        shown = "" if hidden else f" (default: {default})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                              "help": (meta["help"] + shown).replace("%", "%%")}
        if kind is bool:
            kw["action"] = "store_false" if default else "store_true"
        elif origin is list:
            kw.update(nargs="+", type=args[0], action="extend")
        elif origin is tuple:
            kw.update(nargs=len(args), type=args[0])
        else:
            kw["type"] = args[0] if origin in (typing.Union, types.UnionType) else kind
        kw.update({k: meta[k] for k in ("choices", "metavar") if meta.get(k)})
        target.add_argument(cfg.flag_of(f), **kw)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bort", description="Make BERT-family encoders small and fast: optimal "
                                "subarchitecture extraction, distillation, Agora fine-tuning.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (cls, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_flags(command, cls)
        if name in TRAINING:
            command.add_argument("--config", metavar="FILE.yaml", help="options as a YAML mapping; flags win")
        if name == "finetune":
            command.add_argument("--agora", action="store_true", help="fine-tune with Agora (the options below)")
        if name in REPORTS:
            command.add_argument("--json", nargs="?", const="-", metavar="FILE",
                                 help="print the report as JSON, or write it to FILE")
    return p


def options(args: argparse.Namespace) -> cfg.Options:
    """The command's config: defaults, then --config FILE.yaml, then the flags given."""
    cls = COMMANDS[args.command][0]
    given = {k: v for k, v in vars(args).items() if k in cls.names()}
    loaded = (io.read_yaml(args.config, "--config") or {}) if getattr(args, "config", None) else {}
    if not isinstance(loaded, dict):
        raise BortError(f"--config {args.config} must be a YAML mapping of option names to values")
    return cfg.make(cls, **{**{str(k).replace("-", "_"): v for k, v in loaded.items()}, **given})


def report(args: argparse.Namespace, data: Any, text: str, written: bool = False) -> None:
    """A report as text, or as JSON on stdout (--json) or in a file (--json FILE)."""
    target = getattr(args, "json", None)
    if target == "-":
        print(json.dumps(io.strict_json(data), indent=1, allow_nan=False))
        return
    if target and not written:
        io.write_json(target, data)
    print(text + (f"\nwrote {target}" if target else ""))


def run_cost(settings: cfg.CostConfig, args: argparse.Namespace) -> None:
    out = bort.cost(settings.arch, settings.family, settings.source, config=settings).to_dict()
    report(args, out, "\n".join(f"{k:>17}: {v:,}" if isinstance(v, int) else f"{k:>17}: {v}" for k, v in out.items()))


def run_extract(settings: cfg.ExtractConfig, args: argparse.Namespace) -> None:
    from bort.report import format_table

    result = bort.extract(config=settings)
    if not io.is_main():
        return
    search, names = result.search, result.family.param_names
    front = sorted((c for c in search.candidates if c.pareto), key=lambda c: -c.W)[:10]
    measured = settings.speed == "measured"
    print(f"Pareto front at the full budget (top 10 by W):\n{format_table(front, names, search.maximum, measured)}")
    print(f"W-optimal: {','.join(names)} = {','.join(map(str, search.chosen.arch))}  "
          f"(params x{search.chosen.params / search.maximum.params:.3f}, W = {search.chosen.W:.4f})")
    if (target := result.summary["target"]) and search.constrained is not None:
        c, timed = search.constrained, result.summary.get("side_by_side")
        speedup, how = (timed[-1]["speedup"], f" side by side, {settings.latency_runtime}") if timed else (
            search.maximum.speed(measured) / c.speed(measured), "")
        print(f"most accurate meeting {target}: {','.join(names)} = {','.join(map(str, c.arch))}  (ê = {c.error:.4f}, "
              f"{speedup:.1f}x faster than the source{how}, W = {c.W:.4f})")
    elif target:
        print(f"no finalist meets {target}; the W-optimum is reported instead")
    print(f"results in {result.output}")


def run_pretrain(settings: cfg.PretrainConfig, args: argparse.Namespace) -> None:
    out = bort.pretrain(settings.arch, settings.output, config=settings)
    if io.is_main():
        latency = f", CPU latency {out.latency['cpu_latency_ms']} ms" if out.latency else ""
        speed = f", {out.tokens_per_s} tokens/s" if out.tokens_per_s else ""
        print(f"saved {out.output}: eval {json.dumps(out.eval)}{speed}{latency}")


def run_finetune(settings: cfg.AgoraConfig, args: argparse.Namespace) -> None:
    from bort.api import agora, finetune
    from bort.tasks.finetune import GENERATION_OPTIONS, format_score

    if args.agora:
        out = agora(settings.model, settings.task, settings.output, config=settings).summary
    else:
        if given := [cfg.flag_of(f) for f in fields(cfg.AgoraConfig) if f.name not in cfg.FinetuneConfig.names()
                     and f.name in vars(args)]:
            raise BortError(f"{', '.join(given)} only apply with --agora; add --agora or leave them out")
        if not settings.augment and (given := [cfg.flag_of(f) for f in fields(cfg.FinetuneConfig)
                                                if f.name in GENERATION_OPTIONS and f.name in vars(args)]):
            raise BortError(f"{', '.join(given)} only apply with --augment or --agora; add one or leave them out")
        plain = cfg.make(cfg.FinetuneConfig, **{k: v for k, v in settings.to_dict().items()
                                                 if k in cfg.FinetuneConfig.names()})
        out = finetune(settings.model, settings.task, settings.output, config=plain).summary
    if not io.is_main():
        return
    methods = [m for m in ("plain", "distilled", "uniform", "agora") if m in out]
    print(f"{out['task']} (official dev, mean ± std over seeds {', '.join(out[methods[0]]['seeds'])}):")
    for metric in out[methods[0]]["mean"]:
        print(f"  {metric:>22}: " + "   ".join(f"{m} {format_score(out[m], metric)}" for m in methods))
    for role in ("teacher", "labeller"):
        if out.get(f"{role}_dev"):
            print(f"  {role}: {json.dumps({k: round(v, 4) for k, v in out[f'{role}_dev'].items()})}")
    if "cpu_latency_ms" in out:
        print(f"  CPU latency (batch 1, seq 128): {out['cpu_latency_ms']} ms" + (
            f" (WARNING: {out['latency_warning']})" if "latency_warning" in out else ""))
    print(f"best seed {out['best_seed']}'s model in {settings.output}; results in {settings.output}/metrics.json")


def run_bench(settings: cfg.BenchConfig, args: argparse.Namespace) -> None:
    to_file = args.json not in (None, "-")
    result = bort.bench(settings.models, config=settings, json_path=args.json if to_file else None)
    report(args, result.records, result.table(), written=to_file)


def run_export(settings: cfg.ExportConfig, args: argparse.Namespace) -> None:
    out = bort.export(settings.model, settings.output, config=settings).report
    lines = [f"wrote {', '.join(out['files'].values())} ("
             + ", ".join(f"{k} {v} MB" for k, v in out["sizes_mb"].items()) + ")",
             f"fused: {', '.join(f'{n} {op}' for op, n in out['fused_ops'].items()) or 'nothing (unfused graph)'}"]
    for key, c in ((k, out[k]) for k in ("check", "check_int8") if k in out):
        lines.append(f"{key}: max abs diff vs PyTorch {c['unpadded']:.2e} unpadded, {c['padded']:.2e} padded "
                     f"(batch x seq {c['shape'][0]} x {c['shape'][1]})")
    lines.append(f"tokenizer: {out['tokenizer'] or 'none found; pass a model folder with tokenizer files'}")
    if "dev" in out:
        accuracy = ", ".join(f"{k} {v:.4f}" for k, v in out["dev"]["accuracy"].items())
        change = f"; int8 change {out['dev']['int8_change']:+.4f}" if "int8_change" in out["dev"] else ""
        lines.append(f"dev accuracy on {out['dev']['examples']} examples: {accuracy}{change}")
    if not out["pretrained_weights"]:
        lines.append("note: the model had no pretrained weights (random initialisation); fine for speed only")
    report(args, out, "\n".join(lines))


def run_pipeline(settings: cfg.PipelineConfig, args: argparse.Namespace) -> None:
    out = bort.run(settings.source, settings.task, settings.output, config=settings)
    if io.is_main():
        s = out.summary
        speed = ", ".join(f"{rt} {v:.1f}x" for rt, v in s["speedup"].items())
        print(f"student {','.join(map(str, s['architecture'].values()))} for {s['task']}: dev "
              f"{json.dumps({k: round(v, 4) for k, v in s['student']['dev'].items()})}; faster than the teacher: "
              f"{speed}\nmodel in {s['final_model']}; report in {out.output / 'report.html'}")


RUNNERS = {"cost": run_cost, "extract": run_extract, "pretrain": run_pretrain, "finetune": run_finetune,
           "bench": run_bench, "export": run_export,
           "run": run_pipeline}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("bort")
    log.handlers[:], log.propagate = [handler], False  # one line each, whatever a library adds to the root logger
    log.setLevel(logging.INFO if io.is_main() else logging.WARNING)
    try:
        settings = options(args)
        if getattr(args, "json", None) not in (None, "-"):
            io.check_new_file(args.json, "--json", getattr(settings, "overwrite", False))  # before the work
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # bort's own bars say what is going on
        transformers_logging.set_verbosity_error()  # e.g. "newly initialised head": expected when fine-tuning
        RUNNERS[args.command](settings, args)
        io.end_processes()
    except BortError as exc:
        print(f"bort {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bort {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    finally:
        io.end_sessions()
    return 0


if __name__ == "__main__":
    sys.exit(main())
