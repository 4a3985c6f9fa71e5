"""Benchmark: live event delivery over the /ws/events/ websocket.

    .venv/bin/python bench/events.py [--clients 500] [--events 1000] [--reconnect-events 200] [--deadline 600]

Starts the server (bin/serve, one daphne process) on the environment's configuration (PostgreSQL and
Redis when DATABASE_URL / REDIS_URL are set, else a throwaway SQLite file and the in-process channel
layer: then events written by this benchmark's process reach the server through its outbox poll,
HITL_WAIT_POLL_SECONDS), connects C websocket clients to one project, writes E events from this
process (``events.services.event_emit``, each committed on its own), and prints one JSON object:

  delivery_ratio      events received in order by all clients / (C x E): must be 1.0
  out_of_order        events received out of id order or twice (must be 0)
  latency_ms          commit to receipt, p50 / p99 / max over every (client, event)
  write_rate          events written per second
  reconnect           every client closes, R more events are written, every client reconnects with
                      its last_event_id: catch-up time p50 / p99 / max (reconnect to last missed event)
                      and the delivery ratio of the missed events
  baseline_ms         a trivial authenticated GET on the same server (p50), for scale on a noisy machine
  errors              counts and the first few

The run has a deadline (the servers it started are killed, exit 2) and stops its server on any error.
"""
import argparse
import asyncio
import collections
import json
import os
import sys
import threading
import time
from pathlib import Path

import common
from common import Client, arm_deadline, arm_traceback_dump, backend_description, bench_defaults, bench_project, \
    latency_summary

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_events(project_id, n, stamps):
    """n events, each committed on its own; stamps[id] = commit time (time.time())."""
    from events.services import event_emit

    for i in range(n):
        event = event_emit(project_id=project_id, event_type="budget_alert", data={"bench": i})
        stamps[event.id] = time.time()


class Listener:
    def __init__(self, uri, key):
        self.uri, self.key = uri, key
        self.ids: list[int] = []
        self.times: dict[int, float] = {}
        self.bad = 0
        self.ws = None
        self.task = None

    async def connect(self, last_event_id=None):
        import websockets

        uri = self.uri if last_event_id is None else f"{self.uri}&last_event_id={last_event_id}"
        self.ws = await websockets.connect(uri, additional_headers={"Authorization": f"Bearer {self.key}"},
                                           max_size=None, open_timeout=120, ping_interval=None)
        self.task = asyncio.ensure_future(self._read())

    async def _read(self):
        try:
            async for message in self.ws:
                event = json.loads(message)
                if "event_type" not in event:
                    continue
                now = time.time()
                if self.ids and event["id"] <= self.ids[-1]:
                    self.bad += 1
                    continue
                self.ids.append(event["id"])
                self.times[event["id"]] = now
        except Exception:  # noqa: BLE001 - closed
            return

    async def close(self):
        await self.ws.close()
        await asyncio.wait_for(self.task, 30)


async def wait_for(listeners, ids, deadline):
    want = set(ids)
    while time.monotonic() < deadline:
        if all(want <= set(l.times) for l in listeners):
            return True
        await asyncio.sleep(0.05)
    return False


async def run_clients(port, key, project_id, args, errors):
    uri = f"ws://127.0.0.1:{port}/ws/events/?project_id={project_id}"
    listeners = [Listener(uri, key) for _ in range(args.clients)]
    for i in range(0, len(listeners), 50):   # connect in batches
        await asyncio.gather(*(l.connect() for l in listeners[i:i + 50]))
    await asyncio.sleep(1.0)
    stamps: dict[int, float] = {}
    t0 = time.monotonic()
    await asyncio.to_thread(write_events, project_id, args.events, stamps)
    write_s = time.monotonic() - t0
    ok = await wait_for(listeners, stamps, time.monotonic() + args.wait)
    if not ok:
        errors["not all delivered in time"] += 1
    ids = sorted(stamps)
    received = sum(len(set(ids) & set(l.times)) for l in listeners)
    latencies = [(l.times[i] - stamps[i]) * 1000 for l in listeners for i in ids if i in l.times]
    result = {"delivery_ratio": round(received / (len(listeners) * len(ids)), 6),
              "out_of_order": sum(l.bad for l in listeners),
              "latency_ms": latency_summary(latencies, 50, 99),
              "write_rate": round(len(ids) / write_s, 1)}

    # reconnect: everybody drops, R events are written meanwhile, everybody comes back with last_event_id
    last = {id(l): (l.ids[-1] if l.ids else 0) for l in listeners}
    await asyncio.gather(*(l.close() for l in listeners))
    missed: dict[int, float] = {}
    await asyncio.to_thread(write_events, project_id, args.reconnect_events, missed)
    started = time.time()
    for i in range(0, len(listeners), 50):
        await asyncio.gather(*(l.connect(last[id(l)]) for l in listeners[i:i + 50]))
    ok = await wait_for(listeners, missed, time.monotonic() + args.wait)
    if not ok:
        errors["reconnect: not all caught up in time"] += 1
    catch_up = [(max(l.times.get(i, float("inf")) for i in missed) - started) * 1000 for l in listeners]
    got = sum(len(set(missed) & set(l.times)) for l in listeners)
    result["reconnect"] = {"events": len(missed), **latency_summary([c for c in catch_up if c != float("inf")],
                                                                    50, 99),
                           "delivery_ratio": round(got / (len(listeners) * len(missed)), 6),
                           "out_of_order": sum(l.bad for l in listeners) - result["out_of_order"]}
    await asyncio.gather(*(l.close() for l in listeners), return_exceptions=True)
    return result


def main():
    arm_traceback_dump()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--reconnect-events", type=int, default=200)
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for delivery")
    parser.add_argument("--deadline", type=float, default=600, help="seconds before the run gives up")
    args = parser.parse_args()
    arm_deadline(args.deadline, "events")
    bench_defaults()
    _admin, project, agent, _reviewer, _stamp = bench_project("Events", "events")
    from access.services import api_key_create

    key = api_key_create(user=agent)[1]
    from throughput import serve   # the production launcher, with a deadline-safe teardown

    errors = collections.Counter()
    result = {"benchmark": "events", **backend_description(), "clients": args.clients, "events": args.events}
    with serve(1, key=key) as (port, _pids):
        client = Client(port, key)
        base = []
        for _ in range(50):
            t = time.monotonic()
            client.call("GET", f"/api/v1/projects/{project.pk}")
            base.append((time.monotonic() - t) * 1000)
        result["baseline_ms"] = latency_summary(base, 50)["p50"]
        result.update(asyncio.run(run_clients(port, key, str(project.pk), args, errors)))
    result["errors"] = dict(errors)
    print(json.dumps(result, indent=2))
    return 0 if result.get("delivery_ratio") == 1.0 and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
