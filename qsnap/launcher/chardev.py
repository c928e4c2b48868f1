"""The host ends of the guest's serial ports, parallel ports and consoles: QEMU's ``-chardev``
for libvirt's ``<serial>``/``<parallel>``/``<console>`` types (pty, file, null, a host device,
a unix or TCP socket, UDP). What has no rule here is refused by name."""

from __future__ import annotations

from lxml import etree

from qsnap.launcher.refusal import refuse
from qsnap.model.options import escape_commas


def _source(node: etree._Element, mode: str) -> etree._Element | None:
    """The ``<source>`` of that mode (UDP has one to send to and one to bind)."""
    for source in node.findall("source"):
        if source.get("mode", "connect") == mode:
            return source
    return None


def _reconnect(source: etree._Element | None) -> str:
    """A client socket's ``<reconnect enabled= timeout=>``: seconds between attempts to
    connect again once the other end went away (0: never)."""
    reconnect = source.find("reconnect") if source is not None else None
    if reconnect is None:
        return ""
    if reconnect.get("enabled") == "yes":
        return f",reconnect={int(reconnect.get('timeout', '0'))}"
    return ",reconnect=0"


def chardev(node: etree._Element, chardev_id: str, host_device: str = "serial",
            also: frozenset[str] = frozenset()) -> str:
    """``-chardev``'s value for the character device *node* (``<serial>``, ``<parallel>``,
    ``<console>``); *host_device* is QEMU's backend for ``type='dev'`` (``serial`` or
    ``parallel``); *also* names children the caller reads itself (a ``<boot>``)."""
    kind = node.get("type", "pty")
    what = f"<{node.tag} type='{kind}'>"
    source = node.find("source")
    path = escape_commas(source.get("path", "")) if source is not None else ""
    for child in node:
        if isinstance(child.tag, str) and child.tag not in {"source", "target", "address",
                                                            "alias", "protocol", *also}:
            raise refuse(f"{what}: <{child.tag}>", "not supported by qsnap's launcher")
    if kind in ("pty", "null"):
        return f"{kind},id={chardev_id}"
    if kind in ("file", "dev", "unix") and not path:
        raise refuse(what, "it needs <source path=...>")
    if kind == "file":
        return f"file,id={chardev_id},path={path},append=on"
    if kind == "dev":
        return f"{host_device},id={chardev_id},path={path}"
    if kind == "unix":
        server = ",server=on,wait=off" if source is not None and \
            source.get("mode") == "bind" else _reconnect(source)
        return f"socket,id={chardev_id},path={path}{server}"
    if kind == "tcp":
        if source is None:
            raise refuse(what, "it needs <source host= service=>")
        options = f"socket,id={chardev_id},host={source.get('host', '')}," \
                  f"port={source.get('service', '')}"
        protocol = node.find("protocol")
        if protocol is not None and protocol.get("type", "raw") == "telnet":
            options += ",telnet=on"
        elif protocol is not None and protocol.get("type", "raw") != "raw":
            raise refuse(f"{what} <protocol type='{protocol.get('type')}'>", "use raw or "
                         "telnet")
        if source.get("mode") == "bind":
            options += ",server=on,wait=off"
        else:
            options += _reconnect(source)
        return options
    if kind == "udp":
        target, local = _source(node, "connect"), _source(node, "bind")
        if target is None:
            raise refuse(what, "it needs <source mode='connect' service=>")
        options = f"udp,id={chardev_id},host={target.get('host', '')}," \
                  f"port={target.get('service', '')}"
        if local is not None:
            options += f",localaddr={local.get('host', '')},localport={local.get('service', '')}"
        return options
    raise refuse(what, "use type pty, file, null, dev, unix, tcp or udp")
