"""Reaching a Ray cluster before any work: a TCP probe of ``--ray-address`` and Ray's own
waits cut short (``falsify run --executor ray --ray-address``). Free of torch and of ray."""
from __future__ import annotations

import socket

#: seconds to wait for the TCP connection to ``--ray-address`` before calling it unreachable
CONNECT_TIMEOUT_S = 5.0


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT``, ``[IPv6]:PORT`` or ``ray://HOST:PORT``; None for
    ``auto`` and other forms that Ray resolves itself."""
    host, sep, port = address.strip().split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A ``ConnectionError`` (one line) when nothing accepts a TCP connection at ``address``
    within ``timeout`` seconds: Ray itself would retry for minutes, printing warnings."""
    where = _host_port(address)
    if where is None:
        return
    fix = "check the address and that the cluster is up (ray status on its head node)"
    try:
        socket.create_connection(where, timeout=timeout).close()
    except TimeoutError:
        raise ConnectionError(f"cannot reach Ray at {address} (--ray-address): no answer within {timeout:g} s; "
                              f"{fix}") from None
    except OSError as exc:
        raise ConnectionError(f"cannot reach Ray at {address} (--ray-address): {exc.strerror or exc}; "
                              f"{fix}") from None


#: Ray's waits for a cluster that does not answer (by default 20 tries of about 41 s, each
#: printing warnings), set before ray is imported when ``--ray-address`` is given and not
#: already set in the environment: the GCS connection (s), the cluster id (s), and one try. A
#: port that accepts connections and is not a Ray cluster is then refused in about 9 s (one
#: where nothing answers is refused earlier, by :func:`check_reachable`).
RAY_JOIN_ENV = {"RAY_gcs_rpc_server_connect_timeout_s": "2", "RAY_py_gcs_connect_timeout_s": "4",
                "RAY_NUM_REDIS_GET_RETRIES": "1"}
