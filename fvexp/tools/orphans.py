"""Find the runs left RUNNING by a process that was killed outright, and end them KILLED.

    python -m fvexp.tools.orphans [--store URI]            # list the RUNNING runs and whether their process lives
    python -m fvexp.tools.orphans [--store URI] --mark     # end those whose process is gone as KILLED

A process killed outright (SIGKILL, the OOM killer, a lost machine) cannot close its MLflow run,
which then stays RUNNING forever. Every run records its process as the tags `fvexp.host` and
`fvexp.pid`: a RUNNING run of this host whose process no longer exists (or whose process id now
belongs to a process started after the run began) is an orphan. --mark ends each orphan KILLED
with the tag `error` = "the process ended without closing the run (killed?)". Runs of other hosts,
and runs without those tags (a sweep's parent run, runs of an older fvexp), cannot be checked
from here: they are listed as unknown and never marked.
"""

from __future__ import annotations

import argparse
from typing import Any

from fvexp.credentials import redact
from fvexp.tools.arguments import add_store, one_line_errors
from fvexp.tracking.store import ORPHANED, process_state, reader


@one_line_errors("fvexp.orphans")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store(parser)
    parser.add_argument("--mark", action="store_true", help="end the runs whose process is gone as KILLED")
    args = parser.parse_args(argv)
    for line in orphans(args.store, args.mark):
        print(line)


def orphans(store: str, mark: bool) -> list[str]:
    """A line per RUNNING run of the store (gone, alive or unknown) and a summary; `mark` ends the gone ones."""
    client = reader(store)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    runs = client.search_runs(list(experiments), "attributes.status = 'RUNNING'",
                              order_by=["attributes.start_time ASC"], max_results=50000) if experiments else []
    if not runs:
        return [f"no RUNNING runs in {redact(store)}"]
    lines, states = [], []
    for run in runs:
        state, why = process_state(run)
        states.append(state)
        lines.append(f"{state:<7} {run.info.run_id}  {experiments[run.info.experiment_id]}/{run.info.run_name}: {why}")
    gone = [run for run, state in zip(runs, states, strict=True) if state == "gone"]
    summary = (f"{len(runs)} RUNNING run{plural(runs)}: {len(gone)} whose process is gone, {states.count('alive')} "
               f"alive, {states.count('unknown')} unknown (not checkable here)")
    if not gone:
        return [*lines, summary]
    if not mark:
        return [*lines, f"{summary}; --mark ends the {len(gone)} whose process is gone as KILLED"]
    marked = [run for run in gone if end(client, run)]
    return [*lines, f"{summary}; marked {len(marked)} run{plural(marked)} KILLED (error: {ORPHANED})"]


def end(client: Any, run: Any) -> bool:
    """End an orphaned run KILLED, saying why in its `error` tag; False if it ended meanwhile.

    Its process is gone, so it cannot end the run any more; reading the status again after the
    check sees an end it wrote just before it exited.
    """
    if client.get_run(run.info.run_id).info.status != "RUNNING":
        return False
    client.set_tag(run.info.run_id, "error", ORPHANED)
    client.set_terminated(run.info.run_id, "KILLED")
    return True


def plural(items: list) -> str:
    return "" if len(items) == 1 else "s"


if __name__ == "__main__":
    main()
