"""events-py: a CloudEvents consumer in Python. The Python CloudEvents SDK
parses what Sluice's event bridge delivers, in binary or structured mode
(CloudEvents 1.0 HTTP binding), and the function answers with what it read:

    {"id": ..., "source": ..., "type": ..., "subject": ..., "data": ...}

Anything that is not a CloudEvent gets 400 with the SDK's reason."""

import json

import http_io
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from wit_world import exports
from wit_world.imports.types import IncomingRequest, ResponseOutparam


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        message = HTTPMessage(headers=http_io.headers(request), body=http_io.body(request))
        try:
            event = from_http_event(message)
        except Exception as error:  # the SDK raises several kinds
            http_io.respond(response_out, 400, f"not a CloudEvent: {error}\n".encode())
            return
        data = event.get_data()
        if isinstance(data, (bytes, bytearray)):
            data = data.decode("utf-8", "replace")
        seen = {
            "id": event.get_id(),
            "source": event.get_source(),
            "type": event.get_type(),
            "subject": event.get_subject(),
            "data": data,
        }
        http_io.respond(response_out, 200, json.dumps(seen).encode(), "application/json")
