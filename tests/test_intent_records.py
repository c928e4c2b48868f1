"""Intent records across releases: the records the previous release wrote (kept as data in
tests/data/intent_records_v1, written by it: two from crashes of real commands, the others
from its record classes) are read and settled by this one; a record of a newer format is
refused by name, and left where it is. The settles run qemu-img on real images (no QEMU
process: both crashed commands worked on a stopped guest)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import qsnap
from qsnap.engine.block_jobs import CommitWork, PullWork
from qsnap.engine.create import CreateWork
from qsnap.engine.delete import DeleteWork
from qsnap.engine.kinds import OperationKind
from qsnap.engine.restore import RestoreWork
from qsnap.engine.revert import RevertWork
from qsnap.engine.save import SaveWork
from qsnap.plan.external_delete import Merge
from qsnap.store.intent import RECORD_VERSION, IntentRecord, lasts

DATA = Path(__file__).parent / "data" / "intent_records_v1"

CLASSES: dict[OperationKind, type[IntentRecord]] = {
    OperationKind.CREATE: CreateWork, OperationKind.REVERT: RevertWork,
    OperationKind.SAVE: SaveWork, OperationKind.RESTORE: RestoreWork,
    OperationKind.DELETE: DeleteWork, OperationKind.BLOCKCOMMIT: CommitWork,
    OperationKind.BLOCKPULL: PullWork}


def _version_1_records() -> list[Path]:
    return sorted([*DATA.glob("records/*.json"), *DATA.glob("*/intent.json")])


def test_every_kind_has_a_record_of_the_previous_release() -> None:
    kinds = {json.loads(p.read_text())["kind"] for p in _version_1_records()}
    assert kinds == set(OperationKind)


@pytest.mark.parametrize("path", _version_1_records(), ids=lambda p: p.parent.name + "/" + p.name)
def test_a_record_of_the_previous_release_reads_field_for_field(path: Path) -> None:
    record = json.loads(path.read_text())
    assert "version" not in record
    work = CLASSES[OperationKind(record["kind"])].from_record(record)
    again = json.loads(json.dumps(work.record()))
    assert again.pop("version") == RECORD_VERSION
    assert again.pop("lasting") == lasts(record)
    assert ("blockjob {domain}" in again.pop("refusal", "")) == lasts(record)
    assert again == record


def test_nested_fields_come_back_typed() -> None:
    work = DeleteWork.from_record(json.loads((DATA / "delete" / "intent.json").read_text()))
    assert all(isinstance(m, Merge) for m in work.merges)
    assert work.merges[0].rebase == ("@IMAGES@/g-vda.s4",)
    assert work.merged == [True, False]


def test_a_damaged_record_names_the_field() -> None:
    record = json.loads((DATA / "records" / "save.json").read_text())
    with pytest.raises(ValueError, match=r"save.was_running: expected bool, found 'yes'"):
        SaveWork.from_record({**record, "was_running": "yes"})
    with pytest.raises(ValueError, match=r"save: unknown field\(s\) colour"):
        SaveWork.from_record({**record, "colour": "red"})


def _qemu_img(*argv: str) -> None:
    subprocess.run(["qemu-img", *argv], check=True, capture_output=True)


def _chain(images: Path, disk: str, names: list[str]) -> None:
    """g-DISK.qcow2 with overlays g-DISK.NAME on it, each on the one before."""
    below = images / f"g-{disk}.qcow2"
    _qemu_img("create", "-f", "qcow2", str(below), "16M")
    for name in names:
        overlay = images / f"g-{disk}.{name}"
        _qemu_img("create", "-f", "qcow2", "-b", str(below), "-F", "qcow2", str(overlay))
        below = overlay


def _crashed_state(tmp_path: Path, case: str, overlays: list[str]) -> qsnap.Engine:
    """The domain folder and images as the previous release's crash left them."""
    images = tmp_path / "g"
    images.mkdir()
    for disk in ("vda", "vdb"):
        _chain(images, disk, overlays)
    folder = tmp_path / "state" / "domains" / "g"
    for source in (DATA / case).rglob("*"):
        if source.is_file():
            target = folder / source.relative_to(DATA / case)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source.read_text().replace("@IMAGES@", str(images)))
    return qsnap.Engine(tmp_path / "state")


def _backing(image: Path) -> str | None:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(image)], check=True,
                         capture_output=True, text=True).stdout
    backing: str | None = json.loads(out).get("backing-filename")
    return backing


async def test_a_create_the_previous_release_left_half_done_is_stored(tmp_path: Path) -> None:
    """Killed once the overlays of 's4' were made, before its metadata was stored."""
    engine = _crashed_state(tmp_path, "create", ["s1", "s2", "s3", "s4"])
    lines = await engine.recover("g")
    assert any("snapshot 's4'" in line and "was stored" in line for line in lines), lines
    assert [s.name for s in await engine.snapshots("g")] == ["s1", "s2", "s3", "s4"]
    assert await engine.current("g") == "s4"
    assert [d.source for d in await engine.disks("g")] == [
        str(tmp_path / "g" / f"g-{disk}.s4") for disk in ("vda", "vdb")]
    assert not (tmp_path / "state" / "domains" / "g" / "intent.json").exists()


async def test_a_delete_the_previous_release_left_half_done_is_finished(
        tmp_path: Path) -> None:
    """Killed deleting 's3' after vda's merge was marked done, before vdb's: vdb is
    merged now, both children rebased, the merged-away files and the metadata gone."""
    engine = _crashed_state(tmp_path, "delete", ["s1", "s3", "s4", "s5"])
    images = tmp_path / "g"
    lines = await engine.recover("g")
    assert any("delete" in line for line in lines), lines
    assert [s.name for s in await engine.snapshots("g")] == ["s1", "s4", "s5"]
    for disk in ("vda", "vdb"):
        assert not (images / f"g-{disk}.s3").exists()
        assert _backing(images / f"g-{disk}.s4") == str(images / f"g-{disk}.s1")
    assert not (tmp_path / "state" / "domains" / "g" / "intent.json").exists()


async def test_a_record_of_a_newer_format_is_refused_by_name_and_kept(tmp_path: Path) -> None:
    engine = _crashed_state(tmp_path, "create", ["s1", "s2", "s3", "s4"])
    record_path = tmp_path / "state" / "domains" / "g" / "intent.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "version": RECORD_VERSION + 1}))
    before = record_path.read_bytes()
    with pytest.raises(qsnap.NotSupportedError,
                       match=rf"has format version {RECORD_VERSION + 1}, written by a newer "
                             rf"qsnap; this one reads versions 1 to {RECORD_VERSION}"):
        await engine.recover("g")
    assert record_path.read_bytes() == before
    stored = sorted(p.stem for p in (record_path.parent / "snapshots").glob("*.xml"))
    assert stored == ["s1", "s2", "s3"]  # nothing settled
