"""Delivery to a pipe alias: run the command with the message on stdin."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chasquid.daemon.courier.base import DeliveryError
from chasquid.msgbody import Body
from chasquid.programs.process import (
    Output,
    ProgramInputError,
    ProgramStartError,
    resolve_program,
    run_program,
)

DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class PipeCourier:
    """Runs a pipe alias's command line; every failure is permanent."""

    config_dir: Path
    timeout: float = DEFAULT_TIMEOUT

    async def deliver(self, sender: str, rcpt: str, body: Body) -> None:
        """Run rcpt (the alias's command line) with the message, LF endings as stored, on stdin."""
        words = rcpt.split()
        if not words:
            raise DeliveryError("empty pipe", permanent=True)
        try:
            program = resolve_program(words[0], self.config_dir)
            result = await run_program(
                [program, *words[1:]],
                stdin=body.stdin(),
                cwd=self.config_dir,
                timeout=self.timeout,
                output=Output.DISCARD,
            )
        except ProgramStartError as e:
            raise DeliveryError(str(e), permanent=True) from e
        except (ProgramInputError, OSError) as e:
            # The message could not be read (from the queue's file): try again later.
            raise DeliveryError(str(e), permanent=False) from e
        if result.returncode != 0:
            # A timeout kills the process, so it reads as "signal: killed".
            raise DeliveryError(result.reason(), permanent=True)
