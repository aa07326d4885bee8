"""The flows' command lines (``python -m flows.NAME``, also run by ``facepipe flow NAME``): one settings source
and one error contract.

Every value the settings file holds is a flag whose default is the file's value (``--settings FILE``, else
``$FACEPIPE_FLOWS_CONFIG``, else flows/flows.toml): `FlowParser.add_setting` maps the flag to its settings key,
and `run_main` loads the file with the given flags as overrides, so flags and file go through the same
loader and checks. The same contract as the ``facepipe`` CLI: a `FacepipeError` (the one error tree: config,
data, store and registry errors) prints ``PROG: error: MESSAGE`` on one line and exits 2; ``-v`` also shows
Prefect's progress logs and the full traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prefect import Flow

from flows.settings import (
    DEFAULT_CONFIG,
    SETTINGS_ENV,
    FlowSettings,
    dask_address,
    load_settings,
    task_runner,
)
from pipeline.core.errors import FacepipeError

_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class FlowParser(argparse.ArgumentParser):
    """An argument parser with ``--settings``, ``-v`` and flags that override one settings value each."""

    def __init__(self, name: str, description: str | None) -> None:
        super().__init__(prog=f"python -m flows.{name}", description=description,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
        self.setting_keys: dict[str, str] = {}  # argparse dest -> settings key ("section.key")
        self.add_argument("--settings", metavar="FLOWS_TOML",
                          help=f"flows settings file giving every default below (default: ${SETTINGS_ENV} or "
                               f"{DEFAULT_CONFIG.parent.name}/{DEFAULT_CONFIG.name})")
        self.add_argument("-v", "--verbose", action="store_true",
                          help="show Prefect's progress logs, and the full traceback of an error")

    def add_setting(self, flag: str, key: str, help: str, **kwargs: Any) -> None:
        """``flag`` overrides the settings value ``key`` (``section.key``); its default is the file's value."""
        dest = flag.lstrip("-").replace("-", "_")
        section, name = key.split(".")
        self.add_argument(flag, dest=dest, default=None, help=f"{help} (default: [{section}] {name})", **kwargs)
        self.setting_keys[dest] = key

    def settings_overrides(self, args: argparse.Namespace) -> list[str]:
        return [f"{key}={getattr(args, dest)}" for dest, key in self.setting_keys.items()
                if getattr(args, dest) is not None]


def given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The flags among ``names`` that were given (not None), as flow parameters."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def with_runner(fl: Flow[..., Any], flag: str | None, settings: FlowSettings) -> Flow[..., Any]:
    """``fl`` on the Dask scheduler of ``--dask-address``, else $FACEPIPE_DASK_ADDRESS, else ``[dask] address``."""
    address = flag or dask_address(settings.dask.address)
    return fl.with_options(task_runner=task_runner(address)) if address else fl


class _Quiet(logging.Filter):
    """Without -v: only Prefect's warnings reach the console, and not the flow and task runs' failure reports
    (their tracebacks; the run's error is printed once, by `run_main`). The API and UI still get everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        return not (record.levelno >= logging.ERROR and record.name.startswith(_RUN_LOGGERS))


@contextmanager
def console_logging(verbose: bool) -> Iterator[None]:
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    handlers = {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}
    quiet = _Quiet()
    if not verbose:
        for h in handlers:
            h.addFilter(quiet)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)


def run_main(parser: FlowParser, run: Callable[[argparse.Namespace, FlowSettings], Any],
             argv: Sequence[str] | None = None, quiet_logs: bool = True) -> int:
    """Parse ``argv``, load the settings with the given flags as overrides, call ``run(args, settings)`` and
    print its result as one JSON line. A `FacepipeError` prints ``PROG: error: MESSAGE`` and returns 2.
    ``quiet_logs``: Prefect's console logs only with -v (`flows.deploy` serves: it always shows them)."""
    args = parser.parse_args(argv)
    with console_logging(args.verbose or not quiet_logs):
        try:
            settings = load_settings(args.settings, parser.settings_overrides(args), getattr(args, "set", None) or ())
            result = run(args, settings)
        except FacepipeError as exc:
            if args.verbose:
                traceback.print_exc()
            print(f"{parser.prog}: error: {exc}", file=sys.stderr, flush=True)
            return 2
    if result is not None:
        print(json.dumps(result, default=str), flush=True)
    return 0
