"""exec/qnetd/cli_common.py: getopt / getopts scanning, the argv[0] in glibc's messages, and
the local-socket reply handling shared by corosync-qnetd-tool and corosync-qdevice-tool."""

from __future__ import annotations

import io
import socket
import sys
import threading

import pytest

from corosync.exec.qnetd.cli_common import (Getopt, GetoptError, IpcConnectError,
                                            ipc_exchange, print_ipc_reply)


def scan(argv, optstring, **kw):
    g = Getopt(argv, optstring, **kw)
    return list(g), g.operands


def test_glibc_getopt_semantics():
    assert scan(["-dd", "-p5403", "x", "-p", "1", "--", "-f"], "dfp:") == \
        ([("d", None), ("d", None), ("p", "5403"), ("p", "1")], ["x", "-f"])
    assert scan(["-", "-S", "a=1,b=2"], "S:") == ([("S", "a=1,b=2")], ["-"])
    with pytest.raises(GetoptError) as e:
        scan(["-p"], "p:")
    assert e.value.glibc("/usr/bin/x") == "/usr/bin/x: option requires an argument -- 'p'\n"
    with pytest.raises(GetoptError) as e:
        scan(["-dz"], "d")
    assert e.value.glibc("prog") == "prog: invalid option -- 'z'\n"
    assert e.value.getopts() == "Invalid option: -z\n"


def test_options_come_out_in_order_before_a_later_error():
    seen = []
    with pytest.raises(GetoptError):
        for ch, _ in Getopt(["-h", "-x"], "h"):
            seen.append(ch)
    assert seen == ["h"]  # a caller acting on -h exits before the error, as getopt does


def test_bash_getopts_stops_at_the_first_operand():
    assert scan(["-n", "lab", "qnetd", "n1", "-i"], "in:", stop_at_operand=True) == \
        ([("n", "lab")], ["qnetd", "n1", "-i"])
    with pytest.raises(GetoptError) as e:
        scan(["-c"], "c:", stop_at_operand=True)
    assert e.value.getopts() == "Option -c requires an argument.\n"


@pytest.mark.parametrize("module,prog", [
    ("qnetd_tool", "corosync-qnetd-tool"), ("qdevice_tool", "corosync-qdevice-tool"),
    ("qnetd", "corosync-qnetd"), ("qdevice", "corosync-qdevice")])
def test_getopt_errors_name_argv0_from_the_command_line(module, prog, monkeypatch, capsys):
    import importlib

    mod = importlib.import_module(f"corosync.tools.{module}")
    monkeypatch.setattr(sys, "argv", [f"/opt/bin/{prog}", "-Z"])
    assert mod.main() == 1
    out, err = capsys.readouterr()
    assert err == f"/opt/bin/{prog}: invalid option -- 'Z'\n"
    assert out.startswith(f"usage: {prog} ")  # the usage text keeps the fixed name (stock)
    assert mod.main(["-Z"]) == 1  # explicit argument list (python -m, tests): the name
    assert capsys.readouterr().err == f"{prog}: invalid option -- 'Z'\n"


def test_certutil_usage_names_argv0_like_the_scripts_dollar_0(monkeypatch, capsys):
    from corosync.tools import qdevice_net_certutil, qnetd_certutil

    for mod, name in ((qnetd_certutil, "corosync-qnetd-certutil"),
                      (qdevice_net_certutil, "corosync-qdevice-net-certutil")):
        monkeypatch.setattr(sys, "argv", [f"/usr/sbin/{name}", "-h"])
        assert mod.main() == 0
        assert capsys.readouterr().out.startswith(f"/usr/sbin/{name}: [-i|")
        assert mod.main(["-y"]) == 1
        assert capsys.readouterr().err == "Invalid option: -y\n"


def test_reply_handling():
    out, err = io.BytesIO(), io.BytesIO()
    assert print_ipc_reply(b"OK\nhello\n", "t", out, err) == 0 and out.getvalue() == b"hello\n"
    assert print_ipc_reply(b"Error\r\nbad\n", "t", out, err) == 4
    assert err.getvalue() == b"Error: bad\n"
    assert print_ipc_reply(b"partial", "t", out, err) == 0
    err = io.BytesIO()
    assert print_ipc_reply(b"Huh\n", "t", out, err) == 3
    assert err.getvalue() == b"t: Unknown status line returned by IPC server\n"


def test_ipc_exchange(tmp_path):
    path = str(tmp_path / "s.sock")
    with pytest.raises(IpcConnectError):
        ipc_exchange(path, b"status \n")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    got = []

    def serve() -> None:
        conn, _ = srv.accept()
        got.append(conn.recv(100))
        conn.sendall(b"OK\nfine\n")
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        assert ipc_exchange(path, b"status \n") == b"OK\nfine\n"
    finally:
        t.join(10)
        srv.close()
    assert got == [b"status \n"]
