"""Ids made per process (request and decision ids: a random prefix and a counter) stay unique in the
workers ``serve --workers`` forks from one supervisor, which imported these modules before forking."""

from __future__ import annotations

import os

from costproxy.pipeline.services import new_request_id
from costproxy.routing.selection import _decision_id


def _in_child() -> tuple[str, str]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first ids and leave at once
        try:
            os.write(write, f"{new_request_id()} {_decision_id()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        request_id, decision_id = pipe.read().split()
    os.waitpid(pid, 0)
    return request_id, decision_id


def test_forked_workers_make_ids_of_their_own() -> None:
    parent = {new_request_id(), _decision_id()}
    first, second = _in_child(), _in_child()
    ids = [*parent, *first, *second]
    assert len(set(ids)) == len(ids) == 6
    prefixes = {i[4:20] for i in (*[i for i in parent if i.startswith("req_")], first[0], second[0])}
    assert len(prefixes) == 3  # every process a prefix of its own, not the supervisor's


def test_id_shapes() -> None:
    request_id, decision_id = new_request_id(), _decision_id()
    assert request_id.startswith("req_") and len(request_id) == 4 + 16 + 8
    assert len(decision_id) == 32 and int(decision_id, 16) >= 0  # the shape of a uuid4's hex
