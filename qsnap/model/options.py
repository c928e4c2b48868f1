"""Comma-separated option lists as QEMU and virsh write them: ``a=1,b=2``, where ``,,`` is a
literal comma (virsh's vshStringToArray, QEMU's QemuOpts)."""

from __future__ import annotations


def split_commas(text: str) -> list[str]:
    """Split on single commas; ``,,`` stands for a literal comma."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    return parts


def escape_commas(value: str) -> str:
    """*value* as one value of a QEMU option list (``-chardev``, ``-qmp``, ``-vnc``,
    ``-name``): every comma doubled, as libvirt writes them. A comma left single would end
    the value there and start a new option: a serial log path
    ``x,logfile=/root/file,logappend=off`` made QEMU truncate that file (issue 28)."""
    return value.replace(",", ",,")
