#!/usr/bin/python3
"""A Python client of rota service written with dasbus (as Python
integrations of RAUC are): exercises every Installer method, property and
signal on the bus at argv[1] and prints what it saw as JSON.

usage: dasbus_client.py BUS_ADDRESS GOOD_BUNDLE WRONG_BUNDLE
"""
import json
import sys

from dasbus.connection import AddressedMessageBus
from dasbus.error import DBusError
from dasbus.loop import EventLoop
from dasbus.typing import get_native, Variant

address, good, wrong = sys.argv[1:4]
bus = AddressedMessageBus(address)
rauc = bus.get_proxy("de.pengutronix.rauc", "/", interface_name="de.pengutronix.rauc.Installer")
props = bus.get_proxy("de.pengutronix.rauc", "/", interface_name="org.freedesktop.DBus.Properties")
out = {}

out["properties"] = {
    name: get_native(getattr(rauc, name))
    for name in ["Operation", "LastError", "Progress", "Compatible", "Variant", "SystemVersion", "BootSlot"]
}
out["primary"] = rauc.GetPrimary()
out["slots"] = [[name, get_native(d)] for name, d in rauc.GetSlotStatus()]
out["artifacts"] = get_native(rauc.GetArtifactStatus())
out["info"] = list(rauc.Info(good))
out["inspect"] = get_native(rauc.InspectBundle(good, {}))
out["mark"] = list(rauc.Mark("good", "booted"))
try:
    rauc.Mark("weird", "booted")
    out["mark_error"] = None
except DBusError as e:
    out["mark_error"] = str(e)


def install(bundle):
    """Installs and records progress and the Completed result."""
    loop = EventLoop()
    seen = {"progress": [], "completed": None}

    def changed(interface, changes, _invalidated):
        if interface == "de.pengutronix.rauc.Installer" and "Progress" in changes:
            seen["progress"].append(get_native(changes["Progress"]))

    def completed(result):
        seen["completed"] = result
        loop.quit()

    props.PropertiesChanged.connect(changed)
    rauc.Completed.connect(completed)
    rauc.InstallBundle(bundle, {"ignore-compatible": Variant("b", False)})
    loop.run()
    props.PropertiesChanged.disconnect(changed)
    rauc.Completed.disconnect(completed)
    seen["last_error"] = rauc.LastError
    return seen


out["install_wrong"] = install(wrong)
out["install_good"] = install(good)
out["primary_after"] = rauc.GetPrimary()
print(json.dumps(out))
