"""Finding and adding a definition's controllers, as libvirt adds the ones it implies."""

from __future__ import annotations

from lxml import etree

#: Devices libvirt lists after the controllers: a controller added goes before them.
AFTER_CONTROLLERS = ("interface", "serial", "console", "channel", "input", "graphics", "audio",
                      "video", "memballoon", "rng")


def controllers(devices: etree._Element, kind: str) -> list[etree._Element]:
    return [c for c in devices.findall("controller") if c.get("type") == kind]


def ensure_controller(devices: etree._Element, kind: str, index: int = 0,
                       model: str | None = None) -> etree._Element:
    for controller in controllers(devices, kind):
        if int(controller.get("index", "0")) == index:
            controller.set("index", str(index))
            if model and controller.get("model") is None:
                controller.set("model", model)
            return controller
    attrs = {"type": kind, "index": str(index)}
    if model:
        attrs["model"] = model
    node = etree.Element("controller", attrs)
    # After the controllers already there: libvirt hands out PCI slots in that order.
    existing = devices.findall("controller")
    if existing:
        existing[-1].addnext(node)
    else:
        later = [d for d in devices if d.tag in AFTER_CONTROLLERS]
        if later:
            later[0].addprevious(node)
        else:
            devices.append(node)
    return node
