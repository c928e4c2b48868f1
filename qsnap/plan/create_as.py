"""``snapshot-create-as``: turning a name, a description, a memspec and diskspecs into XML.

Follows virsh: specs are comma-separated ``key=value`` lists where ``,,`` is a literal comma,
a memspec may start with a bare absolute path, a diskspec starts with the disk name, and the XML
text is built the same way virsh builds it, so ``--print-xml`` prints what virsh prints.
"""

from __future__ import annotations

from qsnap.errors import InvalidArgumentError
from qsnap.model.options import split_commas
from qsnap.model.xmltext import escape_attr, escape_text


def split_spec(spec: str) -> list[str]:
    """Split on single commas; ``,,`` stands for a literal comma (virsh's vshStringToArray)."""
    return split_commas(spec)


def _take(fields: dict[str, str], item: str, keys: tuple[str, ...]) -> bool:
    for key in keys:
        prefix = key + "="
        if item.startswith(prefix) and key not in fields:
            fields[key] = item[len(prefix):]
            return True
    return False


def memspec_xml(spec: str) -> str:
    """``[file=]name[,snapshot=type]`` as a ``<memory>`` line."""
    fields: dict[str, str] = {}
    for item in split_spec(spec):
        if _take(fields, item, ("snapshot", "file")):
            continue
        if "file" not in fields and item.startswith("/"):
            fields["file"] = item
            continue
        raise InvalidArgumentError(f"unable to parse memspec: {spec}")
    attrs = "".join(f" {k}='{escape_attr(fields[k])}'" for k in ("snapshot", "file")
                    if k in fields)
    return f"  <memory{attrs}/>\n"


def diskspec_xml(spec: str) -> str:
    """``disk[,snapshot=type][,driver=type][,stype=type][,file=name]`` as a ``<disk>``."""
    items = split_spec(spec)
    if not items or not items[0]:
        raise InvalidArgumentError(f"unable to parse diskspec: {spec}")
    fields: dict[str, str] = {}
    for item in items[1:]:
        if not _take(fields, item, ("snapshot", "driver", "stype", "file")):
            raise InvalidArgumentError(f"unable to parse diskspec: {spec}")
    stype = fields.get("stype")
    if stype is not None and stype not in ("file", "block"):
        raise InvalidArgumentError(f"Unknown storage type: '{stype}'")
    head = f"    <disk name='{escape_attr(items[0])}'"
    if "snapshot" in fields:
        head += f" snapshot='{escape_attr(fields['snapshot'])}'"
    if stype is not None:
        head += f" type='{stype}'"
    if "driver" not in fields and "file" not in fields:
        return head + "/>\n"
    body = ""
    if "driver" in fields:
        body += f"      <driver type='{escape_attr(fields['driver'])}'/>\n"
    if "file" in fields:
        key = "dev" if stype == "block" else "file"
        body += f"      <source {key}='{escape_attr(fields['file'])}'/>\n"
    return f"{head}>\n{body}    </disk>\n"


def snapshot_xml_from_args(name: str | None = None, description: str | None = None,
                           memspec: str | None = None, diskspecs: list[str] | None = None,
                           disk_only: bool = False) -> str:
    """The ``<domainsnapshot>`` that ``snapshot-create-as`` would submit."""
    if memspec is not None and disk_only:
        raise InvalidArgumentError("--memspec and --disk-only are mutually exclusive")
    out = ["<domainsnapshot>\n"]
    if name is not None:
        out.append(f"  <name>{escape_text(name)}</name>\n")
    if description is not None:
        out.append(f"  <description>{escape_text(description)}</description>\n")
    if memspec is not None:
        out.append(memspec_xml(memspec))
    if diskspecs:
        out.append("  <disks>\n")
        out.extend(diskspec_xml(spec) for spec in diskspecs)
        out.append("  </disks>\n")
    out.append("</domainsnapshot>\n")
    return "".join(out)
