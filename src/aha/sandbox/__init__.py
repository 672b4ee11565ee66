"""Run untrusted, model-written Python against tests, locally, without trusting the program.

During RL the policy writes thousands of programs an hour; some loop forever, eat memory, fork without
end, write or delete files, open sockets, read secrets, kill their parent or game the test harness. This
package runs each program in a bubblewrap sandbox (PID, network, IPC and mount namespaces; only the
interpreter and its standard library visible, read-only; a private size-limited /tmp; a clean
environment; rlimits on memory, CPU, processes, files and output) and scores it with a two-process
harness whose verdicts the program cannot forge (see `_harness.py` and docs/sandbox.md). Without a
working bubblewrap the default isolation (`auto`) refuses to run programs (AhaError); `rlimits` (rlimits,
a new session and a fresh working directory, no namespaces) runs only when asked for by name.

Public API: `run_python`, `run_job`, `run_many`, `SandboxJob`, `SandboxResult`, `TestCase`,
`tests_from_source`, `isolation`.
"""

from __future__ import annotations

from aha.sandbox.core import (
    SandboxJob,
    SandboxResult,
    TestCase,
    isolation,
    run_job,
    run_many,
    run_python,
    tests_from_source,
)

__all__ = [
    "SandboxJob",
    "SandboxResult",
    "TestCase",
    "isolation",
    "run_job",
    "run_many",
    "run_python",
    "tests_from_source",
]
