"""Reading requests and writing responses over the wasi:http bindings that
componentize-py generates (the `wit_world` package): plain Python, no
Sluice-specific SDK. Shared by the Python examples beside it."""

from urllib.parse import urlsplit

from componentize_py_types import Err, Ok
from wit_world.imports import outgoing_handler, streams
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Get,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
    Scheme_Https,
)

# Reads are at most this many bytes; wasi:io streams return less at will.
CHUNK = 64 * 1024


def headers(request: IncomingRequest) -> dict[str, str]:
    """The request's header fields, names lower-cased; repeated fields are
    joined with ", " (RFC 9110 §5.3)."""
    fields: dict[str, str] = {}
    with request.headers() as entries:
        for name, value in entries.entries():
            text = value.decode("latin-1")
            fields[name] = f"{fields[name]}, {text}" if name in fields else text
    return fields


def read_all(stream: streams.InputStream) -> bytes:
    """Everything a wasi:io input stream holds, until it closes."""
    data = bytearray()
    while True:
        try:
            data += stream.blocking_read(CHUNK)
        except Err as error:
            if isinstance(error.value, streams.StreamError_Closed):
                return bytes(data)
            raise


def body(request: IncomingRequest) -> bytes:
    """The request's whole body."""
    incoming = request.consume()
    with incoming.stream() as stream:
        return read_all(stream)


def respond(
    response_out: ResponseOutparam,
    status: int,
    content: bytes,
    content_type: str = "text/plain; charset=utf-8",
) -> None:
    """Sends a whole response: the status, a Content-Type and the body."""
    response = OutgoingResponse(
        Fields.from_list([("content-type", content_type.encode())])
    )
    response.set_status_code(status)
    outgoing = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    with outgoing.write() as stream:
        for start in range(0, len(content), 4096):
            # blocking-write-and-flush takes at most 4096 bytes at a time.
            stream.blocking_write_and_flush(content[start : start + 4096])
    OutgoingBody.finish(outgoing, None)


def get(url: str) -> tuple[int, bytes]:
    """GETs an http(s) URL through wasi:http/outgoing-handler: the status
    and the body. The host decides whether the request may leave
    (`spec.allowedOutboundHosts`); a refusal raises `Err`."""
    parts = urlsplit(url)
    request = OutgoingRequest(Fields())
    request.set_method(Method_Get())
    request.set_scheme(Scheme_Https() if parts.scheme == "https" else Scheme_Http())
    request.set_authority(parts.netloc)
    request.set_path_with_query(parts.path + (f"?{parts.query}" if parts.query else "") or "/")
    future = outgoing_handler.handle(request, None)
    with future.subscribe() as ready:
        ready.block()
    answer = future.get()
    # get() yields Ok(Ok(response)), Ok(Err(error-code)) or Err(()).
    if answer is None or isinstance(answer, Err) or isinstance(answer.value, Err):
        raise Err(answer)
    response = answer.value.value
    status = response.status()
    incoming = response.consume()
    with incoming.stream() as stream:
        return status, read_all(stream)
