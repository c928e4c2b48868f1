"""The command table: every command's options, as virsh names them, and its handler."""

from __future__ import annotations

from qsnap.cli import block, domain, job, snapshot
from qsnap.cli.args import (
    CommandSpec,
    Kind,
    Opt,
    flag,
    value,
)

# -- the command table ---------------------------------------------------------------------------

_DOMAIN = value("domain", "domain name", required=True)
_SNAPSHOT = value("snapshotname", "snapshot name")
_SECURITY = flag("security-info", "include security sensitive information in XML dump")
_IMAGE_FORMAT = value("image-format", "format of the save image: raw, sparse or zstd (by "
                      "default raw)", positional=False)
_CHANNELS = value("parallel-channels", "multifd channels of a sparse save image",
                  positional=False, metavar="number")
_RUN_STATE = (flag("running", "run the guest after restore"),
              flag("paused", "leave the guest paused after restore"))


_DISK_PATH = value("path", "fully-qualified path of disk", required=True)
_BANDWIDTH = value("bandwidth", "bandwidth limit in MiB/s", metavar="number")
_BYTES = flag("bytes", "the bandwidth limit is in bytes/s rather than MiB/s")
_VERBOSE = flag("verbose", "with --wait, display the progress")


def _current(what: str) -> Opt:
    return flag("current", f"{what} the current snapshot")


_CREATE_FLAGS = (
    flag("no-metadata", "take snapshot but create no metadata"),
    flag("halt", "halt domain after snapshot is created"),
    flag("disk-only", "capture disk state but not vm state"),
    flag("reuse-external", "reuse any existing external files"),
    flag("quiesce", "quiesce guest's file systems"),
    flag("atomic", "require atomic operation"),
    flag("live", "take a live snapshot"),
    flag("crash-consistent", "take a disk snapshot of a guest whose QEMU crashed (its disks "
         "hold what it had half-written)"),
)
_CREATE_EXTRAS = (
    value("live-strategy", "how to capture memory: background, precopy or paused (default: "
          "background where QEMU offers it with --live, else precopy; paused without --live)",
          positional=False),
    flag("validate", "validate the XML strictly against qsnap's schema rules"),
)

