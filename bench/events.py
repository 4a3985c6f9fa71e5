"""Benchmark: live event delivery over the /ws/events/ websocket.

    .venv/bin/python bench/events.py [--clients 500] [--events 1000] [--reconnect-events 200]
                                     [--client-processes 2] [--deadline 600]

Starts the server (bin/serve, one daphne process) on the environment's configuration (PostgreSQL and
Redis when DATABASE_URL / REDIS_URL are set, else a throwaway SQLite file and the in-process channel
layer: then events written by this benchmark's process reach the server through its outbox poll,
HITL_WAIT_POLL_SECONDS), connects C websocket clients to one project, writes E events from this
process (``events.services.event_emit``, each committed on its own) while the clients listen in
their own processes, and prints one JSON object:

  delivery_ratio      events received in order by all clients / (C x E): must be 1.0
  out_of_order        events received out of id order or twice (must be 0)
  latency_ms          commit to receipt, p50 / p99 / max over every (client, event)
  write_rate          events written per second (--rate caps it; by default as fast as this process writes,
                      which with 500 clients is more than one server process can fan out: the latency
                      is then the backlog)
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
import sys
import time
from pathlib import Path

from common import Client, arm_deadline, arm_traceback_dump, backend_description, bench_defaults, bench_project, \
    latency_summary

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_events(project_id, n, stamps, rate=0.0):
    """n events, each committed on its own (``rate`` per second at most when given); stamps[id] =
    commit time (time.time())."""
    from events.services import event_emit

    t0 = time.monotonic()
    for i in range(n):
        if rate:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
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
    """Until every listener got the last of ``ids`` (events arrive in id order; the caller counts
    what is missing), cheaply: the clients share the machine with the server."""
    last = max(ids) if ids else 0
    while time.monotonic() < deadline:
        if all(l.ids and l.ids[-1] >= last for l in listeners):
            return True
        await asyncio.sleep(0.1)
    return False


def client_process(conn, uri, key, n, wait):
    """A process of ``n`` listeners, driven by the parent over ``conn`` (so the clients' work does
    not slow down the writer)."""
    async def main():
        listeners = [Listener(uri, key) for _ in range(n)]
        for i in range(0, n, 50):
            await asyncio.gather(*(l.connect() for l in listeners[i:i + 50]))
        conn.send("ready")
        while True:
            command, arg = await asyncio.to_thread(conn.recv)
            if command == "wait":      # until every listener has these ids: their receipt times
                await wait_for(listeners, arg, time.monotonic() + wait)
                conn.send([({i: l.times[i] for i in arg if i in l.times}, l.bad) for l in listeners])
            elif command == "close":
                await asyncio.gather(*(l.close() for l in listeners), return_exceptions=True)
                conn.send("closed")
            elif command == "reconnect":
                last = [l.ids[-1] if l.ids else 0 for l in listeners]
                for i in range(0, n, 50):
                    await asyncio.gather(*(l.connect(last[j]) for j, l in enumerate(listeners[i:i + 50], i)))
                conn.send("reconnected")
            else:
                await asyncio.gather(*(l.close() for l in listeners), return_exceptions=True)
                conn.send("bye")
                return
    asyncio.run(main())


def run_clients(port, key, project_id, args, errors):
    import multiprocessing

    uri = f"ws://127.0.0.1:{port}/ws/events/?project_id={project_id}"
    ctx = multiprocessing.get_context("fork")
    procs, conns = [], []
    share = [args.clients // args.client_processes + (1 if i < args.clients % args.client_processes else 0)
             for i in range(args.client_processes)]
    for n in share:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=client_process, args=(child, uri, key, n, args.wait), daemon=True)
        proc.start()
        procs.append(proc)
        conns.append(parent)
    try:
        for conn in conns:
            if not conn.poll(args.wait) or conn.recv() != "ready":
                raise RuntimeError("clients did not connect")
        time.sleep(1.0)

        def gather(ids):
            for conn in conns:
                conn.send(("wait", ids))
            per_listener = []
            for conn in conns:
                if not conn.poll(args.wait + 30):
                    raise RuntimeError("clients did not answer")
                per_listener.extend(conn.recv())
            return per_listener

        stamps: dict[int, float] = {}
        t0 = time.monotonic()
        write_events(project_id, args.events, stamps, args.rate)
        write_s = time.monotonic() - t0
        ids = sorted(stamps)
        listeners = gather(ids)
        received = sum(len(times) for times, _ in listeners)
        if received < len(listeners) * len(ids):
            errors["not all delivered in time"] += 1
        latencies = [(t - stamps[i]) * 1000 for times, _ in listeners for i, t in times.items()]
        bad = sum(b for _, b in listeners)
        result = {"delivery_ratio": round(received / (len(listeners) * len(ids)), 6), "out_of_order": bad,
                  "latency_ms": latency_summary(latencies, 50, 99), "write_rate": round(len(ids) / write_s, 1)}

        # reconnect: everybody drops, R events are written meanwhile, everybody comes back with last_event_id
        for conn in conns:
            conn.send(("close", None))
        for conn in conns:
            conn.recv()
        missed: dict[int, float] = {}
        write_events(project_id, args.reconnect_events, missed)
        started = time.time()
        for conn in conns:
            conn.send(("reconnect", None))
        for conn in conns:
            conn.recv()
        listeners = gather(sorted(missed))
        got = sum(len(times) for times, _ in listeners)
        if got < len(listeners) * len(missed):
            errors["reconnect: not all caught up in time"] += 1
        catch_up = [(max(times.values()) - started) * 1000 for times, _ in listeners if len(times) == len(missed)]
        result["reconnect"] = {"events": len(missed), **latency_summary(catch_up, 50, 99),
                               "delivery_ratio": round(got / (len(listeners) * len(missed)), 6),
                               "out_of_order": sum(b for _, b in listeners) - bad}
        for conn in conns:
            conn.send(("stop", None))
        return result
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def main():
    arm_traceback_dump()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--reconnect-events", type=int, default=200)
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for delivery")
    parser.add_argument("--client-processes", type=int, default=2, help="processes the clients are spread over")
    parser.add_argument("--rate", type=float, default=0, help="events written per second (0: as fast as possible)")
    parser.add_argument("--deadline", type=float, default=600, help="seconds before the run gives up")
    args = parser.parse_args()
    arm_deadline(args.deadline, "events")
    bench_defaults()
    _admin, project, agent, _reviewer, _stamp = bench_project("Events", "events")
    from access.services import api_key_create

    key = api_key_create(user=agent)[1]
    from throughput import serve   # the production launcher, with a deadline-safe teardown

    errors = collections.Counter()
    result = {"benchmark": "events", **backend_description(), "clients": args.clients, "events": args.events,
              "rate_asked": args.rate or "max"}
    with serve(1, key=key) as (port, _pids):
        client = Client(port, key)
        base = []
        for _ in range(50):
            t = time.monotonic()
            client.call("GET", f"/api/v1/projects/{project.pk}")
            base.append((time.monotonic() - t) * 1000)
        result["baseline_ms"] = latency_summary(base, 50)["p50"]
        result.update(run_clients(port, key, str(project.pk), args, errors))
    result["errors"] = dict(errors)
    print(json.dumps(result, indent=2))
    return 0 if result.get("delivery_ratio") == 1.0 and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
