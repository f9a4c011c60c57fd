// hello-js: a greeting in JavaScript, built with componentize-js. It
// implements wasi:http/incoming-handler directly, with the bindings
// componentize-js generates from the WIT it is given (see README).
//
//   GET /             "Hello from JavaScript!" and the path it was called with
//   GET /allocate/N   keeps N MiB: past spec.limits.memory, this invocation
//                     fails alone
//   GET /spin         never returns: spec.timeout ends it
import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from "wasi:http/types@0.2.12";

function respond(responseOut, status, text) {
  const response = new OutgoingResponse(
    Fields.fromList([["content-type", new TextEncoder().encode("text/plain; charset=utf-8")]]),
  );
  response.setStatusCode(status);
  const body = response.body();
  ResponseOutparam.set(responseOut, { tag: "ok", val: response });
  const stream = body.write();
  stream.blockingWriteAndFlush(new TextEncoder().encode(text));
  stream[Symbol.dispose]();
  OutgoingBody.finish(body, undefined);
}

export const incomingHandler = {
  handle(request, responseOut) {
    const path = request.pathWithQuery() ?? "/";
    const parts = path.split("?")[0].split("/").filter((part) => part !== "");
    if (parts[0] === "allocate" && /^\d+$/.test(parts[1] ?? "")) {
      const kept = new Uint8Array(Number(parts[1]) * 1024 * 1024).fill(1);
      respond(responseOut, 200, `allocated ${kept.length >> 20} MiB\n`);
    } else if (parts[0] === "spin") {
      for (;;) {}
    } else {
      respond(responseOut, 200, `Hello from JavaScript! ${path}\n`);
    }
  },
};
