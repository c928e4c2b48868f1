"""Deleting the data of internal snapshots: QEMU's ``snapshot-delete`` job on a running guest,
``qemu-img snapshot -d`` on a stopped one. Every tag is checked to be present first, so a
deletion does not stop half-way over a missing one."""

from __future__ import annotations

from qsnap import images
from qsnap.errors import OperationInvalidError
from qsnap.launcher.process import RuntimeInfo
from qsnap.monitor import Monitor
from qsnap.plan.delete import InternalRemoval


def _has_tag(image_info: dict, tag: str) -> bool:
    """Whether qemu-img's ``info`` of an image lists internal snapshot *tag*."""
    return any(s.get("name") == tag for s in image_info.get("snapshots", []))


async def delete_internal(removals: list[InternalRemoval], running: RuntimeInfo | None) -> None:
    if running is None:
        for removal in removals:
            for _, image in removal.disks:
                if not _has_tag(await images.info(image), removal.name):
                    raise OperationInvalidError(f"image '{image}' holds no internal snapshot "
                                                f"'{removal.name}'")
        for removal in removals:
            for _, image in removal.disks:
                await images.snapshot_delete(image, removal.name)
        return
    async with await Monitor.connect(running.qmp) as monitor:
        tops = await monitor.block_tops()
        held = await monitor.internal_snapshot_tags(list(tops.values()))
        for removal in removals:
            for target, image in removal.disks:
                if removal.name not in held[tops[target]]:
                    raise OperationInvalidError(f"image '{image}' holds no internal snapshot "
                                                f"'{removal.name}'")
        for removal in removals:
            await monitor.delete_internal(removal.name, [tops[t] for t, _ in removal.disks])
