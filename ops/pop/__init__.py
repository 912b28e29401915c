"""`boxoffice pop …`: bring an edge POP into service and take it out, one checked step at a time.

    deploy:  start → warm → healthy → register with GeoDNS → in rotation
    retire:  deregister → wait out the DNS TTL → drain → stop

Each step prints what it does and what came of it. When a deploy step fails,
the steps already done are undone in reverse order (deregister, stop the
process it started) and the command exits 1, so a half-deployed POP never
stays in DNS and no orphan process stays behind. A retire step never undoes
anything: once a POP is out of DNS it is never put back by accident, and a POP
is never stopped while GeoDNS may still hand out its address.

`deploy` starts the POP as a detached process (`python -m ops.cli edge serve
…` in a session of its own) and writes ``RUN_DIR/NAME/pop.json`` (pid, where
it listens, its warm/purge token; mode 0600) next to its log, which is how
`retire` finds it later. ``--attach`` takes a POP that is already running
instead (a container, a systemd unit): nothing is started, so nothing is
stopped on rollback or on retire.

The warm list comes from the predictor (``GET {predictor}/v1/warm/{pop}`` →
``{"urls": [path | {"url", "priority"}, …]}``) and is handed to the POP's
``POST /_edge/warm`` as is. Without ``--predictor`` the POP starts cold and
the step says so; with one, an unreachable predictor or a malformed list fails
the deploy.

All HTTP here is plain urllib with a finite timeout and no proxy: the peers are
the POP itself, GeoDNS's admin API and the predictor, all on the operator's
network.

The package, in the order each module builds on the last: :mod:`.steps` (steps,
rollback, waiting), :mod:`.process` (the POP's process and its state file),
:mod:`.peers` (HTTP to the POP, GeoDNS and the predictor), :mod:`.deploy`,
:mod:`.retire`, and :mod:`.cli` (arguments and ``main``).
"""

from __future__ import annotations

from ops.pop.cli import main
from ops.pop.steps import PopError, Step, run_steps
from ops.runtime import process_alive

__all__ = ["PopError", "Step", "main", "process_alive", "run_steps"]
