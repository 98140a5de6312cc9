"""A diagnostic probe for event-loop stalls in the service's workers: garbage-collector pauses and loop lag.

Not part of the service: Python imports this file at start-up only when its folder is on
PYTHONPATH, and it does nothing unless STALL_PROBE names a folder to write to::

    STALL_PROBE=/tmp/stalls PYTHONPATH=benchmarks/probe python -m benchmarks.load --mix player --no-null

Every Python process started that way except Locust (whose gevent loop it would disturb) appends
JSON lines to ``STALL_PROBE/stall-<pid>.jsonl``:

* ``{"gc": generation, "ms": ..., "young": ...}`` for each collection over 2 ms, with the size of
  the young generation and its commonest types when it began (how the answer cache's tuple keys
  were found to make collections long);
* ``{"lag_ms": ..., "cpu_ms": ..., "gc_ms": ...}`` when a 2 ms heartbeat on the worker's uvloop
  loop comes more than 8 ms late: with ``cpu_ms`` close to ``lag_ms`` the loop was busy (a long
  callback, a burst, a collection: ``gc_ms`` of it); far below, the process was not running.

The heartbeat and the young-generation census cost CPU themselves: use it to find stalls, not to
measure cost.
"""
from __future__ import annotations

import gc
import json
import os
import time
from collections import Counter
from typing import Any

_OUT = os.environ.get("STALL_PROBE")
_LAG_S, _BEAT_S, _GC_MS = 0.008, 0.002, 2.0


def _install(out: str) -> None:
    log = open(f"{out}/stall-{os.getpid()}.jsonl", "a", buffering=1)  # noqa: SIM115 (open for the process's life)
    state: dict[str, Any] = {"started": 0.0, "gc_s": 0.0, "young": None}

    def write(record: dict[str, Any]) -> None:
        log.write(json.dumps({"t": round(time.time(), 3), **record}) + "\n")

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            if info["generation"] == 0:
                young = gc.get_objects(0)
                state["young"] = {"objects": len(young),
                                  "types": Counter(type(o).__name__ for o in young).most_common(5)}
                del young
            state["started"] = time.perf_counter()
            return
        took = time.perf_counter() - state["started"]
        state["gc_s"] += took
        if took * 1e3 > _GC_MS:
            write({"gc": info["generation"], "ms": round(took * 1e3, 2),
                   "young": state["young"] if info["generation"] == 0 else None})

    gc.callbacks.append(on_gc)

    import uvloop  # the workers' loop (musicrec serve runs uvicorn with loop="uvloop")

    new_event_loop = uvloop.new_event_loop

    def probed_loop() -> Any:
        loop = new_event_loop()
        last = [time.perf_counter(), time.thread_time(), 0.0]

        def beat() -> None:
            now, cpu = time.perf_counter(), time.thread_time()
            lag = now - last[0] - _BEAT_S
            if lag > _LAG_S:
                write({"lag_ms": round(lag * 1e3, 2), "cpu_ms": round((cpu - last[1]) * 1e3, 2),
                       "gc_ms": round((state["gc_s"] - last[2]) * 1e3, 2)})
            last[:] = [now, cpu, state["gc_s"]]
            loop.call_later(_BEAT_S, beat)

        loop.call_soon(beat)
        return loop

    uvloop.new_event_loop = probed_loop


if _OUT:
    with open("/proc/self/cmdline", "rb") as cmdline:
        if b"locust" not in cmdline.read():
            _install(_OUT)
