"""corosync-qdevice: the qdevice daemon, model net (spec/qnetd-wire.md §12).

Command line as the stock 3.0.3 daemon: ``-f`` foreground, ``-d`` debug (``-dd`` too),
``-h`` usage (exit 1), ``-S option=value[,...]`` advanced settings.  Start-up order: lock
file, votequorum (node id, qdevice register as ``Qdevice``, master_wins), configuration
from cmap, local socket, then the model loop; SIGTERM/SIGINT stop it cleanly (exit 0) and
unregister the device.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any, Optional

import attrs
import trio

from corosync.exec.qnetd.cli_common import Getopt, GetoptError, invocation_name

PROG = "corosync-qdevice"
USAGE = f"usage: {PROG} [-dfh] [-S option=value[,option2=value2,...]]\n"

#: advanced settings of the stock daemon; the ones we act on have defaults here, the others
#: are accepted (so stock command lines keep working) and ignored
KNOWN_SETTINGS = (
    "lock_file local_socket_file local_socket_umask local_socket_gid local_socket_backlog "
    "max_cs_try_again votequorum_device_name ipc_max_clients ipc_max_receive_size "
    "ipc_max_send_size heuristics_ipc_max_send_buffers heuristics_ipc_max_send_receive_size "
    "heuristics_min_timeout heuristics_max_timeout heuristics_min_interval "
    "heuristics_max_interval heuristics_max_execs heuristics_use_execvp "
    "heuristics_max_processes heuristics_kill_list_interval net_nss_db_dir "
    "net_initial_msg_receive_size net_initial_msg_send_size net_min_msg_send_size "
    "net_max_msg_receive_size net_max_send_buffers net_nss_qnetd_cn "
    "net_nss_client_cert_nickname net_heartbeat_interval_min net_heartbeat_interval_max "
    "net_min_connect_timeout net_max_connect_timeout net_test_algorithm_enabled master_wins"
).split()


@attrs.define
class Options:
    foreground: bool = False
    debug: int = 0
    settings: dict[str, str] = attrs.field(factory=lambda: {
        "lock_file": "/var/run/corosync-qdevice/corosync-qdevice.pid",
        "local_socket_file": "/var/run/corosync-qdevice/corosync-qdevice.sock",
        "votequorum_device_name": "Qdevice",
        "net_nss_db_dir": "/etc/corosync/qdevice/net/nssdb",
        "net_nss_qnetd_cn": "Qnetd Server",
        "master_wins": "model",
        "net_test_algorithm_enabled": "off",
    })


class UsageError(Exception):
    pass


def parse_settings(text: str, settings: dict[str, str]) -> None:
    for item in text.split(","):
        if not item:
            continue
        name, _, value = item.partition("=")
        name = name.strip().lower()
        if name not in KNOWN_SETTINGS:
            raise UsageError(f"Unknown option '{name}'")
        if name == "master_wins" and value.lower() not in ("model", "on", "off", "yes", "no",
                                                            "1", "0"):
            raise UsageError(f"Invalid value '{value}' for option '{name}'")
        settings[name] = value


def parse_args(argv: list[str], argv0: str = PROG) -> Options:
    """getopt "dfhS:"; getopt's own errors name ``argv0`` (glibc prints argv[0]).  Raises
    :class:`UsageError` (empty text: print the usage)."""
    opts = Options()
    try:
        for ch, value in Getopt(argv, "dfhS:"):
            if ch == "f":
                opts.foreground = True
            elif ch == "d":
                opts.debug += 1
            elif ch == "S":
                assert value is not None
                parse_settings(value, opts.settings)
            else:  # h
                raise UsageError("")
    except GetoptError as exc:
        sys.stderr.write(exc.glibc(argv0))
        raise UsageError("") from None
    return opts


class _Formatter(logging.Formatter):
    """``Nov 22 03:56:30 debug   text``: the stock daemon's stderr layout."""

    NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
             logging.ERROR: "error", logging.CRITICAL: "crit"}

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(record.created))
        return f"{stamp} {self.NAMES.get(record.levelno, 'info'):<8}{record.getMessage()}"


def setup_logging(opts: Options) -> logging.Logger:
    log = logging.getLogger("corosync-qdevice")
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.DEBUG if opts.debug else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.addHandler(handler)
    if not opts.foreground and os.path.exists("/dev/log"):
        # detached: stderr goes to /dev/null, so log to syslog (ident corosync-qdevice)
        from logging.handlers import SysLogHandler

        sys_handler = SysLogHandler(address="/dev/log", facility=SysLogHandler.LOG_DAEMON)
        sys_handler.setFormatter(logging.Formatter("corosync-qdevice: %(message)s"))
        sys_handler.setLevel(logging.DEBUG if opts.debug >= 2 else logging.INFO)
        log.addHandler(sys_handler)
    return log


def read_cmap_keys() -> dict[str, Any]:
    from corosync.cmap import Cmap

    with Cmap.initialize() as cmap:
        return {k: v.value for k, v in cmap.items("")}


