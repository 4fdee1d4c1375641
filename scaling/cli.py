"""The `scaling` command: prepare data, train, sweep, fit, ask, report, generate, demo.

Each package registers its own subcommands (`sweeps.cli`, `analysis.cli`, `models.cli`). This module wires
them up, sets up logging, and turns a `UserError` into a one-line message with exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import re
import sys
from pathlib import Path

from scaling.errors import UserError, yaml_problem
from scaling.numbers import whole_number

SWEEP_SECTIONS = frozenset({"grid", "isoflop"})  # top-level keys of a sweep spec that no run config has

log = logging.getLogger("scaling")


class WholeOptionParser(argparse.ArgumentParser):
    """An ArgumentParser, and its subcommands' parsers, that take option names only in full and report a bad
    command line in one line.

    argparse's default accepts any unambiguous prefix (`--max-ep` for `--max-epochs`), so a mistyped or
    shortened option would silently set whichever option it happens to match.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """Exit with status 2 and one line, as every other error here, instead of argparse's usage block."""
        help_hint = f"; see `{self.prog} --help`"
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            close = difflib.get_close_matches(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)), n=1)
            help_hint = f"; did you mean '{close[0]}'? See `{self.prog} --help`" if close else help_hint
        self.exit(2, f"{self.prog}: error: {message}{help_hint}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = WholeOptionParser(
        prog="scaling",
        description="Train decoder-only Transformers across sizes and token budgets, fit scaling laws, ask questions.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_data_parser(commands)
    _add_train_parser(commands)
    _add_demo_parser(commands)

    from sweeps.cli import add_parsers as add_sweep_parsers

    add_sweep_parsers(commands)

    from analysis.cli import add_parsers as add_analysis_parsers

    add_analysis_parsers(commands)

    from models.cli import add_parsers as add_model_parsers

    add_model_parsers(commands)
    return parser


def _add_runs_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", metavar="DIR", help="run store root (default: $SCALING_RUNS or ./runs)")


def _add_data_parser(commands) -> None:
    data = commands.add_parser("data", help="prepare a corpus: tokenize once, split by document")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    # nargs="*" below would show as [source ...], but one source is taken, as the usage line shows.
    prepare = data_commands.add_parser("prepare", help="tokenize a corpus into train and validation arrays",
                                       usage="%(prog)s [-h] [options] [SOURCE]")
    prepare.add_argument(
        "source",
        metavar="SOURCE",
        nargs="*",  # one source; several are refused with a hint, since they are mostly a glob the shell expanded
        default=["python-stdlib"],
        help="python-stdlib (default), a text file, a folder or glob of text files, or a .jsonl file",
    )
    prepare.add_argument("--out", metavar="DIR", help="output folder (default: RUNS/_data/<name>-<hash of its "
                                                       "path>-<tokenizer>, or python-stdlib-<tokenizer>)")
    prepare.add_argument("--tokenizer", choices=("bytes", "bpe"), default="bytes", help="bytes (vocabulary 256) or BPE")
    prepare.add_argument("--vocab-size", type=whole_number, help="BPE vocabulary size in tokens (default 4096)")
    prepare.add_argument("--text-field", default="text", help="JSONL field holding the document text")
    prepare.add_argument("--val-fraction", type=float, default=0.05,
                         help="share of the bytes held out for validation, approximately: whole documents chosen by "
                              "a hash of their names, or the last lines of the largest document when no choice of "
                              "whole documents comes within 3 times of it (default 0.05)")
    prepare.add_argument("--force", action="store_true", help="re-tokenize even if an identical result exists")
    _add_runs_option(prepare)
    prepare.set_defaults(handler=_data_prepare)


def _data_prepare(args: argparse.Namespace) -> int:
    from scaling.data import default_data_dir, prepare
    from scaling.paths import runs_root

    if len(args.source) > 1:
        listed = ", ".join(args.source[:3]) + (", ..." if len(args.source) > 3 else "")
        raise UserError(f"data prepare takes one source, got {len(args.source)} ({listed}); "
                        "a glob pattern must be quoted so that the shell does not expand it, e.g. 'data/*.txt', or "
                        "name the folder that holds the files")
    args.source = args.source[0]
    if args.vocab_size is not None and args.tokenizer != "bpe":
        raise UserError(f"--vocab-size {args.vocab_size} applies to --tokenizer bpe only; the bytes tokenizer "
                        "always has 256 tokens, so drop --vocab-size or add --tokenizer bpe")
    vocabulary = {} if args.vocab_size is None else {"vocab_size": args.vocab_size}  # else prepare's default
    out = args.out or default_data_dir(args.source, args.tokenizer, runs_root=runs_root(args.runs), **vocabulary,
                                       val_fraction=args.val_fraction, text_field=args.text_field)
    meta = prepare(
        args.source,
        out,
        tokenizer=args.tokenizer,
        **vocabulary,
        text_field=args.text_field,
        val_fraction=args.val_fraction,
        force=args.force,
    )
    print(json.dumps({"path": str(out), **meta}, indent=2))
    return 0


def _add_train_parser(commands) -> None:
    train = commands.add_parser("train", help="train one run from a config file (JSON or YAML)")
    train.add_argument("config", help="TrainConfig as JSON or YAML (nested model/optimizer/data sections)")
    _add_runs_option(train)
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument("--max-epochs", type=float, metavar="E",
                       help="refuse the run if its token budget exceeds E passes over the training split")
    train.add_argument("--mesh", metavar="LAYOUT",
                       help="device layout, overriding the config's mesh: data=N (data parallelism over N devices), "
                            "fsdp=N (parameters and optimizer state also sharded), or fsdp for all devices")
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from scaling.config import TrainConfig
    from scaling.run_lock import RunLocked
    from scaling.interrupts import interrupts_on_stop_signals

    path = Path(args.config)
    if not path.exists():
        raise UserError(f"config file {path} not found; pass a JSON or YAML TrainConfig")
    if path.is_dir():
        raise UserError(f"config file {path} is a folder; pass a JSON or YAML TrainConfig file, e.g. "
                        "examples/train_small.yaml")
    raw = _read_config_file(path)
    sections = sorted(SWEEP_SECTIONS & set(raw))
    if sections:
        raise UserError(f"{path} is a sweep spec (it has {', '.join(sections)}:), not one run's config; run it with "
                        f"`scaling sweep launch {path}`, or train one run from a config such as "
                        "examples/train_small.yaml")
    config = TrainConfig.from_dict(raw.get("config", raw))  # accepts a run's own config.json too
    if args.max_epochs is not None:
        config = config.replace(max_epochs=args.max_epochs)
    if args.mesh is not None:
        config = config.replace(mesh=args.mesh)
    try:
        # A scheduler's SIGTERM stops the run as Ctrl-C does ("interrupted"); a second signal waits for that.
        # The handler is in place before JAX is imported, because a signal that lands in one of JAX's garbage
        # collection callbacks under Python's own handler is dropped, and the run would go on.
        with interrupts_on_stop_signals(once=True):
            from scaling.train import train

            summary = train(config, args.runs, progress=not args.no_progress)
    except RunLocked as locked:
        print(f"scaling: {locked}; wait for it to finish", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0 if summary["status"] == "completed" else 1


def _read_config_file(path: Path) -> dict:
    import yaml

    from scaling.yaml_text import load_yaml

    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text; pass a JSON or YAML TrainConfig") from None
    except yaml.YAMLError as error:
        raise UserError(f"config file {path} is not valid JSON or YAML: {yaml_problem(error)}") from None
    if not isinstance(raw, dict):
        if raw is None:
            raise UserError(f"config file {path} is empty; start from examples/train_small.yaml")
        raise UserError(f"config file {path} must contain a mapping of config sections (model:, data:, ...)")
    return raw


def _add_demo_parser(commands) -> None:
    demo = commands.add_parser("demo", help="prepare the stdlib corpus, run an IsoFLOP sweep, fit, report and ask")
    demo.add_argument("--preset", choices=("full", "quick"), default="full",
                      help="full (about 2 min on 2 idle cores) or quick (about 1 min)")
    demo.add_argument("--workers", type=whole_number, default=2, help="local worker processes")
    _add_runs_option(demo)
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from scaling.demo import run_demo

    return run_demo(preset=args.preset, runs=args.runs, workers=args.workers)


def setup_logging(verbose: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    # Logs go to stderr so that stdout carries only results (JSON with --json) and can be piped. In a file or
    # pipe they are plain lines: rich would fold them at 80 columns or pad them with spaces to its width.
    console = Console(stderr=True)
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)-8s %(message)s", datefmt="%X"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    for noisy in ("absl", "jax", "orbax", "wandb", "matplotlib", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        status = args.handler(args)
        sys.stdout.flush()  # a closed pipe raises here, inside the handler below, not in Python's flush at exit
        return status
    except BrokenPipeError:  # the reader of stdout went away (`scaling ... | head`): stop as SIGPIPE would
        from scaling.terminal import exit_on_closed_stdout

        exit_on_closed_stdout()
    except UserError as error:
        print(f"scaling: error: {error}", file=sys.stderr)
        return UserError.exit_status
    except KeyboardInterrupt:
        print("scaling: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
