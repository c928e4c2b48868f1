"""Pure planning: every libvirt rule and error message, tested without QEMU or files.

Each function takes the domain, the request, its flags and whatever facts it needs as arguments,
and returns a fully populated definition (and, for QEMU operations, the ordered steps). Nothing
here touches a file, a process or a socket.
"""
