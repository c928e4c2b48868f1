"""Starting QEMU from a domain definition, and finding or stopping it later."""
