"""A service calling defenseclawd with Python grpcio over its Unix socket.

This is the README's Python example, run by the tests against a real daemon:
health check, reflection listing, CheckTarget, and an audit follow that sees
the block this client causes. Stubs come from the shipped proto/ with
grpcio-tools (the testkit generates them into its venv; see tests/src/python.rs):

    python -m grpc_tools.protoc -I proto/proto --python_out=gen \
        --grpc_python_out=gen defenseclaw/v1/control.proto

Usage: client.py SOCKET SKILL_NAME       the whole walk; one JSON line per step
       client.py SOCKET --no-authority   one health check without
                                         grpc.default_authority (prints its status)
Exit 0 only when every step saw what it expected.
"""

import json
import sys
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from defenseclaw.v1 import control_pb2 as pb
from defenseclaw.v1 import control_pb2_grpc as pb_grpc

TIMEOUT = 30  # seconds, for every call


def channel(socket, authority=True):
    # grpcio sends the socket path (percent-encoded) as :authority on a Unix
    # socket; the daemon's HTTP/2 stack only accepts a host name there.
    options = [("grpc.default_authority", "localhost")] if authority else []
    return grpc.insecure_channel("unix:" + socket, options=options)


def step(name, **fields):
    print(json.dumps({"step": name, **fields}), flush=True)


def fail(message):
    print(json.dumps({"error": message}), flush=True)
    sys.exit(1)


def walk(socket, skill):
    with channel(socket) as ch:
        # 1. Health: the server as a whole and the Control service.
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "defenseclaw.v1.Control"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                fail(f"health of {service!r} is {reply.status}")
        step("health", status="SERVING")

        # 2. Reflection: which services the daemon serves, and Control's methods.
        db = ProtoReflectionDescriptorDatabase(ch)
        services = sorted(db.get_services())
        if "defenseclaw.v1.Control" not in services:
            fail(f"reflection lists no defenseclaw.v1.Control: {services}")
        control = db.FindFileContainingSymbol("defenseclaw.v1.Control")
        methods = sorted(m.name for s in control.service if s.name == "Control" for m in s.method)
        step("reflection", services=services, control_methods=len(methods))

        # 3. CheckTarget: nothing decided yet.
        client = pb_grpc.ControlStub(ch)
        target = pb.TargetRef(kind=pb.TARGET_KIND_SKILL, name=skill)
        before = client.CheckTarget(target, timeout=TIMEOUT)
        if before.verdict != pb.VERDICT_UNKNOWN:
            fail(f"{skill} already has verdict {pb.Verdict.Name(before.verdict)}")
        step("check", verdict=pb.Verdict.Name(before.verdict))

        # 4. Follow the audit log from its head, cause an entry, see it arrive.
        head = client.GetStatus(pb.GetStatusRequest(), timeout=TIMEOUT).audit_head.seq
        follow = client.FollowAudit(pb.FollowAuditRequest(after_seq=head), timeout=TIMEOUT)
        seen = {}

        def read():
            try:
                for entry in follow:
                    if entry.action == "block" and entry.target.name == skill:
                        seen["entry"] = entry
                        return
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED:
                    seen["error"] = f"{e.code().name}: {e.details()}"

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        client.SetEnforcement(
            pb.SetEnforcementRequest(
                target=target,
                action=pb.ENFORCEMENT_ACTION_BLOCK,
                reason="blocked by the Python client example",
            ),
            timeout=TIMEOUT,
        )
        reader.join(TIMEOUT)
        follow.cancel()
        if "entry" not in seen:
            fail(f"the block never arrived on FollowAudit: {seen.get('error', 'no entry')}")
        entry = seen["entry"]
        if entry.seq <= head or not entry.hash or not entry.prev_hash:
            fail(f"odd audit entry: seq {entry.seq} after head {head}")
        step("follow", action=entry.action, seq=entry.seq, hash=entry.hash, outcome=entry.outcome)

        after = client.CheckTarget(target, timeout=TIMEOUT)
        if after.verdict != pb.VERDICT_BLOCKED:
            fail(f"{skill} is {pb.Verdict.Name(after.verdict)} after the block")
        step("check", verdict=pb.Verdict.Name(after.verdict))


def without_authority(socket):
    with channel(socket, authority=False) as ch:
        try:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            step("no-authority", code="OK")
        except grpc.RpcError as e:
            step("no-authority", code=e.code().name, details=e.details())


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    socket, what = sys.argv[1], sys.argv[2]
    if what == "--no-authority":
        without_authority(socket)
    else:
        walk(socket, what)


if __name__ == "__main__":
    main()
