#!/usr/bin/env python3
"""A CSMS for rota-ocpp's tests, built on PyPI's `ocpp` (the library
EVerest's own test harness plays the CSMS with) over `websockets`.

It serves OCPP 1.6J and 2.0.1 on 127.0.0.1, answers the station's calls
and writes each of them, and each answer to its own calls, as one JSON
line to the log file:

    {"station": ID, "kind": "call", "action": A, "payload": {...}}
    {"station": ID, "kind": "result", "action": A, "payload": {...}}

After a station's first BootNotification it sends the calls given with
--after-boot (ACTION=JSON, JSON in the library's snake_case fields), one
after the other; lines of the same form appended to the --commands file
are sent to the station connected then. With --password, stations must
send HTTP basic authentication (user: station id); with --tls-cert and
--tls-key it serves wss:// (security profile 2), with --client-ca as well
stations must present a certificate from that CA (profile 3). Prints the
port it listens on.
"""

import argparse
import asyncio
import json
import ssl
import sys
from datetime import datetime, timezone

from ocpp.routing import on
from ocpp.v16 import ChargePoint as Station16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v16.enums import RegistrationStatus as Registration16
from ocpp.v201 import ChargePoint as Station201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from ocpp.v201.enums import RegistrationStatusEnumType as Registration201
from websockets.asyncio.server import basic_auth, serve

ARGS = None
BOOTED = set()
CONNECTED = {}


def now():
    return datetime.now(timezone.utc).isoformat()


def log(station, kind, action, payload):
    with open(ARGS.log, "a") as f:
        f.write(json.dumps({"station": station, "kind": kind, "action": action, "payload": payload}) + "\n")


def snake_to_camel(d):
    if isinstance(d, dict):
        return {
            k.split("_")[0] + "".join(w.title() for w in k.split("_")[1:]): snake_to_camel(v) for k, v in d.items()
        }
    return d


def csms_class(base, action, result, calls, accepted, notifications):
    """The CSMS side for one OCPP version: BootNotification (accepted, then
    the --after-boot calls), Heartbeat, and the `notifications` (snake_case
    actions, answered empty), each call logged."""

    def boot(self, **kw):
        log(self.id, "call", "BootNotification", snake_to_camel(kw))
        asyncio.get_running_loop().create_task(run_after_boot(self, calls))
        return result.BootNotification(current_time=now(), interval=300, status=accepted)

    def heartbeat(self, **kw):
        log(self.id, "call", "Heartbeat", snake_to_camel(kw))
        return result.Heartbeat(current_time=now())

    def acknowledge(snake):
        name = "".join(w.title() for w in snake.split("_"))

        def handler(self, **kw):
            log(self.id, "call", name, snake_to_camel(kw))
            return getattr(result, name)()

        # The library finds handlers by the decorated function's name.
        handler.__name__ = snake
        return handler

    handlers = {"boot": on(action.boot_notification)(boot), "heartbeat": on(action.heartbeat)(heartbeat)}
    for snake in notifications:
        handlers[snake] = on(getattr(action, snake))(acknowledge(snake))
    return type("Csms" + base.__module__.split(".")[-1], (base,), handlers)


Csms16 = csms_class(
    Station16,
    Action16,
    result16,
    call16,
    Registration16.accepted,
    ["firmware_status_notification", "signed_firmware_status_notification", "security_event_notification"],
)
Csms201 = csms_class(
    Station201,
    Action201,
    result201,
    call201,
    Registration201.accepted,
    ["firmware_status_notification", "security_event_notification"],
)


async def send(station, calls, spec):
    action, _, body = spec.partition("=")
    request = getattr(calls, action)(**json.loads(body or "{}"))
    response = await station.call(request, suppress=False)
    log(station.id, "result", action, snake_to_camel(vars(response)))


async def run_after_boot(station, calls):
    if station.id in BOOTED:
        return
    BOOTED.add(station.id)
    for spec in ARGS.after_boot:
        await send(station, calls, spec)


def commands_given():
    """The lines of the commands file so far."""
    try:
        with open(ARGS.commands) as f:
            return [l.strip() for l in f if l.strip()]
    except FileNotFoundError:
        return []


async def follow_commands(done):
    """Sends each line appended to the commands file after the first `done`
    to the stations connected and booted then; a line given while none is
    waits for one (a station still starting does not lose it)."""
    while True:
        await asyncio.sleep(0.1)
        lines = commands_given()
        for spec in lines[done:]:
            booted = [v for k, v in list(CONNECTED.items()) if k in BOOTED]
            if not booted:
                break
            done += 1
            for station, calls in booted:
                try:
                    await send(station, calls, spec)
                except Exception as e:
                    log(station.id, "error", spec.partition("=")[0], {"error": str(e)})


async def handler(connection):
    station = connection.request.path.strip("/").split("/")[-1]
    if connection.subprotocol == "ocpp1.6":
        cp, calls = Csms16(station, connection), call16
    elif connection.subprotocol == "ocpp2.0.1":
        cp, calls = Csms201(station, connection), call201
    else:
        await connection.close()
        return
    CONNECTED[station] = (cp, calls)
    try:
        await cp.start()
    except Exception as e:  # the station went away
        log(station, "closed", "", {"reason": str(e)})
    finally:
        if CONNECTED.get(station, (None,))[0] is cp:
            del CONNECTED[station]


async def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--log", required=True)
    p.add_argument("--password")
    p.add_argument("--after-boot", action="append", default=[])
    p.add_argument("--commands")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--client-ca")
    ARGS = p.parse_args()
    kwargs = {}
    if ARGS.password:
        kwargs["process_request"] = basic_auth(
            realm="csms", check_credentials=lambda user, password: password == ARGS.password
        )
    if ARGS.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ARGS.tls_cert, ARGS.tls_key)
        if ARGS.client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(ARGS.client_ca)
        kwargs["ssl"] = context
    # Lines already given belong to an earlier run of this CSMS (a restart):
    # counted before the port is printed, so none given after is skipped.
    done = len(commands_given()) if ARGS.commands else 0
    async with serve(handler, "127.0.0.1", ARGS.port, subprotocols=["ocpp1.6", "ocpp2.0.1"], **kwargs) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        if ARGS.commands:
            await follow_commands(done)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
