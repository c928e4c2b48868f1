"""The typed job owner (qsnap.monitor.jobs) without QEMU: reading QEMU's job entries, the
id scheme recoveries rely on, the order of the commit sequence against a scripted monitor,
and that no code above the monitor reads a raw job entry. The sequence against a real QEMU
is exercised by the delete, blockcommit and crash tests."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from qsnap.errors import JobFailedError
from qsnap.monitor.jobs import UNDER_WAY, Job, JobPurpose, Jobs, JobStatus, job_id

PACKAGE = Path(__file__).resolve().parent.parent / "qsnap"


def test_a_query_jobs_entry_and_a_query_block_jobs_entry_read_alike() -> None:
    job = Job.from_qmp({"id": "qsnap-commit-vda", "type": "commit", "status": "pending",
                        "current-progress": 5, "total-progress": 9})
    assert job == Job("qsnap-commit-vda", "commit", JobStatus.PENDING, 5, 9, None)
    block = Job.from_qmp({"device": "qsnap-blockpull-vdb", "type": "stream", "len": 8,
                          "offset": 2, "busy": True, "paused": False, "speed": 0,
                          "ready": False, "status": "running", "io-status": "ok"})
    assert block == Job("qsnap-blockpull-vdb", "stream", JobStatus.RUNNING, 2, 8, None)
    failed = Job.from_qmp({"id": "x", "type": "commit", "status": "concluded",
                           "current-progress": 0, "total-progress": 0, "error": "No space"})
    assert failed.concluded and failed.error == "No space" and not failed.under_way


def test_an_unknown_status_is_refused_not_read_as_another() -> None:
    with pytest.raises(ValueError, match="'finishing'"):
        Job.from_qmp({"id": "x", "type": "commit", "status": "finishing"})


def test_the_live_statuses_are_those_that_still_copy_or_wait_for_a_decision() -> None:
    assert {s.value for s in UNDER_WAY} == {"created", "running", "paused", "ready",
                                            "standby", "waiting"}
    assert set(JobStatus) - UNDER_WAY == {JobStatus.UNDEFINED, JobStatus.PENDING,
                                          JobStatus.ABORTING, JobStatus.CONCLUDED,
                                          JobStatus.NULL}


def test_job_ids_keep_the_spellings_earlier_releases_recorded() -> None:
    """An intent record of an earlier release names its job by these ids (a delete's
    'qsnap-commit-vda', a blockcommit's 'qsnap-blockcommit-vda')."""
    assert [job_id(p, "vda") for p in JobPurpose] == [
        "qsnap-blockcommit-vda", "qsnap-blockpull-vda", "qsnap-commit-vda", "qsnap-undo-vda"]
    job = Job.from_qmp({"id": "qsnap-commit-vda", "type": "commit", "status": "ready"})
    assert job.ours and job.is_for(JobPurpose.DELETE)
    assert not job.is_for(JobPurpose.BLOCKCOMMIT)


class ScriptedMonitor:
    """Answers query-jobs from a list of statuses for one job and records every command:
    enough to check the order in which CommitJob sends them (not QEMU's behaviour)."""

    def __init__(self, statuses: list[str], error: str | None = None) -> None:
        self.statuses = statuses
        self.error = error
        self.sent: list[str] = []

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None
                      ) -> Any:
        if command == "query-jobs":
            status = self.statuses[0] if len(self.statuses) == 1 else self.statuses.pop(0)
            entry = {"id": "qsnap-commit-vda", "type": "commit", "status": status,
                     "current-progress": 1, "total-progress": 1}
            if status == "concluded" and self.error:
                entry["error"] = self.error
            return [entry]
        self.sent.append(command)
        return {}

    @contextlib.asynccontextmanager
    async def events(self, *names: str) -> AsyncIterator[Any]:
        class Quiet:
            async def get(self) -> None:
                await __import__("asyncio").sleep(3600)
        yield Quiet()


async def test_the_caller_marks_its_record_at_pending_before_the_finalize() -> None:
    monitor = ScriptedMonitor(["pending", "pending", "concluded"])
    commit = Jobs(monitor).commit(JobPurpose.DELETE, "vda")  # type: ignore[arg-type]

    async def on_pending() -> None:
        monitor.sent.append("(record marked)")

    await commit.finish(on_pending)
    assert monitor.sent == ["(record marked)", "job-finalize", "job-dismiss"]


async def test_a_job_that_ended_before_pending_is_dismissed_and_fails_unmarked() -> None:
    monitor = ScriptedMonitor(["concluded"], error="Input/output error")
    commit = Jobs(monitor).commit(JobPurpose.DELETE, "vda")  # type: ignore[arg-type]
    marked = []

    async def on_pending() -> None:
        marked.append(True)

    with pytest.raises(JobFailedError) as failure:
        await commit.finish(on_pending)
    assert (failure.value.reason, failure.value.job_id) == ("Input/output error",
                                                            "qsnap-commit-vda")
    assert monitor.sent == ["job-dismiss"] and not marked


async def test_a_recovery_takes_over_a_job_already_past_its_finalize() -> None:
    """on_pending None: the record was marked before a kill; a concluded job is dismissed."""
    monitor = ScriptedMonitor(["concluded"])
    await Jobs(monitor).commit(JobPurpose.DELETE, "vda").finish(None)  # type: ignore[arg-type]
    assert monitor.sent == ["job-dismiss"]


def test_no_code_above_the_monitor_sends_qmp_or_reads_a_raw_job_entry() -> None:
    """QMP commands are sent, and QEMU's job keys read, in qsnap/monitor only (issue 30):
    the engine sees typed results (Job, BlockDevice, QemuFacts)."""
    raw = re.compile(r"[\"'](query-(block-)?jobs|(current|total)-progress|"
                     r"job-(dismiss|finalize|complete|cancel))[\"']|\[[\"']status[\"']\]|"
                     r"\.execute\(")
    offenders = [f"{path.relative_to(PACKAGE)}:{n}" for path in PACKAGE.rglob("*.py")
                 if path.parent.name != "monitor"
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if raw.search(line)]
    assert offenders == []