COMMANDS: dict[str, CommandSpec] = {spec.name: spec for spec in (
    CommandSpec("define", "define a domain from an XML file", (
        value("file", "file containing an XML domain description", required=True),),
        domain.cmd_define),
    CommandSpec("undefine", "undefine a domain", (
        _DOMAIN, flag("snapshots-metadata", "remove all snapshot metadata too")),
        domain.cmd_undefine),
    CommandSpec("dumpxml", "domain information in XML", (_DOMAIN, _SECURITY), domain.cmd_dumpxml),
    CommandSpec("start", "start a (previously defined) inactive domain",
                (_DOMAIN, flag("reset-nvram", "re-initialize NVRAM from its pristine template")),
                domain.cmd_start),
    CommandSpec("destroy", "stop a domain at once (its QEMU is ended)", (_DOMAIN,),
                domain.cmd_destroy),
    CommandSpec("shutdown", "gracefully shutdown a domain (ACPI power button)", (_DOMAIN,),
                domain.cmd_shutdown),
    CommandSpec("domstate", "domain state", (
        _DOMAIN, flag("reason", "also print reason for the state")), domain.cmd_domstate),
    CommandSpec("attach", "adopt a QEMU launched by someone else, via its QMP socket", (
        _DOMAIN, value("qmp", "path of its QMP unix socket", required=True, positional=False,
                       metavar="socket")), domain.cmd_attach),
    CommandSpec("save", "save a domain's state to a file, and stop it", (
        _DOMAIN, value("file", "where to save the data", required=True),
        flag("bypass-cache", "accepted for virsh compatibility; saves bypass the cache"),
        value("xml", "file holding the domain XML to store in the image instead"),
        *_RUN_STATE, flag("verbose", "accepted for virsh compatibility"), _IMAGE_FORMAT,
        _CHANNELS), domain.cmd_save),
    CommandSpec("restore", "restore a domain from a saved state file", (
        value("file", "the state to restore", required=True),
        flag("bypass-cache", "accepted for virsh compatibility"),
        value("xml", "file holding the domain XML to use instead"), *_RUN_STATE, _CHANNELS),
        domain.cmd_restore),
    CommandSpec("managedsave", "save a domain's state so 'start' resumes it", (
        _DOMAIN, flag("bypass-cache", "accepted for virsh compatibility"), *_RUN_STATE,
        flag("verbose", "accepted for virsh compatibility"), _IMAGE_FORMAT, _CHANNELS),
        domain.cmd_managedsave),
    CommandSpec("managedsave-remove", "remove the managed save image of a domain", (
        _DOMAIN,), domain.cmd_managedsave_remove),
    CommandSpec("save-image-dumpxml", "the domain XML inside a saved state file", (
        value("file", "saved state file to read", required=True), _SECURITY),
        domain.cmd_save_image_dumpxml),
    CommandSpec("list", "list domains", (
        flag("all", "list inactive and active domains"),
        flag("inactive", "list inactive domains"), flag("name", "list domain names only"),
        flag("json", "machine-readable output")), domain.cmd_list),
    CommandSpec("snapshot-create", "create a snapshot from XML", (
        _DOMAIN, value("xmlfile", "domain snapshot XML"),
        flag("redefine", "redefine metadata for existing snapshot"),
        flag("current", "with redefine, set current snapshot"), *_CREATE_FLAGS,
        *_CREATE_EXTRAS, flag("print-xml", "print XML document rather than create")),
        snapshot.cmd_snapshot_create),
    CommandSpec("snapshot-create-as", "create a snapshot from a set of args", (
        _DOMAIN, value("name", "name of snapshot"),
        value("description", "description of snapshot"),
        flag("print-xml", "print XML document rather than create"), *_CREATE_FLAGS,
        value("memspec", "memory attributes: [file=]name[,snapshot=type]", positional=False,
              metavar="memspec"),
        Opt("diskspec", Kind.REST, "disk attributes: disk[,snapshot=type][,driver=type]"
            "[,stype=type][,file=name]", metavar="diskspec"),
        *_CREATE_EXTRAS), snapshot.cmd_snapshot_create_as),
    CommandSpec("snapshot-list", "list snapshots for a domain", (
        _DOMAIN,
        flag("parent", "add a column showing parent snapshot"),
        flag("roots", "list only snapshots without parents"),
        flag("leaves", "list only snapshots without children"),
        flag("no-leaves", "list only snapshots that are not leaves (with children)"),
        flag("metadata", "list only snapshots that have metadata that would prevent undefine"),
        flag("no-metadata", "list only snapshots that have no metadata managed by qsnap"),
        flag("inactive", "filter by snapshots taken while inactive"),
        flag("active", "filter by snapshots taken while active (full system snapshots)"),
        flag("disk-only", "filter by disk-only snapshots"),
        flag("internal", "filter by internal snapshots"),
        flag("external", "filter by external snapshots"),
        flag("tree", "list snapshots in a tree"),
        value("from", "limit list to children of given snapshot"),
        _current("limit list to children of"),
        flag("descendants", "with --from, list all descendants"),
        flag("name", "list snapshot names only"),
        flag("topological", "sort list topologically rather than by name"),
        flag("json", "machine-readable output")), snapshot.cmd_snapshot_list),
    CommandSpec("snapshot-info", "snapshot information", (
        _DOMAIN, _SNAPSHOT, _current("info on"), flag("json", "machine-readable output")),
        snapshot.cmd_snapshot_info),
    CommandSpec("snapshot-dumpxml", "dump XML for a domain snapshot", (
        _DOMAIN, value("snapshotname", "snapshot name", required=True), _SECURITY),
        snapshot.cmd_snapshot_dumpxml),
    CommandSpec("snapshot-current", "get or set the current snapshot", (
        _DOMAIN, flag("name", "list the name, rather than the full xml"), _SECURITY,
        value("snapshotname", "name of existing snapshot to make current")),
        snapshot.cmd_snapshot_current),
    CommandSpec("snapshot-parent", "get the name of the parent of a snapshot", (
        _DOMAIN, value("snapshotname", "find parent of snapshot name"),
        _current("find parent of")), snapshot.cmd_snapshot_parent),
    CommandSpec("snapshot-revert", "revert a domain to a snapshot", (
        _DOMAIN, _SNAPSHOT, _current("revert to"),
        flag("running", "after reverting, change state to running"),
        flag("paused", "after reverting, change state to paused"),
        flag("force", "try harder on risky reverts"),
        flag("reset-nvram", "re-initialize NVRAM from its pristine template")),
        snapshot.cmd_snapshot_revert),
    CommandSpec("snapshot-delete", "delete a domain snapshot", (
        _DOMAIN, _SNAPSHOT, _current("delete"),
        flag("children", "delete snapshot and all children"),
        flag("children-only", "delete children but not snapshot"),
        flag("metadata", "delete only qsnap metadata, leaving snapshot contents behind")),
        snapshot.cmd_snapshot_delete),
    CommandSpec("recover", "finish what a crash left half-done on a domain", (_DOMAIN,),
                domain.cmd_recover),
    CommandSpec("domblklist", "list all domain blocks", (
        _DOMAIN, flag("inactive", "get inactive rather than running configuration"),
        flag("details", "additionally display the type and device value")), domain.cmd_domblklist),
    CommandSpec("domblkinfo", "domain block device size information", (
        _DOMAIN, value("device", "block device"),
        flag("human", "Human readable output"),
        flag("all", "display all block devices info")), domain.cmd_domblkinfo),
    CommandSpec("dominfo", "domain information", (_DOMAIN,), domain.cmd_dominfo),
    CommandSpec("suspend", "suspend a domain", (_DOMAIN,), domain.cmd_suspend),
    CommandSpec("resume", "resume a domain", (_DOMAIN,), domain.cmd_resume),
    CommandSpec("reboot", "reboot a domain", (
        _DOMAIN, value("mode", "shutdown mode: agent (the default with a guest agent "
                       "channel), acpi (the default otherwise) or reset",
                       positional=False)), domain.cmd_reboot),
    CommandSpec("reset", "reset a domain", (_DOMAIN,), domain.cmd_reset),
    CommandSpec("blockcommit", "Start a block commit operation.", (
        _DOMAIN, _DISK_PATH, _BANDWIDTH,
        value("base", "path of base file to commit into (default bottom of chain)"),
        flag("shallow", "use backing file of top as base"),
        value("top", "path of top file to commit from (default top of chain)"),
        flag("active", "trigger two-stage active commit of top file"),
        flag("delete", "delete files that were successfully committed"),
        flag("wait", "wait for job to complete (with --active, wait for job to sync)"),
        _VERBOSE,
        value("timeout", "implies --wait, abort if copy exceeds timeout (in seconds)",
              metavar="number"),
        flag("pivot", "implies --active --wait, pivot when commit is synced"),
        flag("keep-overlay", "implies --active --wait, quit when commit is synced"),
        _BYTES), block.cmd_blockcommit),
    CommandSpec("blockpull", "Populate a disk from its backing image.", (
        _DOMAIN, _DISK_PATH, _BANDWIDTH,
        value("base", "path of backing file in chain for a partial pull"),
        flag("wait", "wait for job to finish"), _VERBOSE,
        value("timeout", "with --wait, abort if pull exceeds timeout (in seconds)",
              metavar="number"), _BYTES), block.cmd_blockpull),
    CommandSpec("blockjob", "Manage active block operations", (
        _DOMAIN, _DISK_PATH,
        flag("abort", "abort the active job on the specified disk"),
        flag("info", "get active job information for the specified disk"),
        flag("pivot", "conclude and pivot a copy or commit job")), block.cmd_blockjob),
    CommandSpec("domjobinfo", "domain job information", (
        _DOMAIN, flag("completed", "return statistics of a recently completed job")),
        job.cmd_domjobinfo),
    CommandSpec("domjobabort", "abort active domain job", (_DOMAIN,), job.cmd_domjobabort),
    CommandSpec("snapshot-edit", "edit XML for a snapshot", (
        _DOMAIN, _SNAPSHOT, _current("also set edited snapshot as"),
        flag("rename", "allow renaming an existing snapshot"),
        flag("clone", "allow cloning to new name")), snapshot.cmd_snapshot_edit),
)}


def usage() -> str:
    """``qsnap --help``: the global options and every command, virsh's way."""
    width = max(len(name) for name in COMMANDS)
    lines = ["qsnap [--state-dir DIR] [-q] [--progress-json] COMMAND [OPTIONS]...",
             "", "Snapshots of QEMU guests, the way virsh does them.", "",
             "  --state-dir DIR    where metadata lives (default: $QSNAP_STATE_DIR, else "
             "$XDG_STATE_HOME/qsnap)",
             "  -q, --quiet        quiet mode: no informational messages or headers",
             "  --progress-json    report the progress of long operations as one JSON "
             "object per line on stderr", "", " Commands (qsnap COMMAND --help for one):"]
    lines += [f"    {name:<{width}}  {spec.help}" for name, spec in COMMANDS.items()]
    return "\n".join(lines) + "\n"


