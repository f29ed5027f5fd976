"""The embedded S3 store's port choice: weed refuses ports that meet another's gRPC port."""

from __future__ import annotations

import socket

from components.s3local import GRPC_OFFSET, ports_clash, service_ports


def test_a_port_equal_to_another_ports_grpc_port_is_a_clash():
    # The CI failure: weed put the master on 34603, so its gRPC took 44603,
    # and refused 44603 for the filer.
    assert ports_clash([34603, 21000, 44603, 32000])
    assert ports_clash([30000, 30000])
    assert not ports_clash([34603, 21000, 44602, 32000])


def test_service_ports_are_free_and_never_clash():
    for _ in range(50):
        ports = service_ports(4)
        assert len(ports) == 4 and not ports_clash(ports)
        for port in (*ports, *(port + GRPC_OFFSET for port in ports)):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))
