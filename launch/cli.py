"""`wsl`, the entry point: parse the command line, run its command, end with its status.

The stage commands live in launch.commands (their checks in launch.preflight, the parser in
launch.parser); `wsl launch` submits a stage as a job (launch.submit) and `wsl demo` runs
the pipeline on generated data (launch.demo).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from launch import commands, exits
from launch.parser import parse


def launch(args) -> int:
    # Loaded only to submit: its clients (subprocess, socket, submitit) cost every `wsl` start-up.
    from launch.submit import launch as submit_stage
    return submit_stage(args)


def demo(args) -> int:
    # Its stages run in this process, after torch is loaded: OpenMP reads its wait policy
    # only then (threads.limit sets the rest per stage).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from launch.demo import run_demo  # torch
    return run_demo(Path(args.workdir), fast=args.fast, seed=args.seed)


COMMANDS = {**commands.HANDLERS, "launch": launch, "demo": demo}


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else list(argv))
    return exits.status(COMMANDS[args.handler], args)


if __name__ == "__main__":
    sys.exit(main())
