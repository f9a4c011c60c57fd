"""hello-py: a greeting in Python, built with componentize-py.

    GET /                the greeting from GREETING (spec.env), "Hello" by default
    GET /fetch?url=URL   GETs URL (it must be in spec.allowedOutboundHosts)
                         and answers with its status and body
    GET /allocate/N      keeps N MiB: past spec.limits.memory, this invocation
                         fails alone
    GET /spin            never returns: spec.timeout ends it
"""

import os
from urllib.parse import parse_qs, urlsplit

import http_io
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import IncomingRequest, ResponseOutparam


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        target = urlsplit(request.path_with_query() or "/")
        parts = target.path.strip("/").split("/")
        if parts[0] == "fetch":
            url = parse_qs(target.query).get("url", [""])[0]
            try:
                status, content = http_io.get(url)
            except Err as error:
                http_io.respond(response_out, 502, f"{url}: {error.value}\n".encode())
                return
            http_io.respond(response_out, 200, f"{status} ".encode() + content)
        elif parts[0] == "allocate" and len(parts) == 2 and parts[1].isdigit():
            kept = bytearray(int(parts[1]) * 1024 * 1024)
            http_io.respond(response_out, 200, f"allocated {len(kept) >> 20} MiB\n".encode())
        elif parts[0] == "spin":
            while True:
                pass
        else:
            greeting = os.environ.get("GREETING", "Hello")
            http_io.respond(response_out, 200, f"{greeting} from Python!\n".encode())
