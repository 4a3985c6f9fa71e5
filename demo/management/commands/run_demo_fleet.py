import asyncio
import contextlib
import os
import signal
import sys
import traceback

from django.core.management.base import BaseCommand, CommandError

from demo.fleet import Fleet, FleetError
from hitl_sdk import HitlError

RESTART_SECONDS = 10


class Command(BaseCommand):
    help = ("Run the demo fleet: the six BotArmy agents (orchestrator, analyst, architect, coder, tester, "
            "deployer) against a BotArmy HITL server, through the agent SDK only, with an offline stand-in "
            "for the model that sometimes produces risky output. Round after round (for ever unless --rounds); "
            "it halts on an emergency stop and resumes once the project is recovered. Ctrl-C stops it.")
    requires_system_checks: list = []  # it talks to a server over HTTP; this process needs no database

    def add_arguments(self, parser):
        parser.add_argument("--url", default=os.environ.get("HITL_URL", "http://127.0.0.1:8000"),
                            help="the server (default: $HITL_URL or http://127.0.0.1:8000)")
        parser.add_argument("--project", default="demo", help="the project's slug or id (default: demo)")
        parser.add_argument("--agent-key", default=None,
                            help="the agent's API key (default: $HITL_API_KEY); its user needs the agent role")
        parser.add_argument("--rounds", type=int, default=None, help="stop after this many rounds (default: never)")
        parser.add_argument("--seed", type=int, default=0, help="the stand-in model's seed (default: 0)")
        parser.add_argument("--pace", type=float, default=3.0,
                            help="seconds between steps, twice that between rounds (default: 3)")
        parser.add_argument("--critical-rate", type=float, default=0.1,
                            help="chance per round (from round 2 on) of a critical flag that stops the project "
                                 "(default: 0.1; 0: never)")
        parser.add_argument("--wait-for-server", type=float, default=60.0,
                            help="seconds to wait for the server to answer at start (default: 60)")

    def handle(self, *args, url, project, agent_key, rounds, seed, pace, critical_rate, wait_for_server, **options):
        api_key = agent_key or os.environ.get("HITL_API_KEY")
        if not api_key:
            raise CommandError("an agent's API key is needed: --agent-key KEY or HITL_API_KEY "
                               "(make run prints the demo agent's key; or: manage.py hitl_access agent --api-key)")
        if rounds is not None and rounds < 1:
            raise CommandError("--rounds must be at least 1")

        def log(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        def make(first_round: int) -> Fleet:
            return Fleet(url, project, api_key, rounds=rounds, seed=seed, pace=pace, critical_rate=critical_rate,
                         wait_for_server=wait_for_server, first_round=first_round, log=log)

        try:
            asyncio.run(self._run(make, forever=rounds is None, log=log))
        except FleetError as exc:
            raise CommandError(str(exc)) from None
        except HitlError as exc:
            raise CommandError(f"the fleet stopped: {exc}") from None
        except KeyboardInterrupt:
            pass

    async def _run(self, make, *, forever: bool, log) -> None:
        """The fleet until its rounds are done, or until SIGINT or SIGTERM (it stops within about a
        second: its pending call is withdrawn, with a one-second limit). Running for ever, an error
        is logged and the fleet starts again (with the next round) ten seconds later, so that under
        ``make run`` it never takes the server down with it."""
        main = asyncio.current_task()
        loop = asyncio.get_running_loop()
        installed, stopping = [], []

        def stop(signame: str) -> None:
            if not stopping:
                stopping.append(signame)
                print(f"fleet: {signame}: stopping", file=sys.stderr, flush=True)
            main.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
                loop.add_signal_handler(sig, stop, sig.name)
                installed.append(sig)
        first_round = 1
        try:
            while True:
                fleet = make(first_round)
                try:
                    await fleet.run()
                    return
                except asyncio.CancelledError:
                    if stopping:
                        return
                    raise
                except Exception as exc:  # noqa: BLE001
                    if not forever:
                        raise
                    if not isinstance(exc, (FleetError, HitlError)):
                        traceback.print_exc(file=sys.stderr)
                    log(f"fleet: stopped by an error ({exc}); starting again in {RESTART_SECONDS} s")
                    first_round = fleet.round_no + 1
                    try:
                        await asyncio.sleep(RESTART_SECONDS)
                    except asyncio.CancelledError:
                        if stopping:
                            return
                        raise
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