async def _serve(opts: Options, log: logging.Logger) -> int:
    from corosync.exec.qdevice import core as C
    from corosync.exec.qdevice.config import QdeviceConfigError, config_from_keys
    from corosync.exec.qdevice.daemon import QdeviceDriver
    from corosync.exec.qdevice.tlsfiles import client_context
    from corosync.exec.qdevice.vq import Votequorum, VqError
    from corosync.exec.qnetd.protocol import Algorithm

    s = opts.settings
    name = s["votequorum_device_name"]
    log.debug("Initializing votequorum")
    try:
        vq = await Votequorum.connect()
    except OSError as exc:
        log.critical("Can't initialize votequorum: %s", exc)
        return 1
    try:
        try:
            node_id = await vq.this_node_id()
        except (VqError, OSError) as exc:
            log.critical("Can't get votequorum information. %s", exc)
            return 1
        log.debug("Configuring qdevice")
        try:
            keys = await trio.to_thread.run_sync(read_cmap_keys)
            cfg = config_from_keys(keys, node_id)
        except QdeviceConfigError as exc:
            log.error("Configuration error: %s", exc)
            return 1
        except Exception as exc:
            log.error("Can't read configuration from cmap: %s", exc)
            return 1
        if cfg.algorithm == Algorithm.TEST and s["net_test_algorithm_enabled"].lower() not in (
                "on", "yes", "1"):
            log.error("Test algorithm is not enabled. You can force enable it by "
                      "passing -S net_test_algorithm_enabled=on to corosync-qdevice command")
            return 1
        try:
            await vq.register(name)
        except (VqError, OSError) as exc:
            log.critical("Can't register votequorum device. %s", exc)
            return 1
        try:
            # like the stock daemon: the expected votes shown by `-s -v` start from GETINFO
            # (votequorum sends EXPECTEDVOTES notifications only when they change)
            expected_votes = (await vq.info()).expected_votes
        except (VqError, OSError) as exc:
            log.critical("Can't get votequorum information. %s", exc)
            await vq.unregister(name)
            return 1
        mw = s["master_wins"].lower()
        allow = mw in ("on", "yes", "1")
        log.debug("Configuring master_wins")
        try:
            await vq.master_wins(allow, name)
        except (VqError, OSError) as exc:
            log.critical("Can't set master wins. %s", exc)
            await vq.unregister(name)
            return 1

        class _NamedVq:
            async def poll(self, cast: bool, ring: Any) -> None:
                await vq.poll(cast, ring, name)

            async def next_event(self) -> Any:
                return await vq.next_event()

        tls = None
        if cfg.tls:
            db = s["net_nss_db_dir"]
            if not os.path.isdir(db):
                # the stock daemon cannot open its NSS database and exits at start-up
                log.error("Can't open certificate directory %s (quorum.device.net.tls is %s); "
                          "use corosync-qdevice-net-certutil -i", db,
                          "required" if cfg.tls == 2 else "on")
                return 1
            tls = lambda: client_context(db)  # noqa: E731
        core = C.QdeviceNet(cfg)
        core.expected_votes = expected_votes
        driver = QdeviceDriver(core, _NamedVq(), tls_context=tls, qnetd_cn=s["net_nss_qnetd_cn"],
                               socket_path=s["local_socket_file"])
        try:
            await vq.trackstart()
        except (VqError, OSError) as exc:
            log.critical("Can't start votequorum tracking. %s", exc)
            await vq.unregister(name)
            return 1

        async def signals(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                task_status.started()
                async for sig in sigs:
                    log.debug("%s received - closing local unix socket",
                              "SIGTERM" if sig == signal.SIGTERM else "SIGINT")
                    driver.stop(0)
                    return

        async def config_tracking() -> None:
            from corosync.cmap import AsyncCmap

            from corosync.exec.qdevice.cmaptrack import track_nodelist

            try:
                cmap = await AsyncCmap.initialize()
            except Exception as exc:
                log.warning("Can't initialize cmap tracking (%s): node list changes are ignored",
                            exc)
                return
            try:
                await track_nodelist(
                    cmap, (cfg.config_nodes, cfg.config_version),
                    lambda nodes, version: driver.event(
                        lambda now: core.config_changed(nodes, version, now)))
            except Exception as exc:
                log.warning("cmap tracking ended: %s", exc)
            finally:
                cmap.finalize()

        async with trio.open_nursery() as nursery:
            await nursery.start(signals)
            log.debug("Initializing cmap tracking")
            nursery.start_soon(config_tracking)
            log.debug("Running QDevice main loop")
            code = await driver.run()
            nursery.cancel_scope.cancel()
        try:
            with trio.move_on_after(2):
                await vq.unregister(name)
        except Exception as exc:  # corosync may already be gone
            log.warning("Unable to unregister votequorum device: %s", exc)
        return code
    finally:
        vq.close()


def main(argv: Optional[list[str]] = None) -> int:
    """``argv`` without the program name; None = the command line (getopt errors then name
    ``sys.argv[0]``, like glibc)."""
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv,
                          invocation_name(PROG, argv is None))
    except UsageError as exc:
        if str(exc):
            sys.stderr.write(f"{PROG}: {exc}\n")
        else:
            sys.stdout.write(USAGE)
        return 1
    log = setup_logging(opts)
    from corosync.exec.qnetd.daemon import StartupError, acquire_lock, daemonize

    if not opts.foreground:
        daemonize()
    try:
        lock_fd = acquire_lock(opts.settings["lock_file"])
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    try:
        return trio.run(_serve, opts, log)
    finally:
        os.close(lock_fd)
        try:
            os.unlink(opts.settings["lock_file"])
        except OSError:
            pass


if __name__ == "__main__":
    # python -m: argv[0] is this file's path, so the command's own name stands in for it
    sys.exit(main(sys.argv[1:]))
