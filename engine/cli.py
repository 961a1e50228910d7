"""The command line: ``run``, ``validate`` and ``nodes``.

Exit codes: 0 success, 1 a node failed, 2 the workflow is invalid or cannot be
read, 130 cancelled with Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from . import events as ev
from .errors import CancelToken, LoomError
from .graph import Graph

EXIT_OK, EXIT_NODE_ERROR, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description="Loom: node-graph diffusion workflows. "
                                     "Without a command, opens the editor.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run a workflow headless (native, ComfyUI API/UI JSON, or a PNG with a workflow)")
    run.add_argument("file", type=Path)
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override a value; NODE is an id or a title; VALUE is JSON or plain text")
    run.add_argument("--output", type=Path, help="output folder (default: output/ beside main.py)")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    run.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                     help="fp32 reproduces ComfyUI's CPU pixels")
    run.add_argument("--memory-budget", type=float, metavar="GB",
                     help="keep loaded models within this many GB (default: 3/4 of RAM, or of VRAM on a GPU)")
    run.add_argument("--events", choices=("text", "json"), default="text",
                     help="json: one JSON event per line on stdout")
    run.add_argument("--no-cache", action="store_true", help="neither read nor write the output cache")
    val = sub.add_parser("validate", help="check a workflow without running it")
    val.add_argument("file", type=Path)
    nodes = sub.add_parser("nodes", help="list node types")
    nodes.add_argument("--json", action="store_true", help="dump every schema as JSON")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "validate":
        return cmd_validate(args)
    if args.command == "nodes":
        return cmd_nodes(args)
    from app.main import main as editor_main  # imported late: headless commands never load Qt

    return editor_main()


# --- nodes -------------------------------------------------------------------------

def cmd_nodes(args) -> int:
    from .registry import default_registry

    registry = default_registry()
    if args.json:
        json.dump(registry.schemas_json(), sys.stdout, indent=1)
        print()
    else:
        by_category: dict[str, list[str]] = {}
        for name in registry:
            by_category.setdefault(registry.get(name).CATEGORY, []).append(name)
        for category in sorted(by_category):
            print(f"{category}:")
            for name in by_category[category]:
                cls = registry.get(name)
                title = f"  ({cls.DISPLAY_NAME})" if cls.DISPLAY_NAME and cls.DISPLAY_NAME != name else ""
                print(f"  {name}{title}")
    for error in registry.load_errors:
        print(f"warning: {error.module}: {error.message}", file=sys.stderr)
    return EXIT_OK


# --- loading and overrides -----------------------------------------------------------

def load(path: Path):
    from .registry import default_registry
    from .workflow import load_workflow

    registry = default_registry()
    for error in registry.load_errors:
        print(f"warning: custom nodes {error.module} skipped: {error.message}", file=sys.stderr)
    loaded = load_workflow(path, registry)
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return loaded.graph, registry


def apply_overrides(graph: Graph, overrides: list[str]) -> None:
    """``NODE.INPUT=VALUE``: NODE is a node id or title; VALUE is parsed as JSON when it can be."""
    for item in overrides:
        target, sep, raw = item.partition("=")
        node_ref, dot, input_name = target.rpartition(".")
        if not sep or not dot:
            raise LoomError(f"--set {item!r}: expected NODE.INPUT=VALUE")
        matches = [n for n in graph.nodes.values() if n.id == node_ref] or \
                  [n for n in graph.nodes.values() if n.title == node_ref or (not n.title and n.type == node_ref)]
        if len(matches) != 1:
            found = "no node" if not matches else f"{len(matches)} nodes ({', '.join(n.id for n in matches)})"
            raise LoomError(f"--set {item!r}: {found} with id or title {node_ref!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = matches[0]
        node.links.pop(input_name, None)
        graph.set_value(node.id, input_name, value)
        if input_name in node.controls:
            node.controls[input_name] = "fixed"  # an explicit value is the one to use


# --- validate / run -------------------------------------------------------------------

def cmd_validate(args) -> int:
    from .validation import validate

    try:
        graph, registry = load(args.file)
    except LoomError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    _, needed, problems = validate(graph, registry)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{args.file}: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_INVALID
    print(f"{args.file}: valid ({len(needed)} nodes would run)")
    return EXIT_OK


def cmd_run(args) -> int:
    from . import memory
    from .executor import Executor
    from .paths import default_paths

    json_events = args.events == "json"
    try:
        graph, registry = load(args.file)
        apply_overrides(graph, args.set)
        policy = memory.configure(args.device, args.precision)
        if args.memory_budget is not None:
            if args.memory_budget <= 0:
                raise LoomError(f"--memory-budget must be positive, not {args.memory_budget}")
            memory.model_manager().budget_bytes = int(args.memory_budget * 2**30)
    except LoomError as exc:
        _report_fatal(exc, json_events)
        return EXIT_INVALID
    paths = default_paths()
    if args.output:
        paths.output_dir = args.output.resolve()
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    printer = JsonPrinter() if json_events else ProgressPrinter(graph)
    if not json_events:
        print(f"Loom: running {args.file} on {policy.describe()}", file=sys.stderr)

    token = CancelToken()
    previous = signal.signal(signal.SIGINT, _cancel_handler(token))
    try:
        result = Executor(registry, paths=paths).run(graph, on_event=printer, cancel=token, use_cache=not args.no_cache)
    finally:
        signal.signal(signal.SIGINT, previous)
    printer.summary(result)
    if not json_events:
        for line in memory.model_manager().log:
            print(f"  memory: {line}", file=sys.stderr)
        memory.model_manager().log.clear()
    if result.status == "invalid":
        return EXIT_INVALID
    if result.status == "error":
        return EXIT_NODE_ERROR
    if result.status == "cancelled":
        return EXIT_CANCELLED
    return EXIT_OK


def _cancel_handler(token: CancelToken):
    def handler(signum, frame):
        if token.cancelled:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        print("\ncancelling after the current step (Ctrl-C again to stop at once)...", file=sys.stderr)
        token.cancel()
    return handler


def _report_fatal(exc: Exception, json_events: bool) -> None:
    if json_events:
        print(json.dumps({"event": "load_error", "message": str(exc)}), flush=True)
    print(f"error: {exc}", file=sys.stderr)


class JsonPrinter:
    def __call__(self, event: ev.Event) -> None:
        print(json.dumps(event.to_json(), default=str), flush=True)

    def summary(self, result) -> None:
        for problem in result.problems:
            print(json.dumps({"event": "problem", **problem.to_json()}), flush=True)


class ProgressPrinter:
    """Per-node lines, or a live progress bar when stderr is a terminal."""

    def __init__(self, graph: Graph, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.graph = graph
        self.total = 0
        self.done = 0
        self._last_line = 0.0

    def _title(self, node_id: str) -> str:
        node = self.graph.nodes.get(node_id)
        return f"#{node_id} {node.display_title()}" if node else f"#{node_id}"

    def _write(self, text: str, transient: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("" if transient else "\n"))
        elif not transient:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self.total = len(event.nodes)
        elif isinstance(event, ev.SeedsResolved):
            for node_id, seeds in event.seeds.items():
                self._write(f"  seed {self._title(node_id)}: " + ", ".join(f"{k}={v}" for k, v in seeds.items()))
        elif isinstance(event, ev.NodeCached):
            self.done += 1
            self._write(f"[{self.done}/{self.total}] {self._title(event.node_id)} (cached)")
        elif isinstance(event, ev.NodeStarted):
            self._write(f"[{self.done + 1}/{self.total}] {self._title(event.node_id)} ...", transient=True)
        elif isinstance(event, ev.NodeProgress):
            self._progress(event)
        elif isinstance(event, ev.NodeFinished):
            self.done += 1
            self._write(f"[{self.done}/{self.total}] {self._title(event.node_id)} {event.seconds:.2f}s")
            for image in event.ui.get("images", []):
                if "path" in image:
                    self._write(f"  saved {image['path']}")
        elif isinstance(event, ev.NodeError):
            self._write(f"error: {event}")
            self._write("  (details: run with --events json for the traceback)"
                        if not self.tty else "  " + event.traceback.strip().splitlines()[-1])

    def _progress(self, event: ev.NodeProgress) -> None:
        if event.text:  # a message from the node (tiles, unmatched LoRA keys ...) is always shown
            self._write(f"  {self._title(event.node_id)}: {event.text}")
        percent = int(event.fraction * 100)
        if self.tty:
            bar = "#" * (percent // 4) + "-" * (25 - percent // 4)
            self._write(f"[{self.done + 1}/{self.total}] {self._title(event.node_id)} [{bar}] {percent:3d}%",
                        transient=True)
        elif event.fraction >= 1.0 or time.monotonic() - self._last_line > 2.0:
            self._last_line = time.monotonic()
            self._write(f"  {self._title(event.node_id)} {percent}%")

    def summary(self, result) -> None:
        for problem in result.problems:
            self._write(f"error: {problem}")
        timings = sorted(result.timings.items(), key=lambda kv: -kv[1])
        executed = ", ".join(f"{self._title(k)} {v:.2f}s" for k, v in timings[:8])
        self._write(f"{result.status}: {len(result.executed)} node(s) ran, {len(result.cached)} cached, "
                    f"{result.seconds:.2f}s total" + (f" — {executed}" if executed else ""))
