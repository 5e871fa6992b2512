#!/usr/bin/env python3
"""Splits a gateway profile by the hop of a small-channel event's path.

    hops.py perf PERF_SCRIPT_OUTPUT
        `perf script -F comm,tid,ip,sym,dso` of `perf record --call-graph
        dwarf` on the gateways: each sample goes to the first rule whose
        pattern matches a user-space frame of its stack, frames read from
        the leaf up (so a hash under the history's append is the append's,
        not the dispatch handler's, and a write(2)'s kernel work is the
        writer's); prints each hop's share of the samples and how much of
        it was in the kernel.

    hops.py callgrind CALLGRIND_OUT EVENTS
        A dump of deploy/scripts/bench-callgrind.sh: callgrind keeps no
        whole stacks, so each hop is the inclusive cost of its entry
        functions (the poll functions of the tasks that run it), less the
        hops nested in it; prints instructions per event for each.

The rules name the gateway's functions as the release build's symbols
spell them; a function the compiler inlined into its caller counts as the
caller's, which is why the rules are whole tasks and their callees.
"""

import re
import subprocess
import sys
from collections import defaultdict

# (hop, pattern), most specific first: a sample goes to the first hop any
# of whose frames matches, looking from the leaf up; the last (the
# runtime) only when no other matches anywhere.
RULES = [
    ("history append (serialise, sign, publish, await the ack)",
     r"otako_gateway::history::History::append"),
    ("database load (loader task, sqlx, PostgreSQL wire)",
     r"otako_gateway::db::|sqlx_core::|sqlx_postgres::"),
    ("routing (Hub::deliver: index; a small fan-out's writes, render and write(2); else queue and wake)",
     r"otako_gateway::fanout::Hub::deliver|otako_gateway::handle::SessionHandle::offer"),
    ("history read (follow: verify, parse, build the frame)",
     r"otako_gateway::history::History::(follow|route|check)|otako_gateway::frame::Frame::new"),
    ("reply (roundtrip: serialise, sign, publish)",
     r"otako_common::proto::Roundtrip|otako_gateway::dispatch::Dispatcher::handle_in.*sign"),
    ("request in (dispatch loop, parse, span)",
     r"otako_gateway::dispatch::|otako_gateway::server::dispatch_loop|otako_common::event::Received"),
    ("session task write (wake, render, WebSocket frame, write(2); big fan-outs, heartbeats)",
     r"otako_gateway::session::|otako_gateway::frame::Frame::render|tungstenite::"),
    ("NATS connection task (socket reads and writes, protocol parse, all subjects)",
     r"async_nats::"),
    ("runtime (scheduler, wake-ups, epoll, timers)",
     r"tokio::runtime::|tokio::time::|mio::|parking_lot|futex|epoll"),
]


def classify_perf(path):
    rules = [(hop, re.compile(p)) for hop, p in RULES]
    counts = defaultdict(int)
    kernel = defaultdict(int)
    total = 0
    frames = []

    def flush():
        nonlocal total, frames
        if not frames:
            return
        hop = None
        # Kernel frames name what the kernel does for the task (a loopback
        # write runs the reader's epoll wake-up), not whose work it is:
        # the first user-space frame above them decides. The runtime's
        # frames (its I/O driver sits under every socket call) count only
        # when no hop's frame is on the stack at all.
        user = [f for f in frames if "[kernel.kallsyms]" not in f]
        for f in user:
            hop = next((name for name, rx in rules[:-1] if rx.search(f)), None)
            if hop:
                break
        if hop is None:
            runtime, rx = rules[-1]
            hop = runtime if any(rx.search(f) for f in user) else "other"
        total += 1
        counts[hop] += 1
        if "[kernel.kallsyms]" in frames[0]:
            kernel[hop] += 1
        frames = []

    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                flush()
            elif line.startswith(("\t", " ")):
                frames.append(line.strip())
            else:
                flush()
    flush()
    print(f"{total} samples")
    print(f"{'hop':80} {'share':>7} {'kernel':>7}")
    for hop, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"{hop:80} {100 * n / total:6.1f}% {100 * kernel[hop] / max(n, 1):6.1f}%")


# Callgrind: each hop is the inclusive cost of its entry functions, less
# what the hops listed under it already count.
ENTRIES = [
    ("request in + reply (dispatch loop and handler, less the append)",
     r"otako_gateway::server::dispatch_loop::\{\{closure\}\}|otako_gateway::dispatch::Dispatcher::handle::\{\{closure\}\}",
     ["append"]),
    ("append", r"otako_gateway::history::History::append::\{\{closure\}\}", []),
    ("loader", r"otako_gateway::db::load_worker::\{\{closure\}\}", []),
    ("history read (follow, less routing)",
     r"otako_gateway::history::History::follow::\{\{closure\}\}", ["routing"]),
    ("routing", r"otako_gateway::fanout::Hub::deliver", []),
    ("session task (wake-up, render, WebSocket write; heartbeats)",
     r"otako_gateway::session::serve::\{\{closure\}\}", []),
    ("NATS connection task",
     r"async_nats::connection::Connection::|async_nats::ConnectionHandler::", []),
]


def classify_callgrind(path, events):
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--auto=no", path],
        check=True, capture_output=True, text=True).stdout
    total = 0
    fns = []
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.*)$", line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        name = m.group(2)
        if "PROGRAM TOTALS" in name:
            total = ir
        else:
            fns.append((ir, name))
    inclusive = {}
    for key, pattern, _ in ENTRIES:
        rx = re.compile(pattern)
        # The outermost match: the largest inclusive cost (a nested poll of
        # the same function is inside it).
        inclusive[key] = max((ir for ir, n in fns if rx.search(n)), default=0)
    names = {
        "append": "history append (serialise, sign, publish; the ack wait is the NATS task's)",
        "loader": "database load (loader task: query, decode)",
        "routing": "routing (Hub::deliver: index; a small fan-out's writes, render and write(2); else queue and wake)",
    }
    rows = []
    counted = 0
    for key, _, minus in ENTRIES:
        ir = inclusive[key] - sum(inclusive[m] for m in minus if m != key)
        rows.append((names.get(key, key), ir))
        counted += ir
    rows.append(("rest: runtime (scheduler, wake-ups, timers, epoll), allocator outside the tasks, other",
                 total - counted))
    print(f"{total} Ir over {events} events: {total / events:,.0f} per event")
    print(f"{'hop':90} {'Ir/event':>10} {'share':>7}")
    for name, ir in rows:
        print(f"{name:90} {ir / events:10,.0f} {100 * ir / max(total, 1):6.1f}%")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "perf":
        classify_perf(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "callgrind":
        classify_callgrind(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
