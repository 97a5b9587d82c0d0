"""A third-party SignalR client against Herald, driven by tests/js/python.test.mjs.

Connects with the chosen client library and transport, prints `{"ready": true}` once open,
collects `count` SpendUpdate events, then invokes Resume(last cursor) and prints every event and
the method's result as JSON lines. Exits 0 when all of that happened before the deadline, else 1
with the reason on stderr.
"""
import argparse
import asyncio
import json
import sys
import threading
import time


def emit(obj):
    print(json.dumps(obj), flush=True)


def run_signalrcore(args):
    from signalrcore.hub_connection_builder import HubConnectionBuilder
    from signalrcore.types import HttpTransportType

    transports = {
        "WebSockets": HttpTransportType.web_sockets,
        "ServerSentEvents": HttpTransportType.server_sent_events,
        "LongPolling": HttpTransportType.long_polling,
    }
    opened, enough, answered = threading.Event(), threading.Event(), threading.Event()
    events, results = [], []

    def on_spend(arguments):
        events.append(arguments[0])
        if len(events) >= args.count:
            enough.set()

    builder = HubConnectionBuilder().with_url(
        f"{args.url}{args.hub}",
        options={"access_token_factory": lambda: args.key, "transport": transports[args.transport]},
    )
    if args.protocol == "messagepack":
        from signalrcore.protocol.messagepack_protocol import MessagePackHubProtocol

        builder = builder.with_hub_protocol(MessagePackHubProtocol())
    hub = builder.build()
    hub.on_open(opened.set)
    hub.on("SpendUpdate", on_spend)
    hub.start()
    deadline = time.monotonic() + args.deadline
    if not opened.wait(max(0.0, deadline - time.monotonic())):
        sys.exit("signalrcore: the connection did not open")
    emit({"ready": True})
    if not enough.wait(max(0.0, deadline - time.monotonic())):
        sys.exit(f"signalrcore: {len(events)} of {args.count} events arrived")

    def on_result(message):
        results.append(getattr(message, "result", None))
        answered.set()

    hub.invoke("Resume", [events[-1]["cursor"]], on_invocation=on_result)
    if not answered.wait(max(0.0, deadline - time.monotonic())):
        sys.exit("signalrcore: Resume was not answered")
    for e in events:
        emit({"event": e})
    emit({"invoked": results[0]})
    hub.stop()


async def run_pysignalr(args):
    from pysignalr.client import SignalRClient

    if args.transport != "WebSockets":
        sys.exit("pysignalr speaks WebSockets only")
    opened, enough, answered = asyncio.Event(), asyncio.Event(), asyncio.Event()
    events, results = [], []

    async def on_open():
        opened.set()

    async def on_spend(arguments):
        events.append(arguments[0])
        if len(events) >= args.count:
            enough.set()

    async def on_result(message):
        results.append(getattr(message, "result", None))
        answered.set()

    # Its access_token_factory is applied only after negotiate (which then fails with 401), so
    # the key goes in a header, as its own documentation does.
    client = SignalRClient(f"{args.url}{args.hub}", headers={"Authorization": f"Bearer {args.key}"})
    client.on_open(on_open)
    client.on("SpendUpdate", on_spend)
    task = asyncio.create_task(client.run())

    async def steps():
        await opened.wait()
        emit({"ready": True})
        await enough.wait()
        await client.send("Resume", [events[-1]["cursor"]], on_invocation=on_result)
        await answered.wait()

    try:
        await asyncio.wait_for(steps(), args.deadline)
    except asyncio.TimeoutError:
        sys.exit(f"pysignalr: timed out with {len(events)} of {args.count} events, answered={answered.is_set()}")
    for e in events:
        emit({"event": e})
    emit({"invoked": results[0]})
    task.cancel()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--client", choices=["signalrcore", "pysignalr"], required=True)
    p.add_argument("--url", required=True, help="http://host:port")
    p.add_argument("--hub", default="/hubs/spend")
    p.add_argument("--key", required=True)
    p.add_argument("--transport", default="WebSockets")
    p.add_argument("--protocol", choices=["json", "messagepack"], default="json", help="hub protocol (signalrcore)")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--deadline", type=float, default=45.0)
    args = p.parse_args()
    if args.client == "signalrcore":
        run_signalrcore(args)
    else:
        asyncio.run(run_pysignalr(args))
    sys.stdout.flush()
    # Library threads (signalrcore's reader, websocket keep-alives) must not keep the process up.
    import os
    os._exit(0)


if __name__ == "__main__":
    main()
