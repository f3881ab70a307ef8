"""A gRPC interceptor that logs every call, its outcome and duration, with secrets stripped.

Fields the CSI protobuf marks `csi_secret` (every `secrets` map) are logged as their keys only, and URIs
go through `redact_uri`. This is the only place requests are logged; nothing else may log a request.
"""

from __future__ import annotations

import logging
import time

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from csi import csi_pb2
from pfs.backends import redact_uri

log = logging.getLogger("csi.calls")
REDACTED = "***"


def redact(message: Message) -> Message:
    """A copy of `message` that is safe to log."""
    copy = type(message)()
    copy.CopyFrom(message)
    _redact_in_place(copy)
    return copy


def _redact_in_place(message: Message) -> None:
    for field, value in message.ListFields():
        if field.GetOptions().Extensions[csi_pb2.csi_secret]:
            for key in list(value):
                value[key] = REDACTED
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is None:
                for key in list(value):
                    value[key] = redact_uri(value[key])
        elif field.message_type is not None:
            for item in value if field.is_repeated else [value]:
                _redact_in_place(item)


def describe(message: Message) -> str:
    return text_format.MessageToString(redact(message), as_one_line=True)


class CallLogger(grpc.ServerInterceptor):
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rpartition("/")[2]
        serve = handler.unary_unary

        def logged(request, context):
            started = time.monotonic()
            log.info("%s called: {%s}", method, describe(request))
            try:
                response = serve(request, context)
            except Exception:
                code = context.code() or grpc.StatusCode.UNKNOWN
                if code is grpc.StatusCode.UNKNOWN:  # not an abort: a bug, worth a traceback
                    log.exception("%s failed after %.2fs", method, time.monotonic() - started)
                    raise
                details = (context.details() or b"").decode(errors="replace")  # grpc keeps it as bytes
                log.info("%s -> %s: %s (%.2fs)", method, code.name, details, time.monotonic() - started)
                raise
            log.info("%s -> OK (%.2fs)", method, time.monotonic() - started)
            return response

        return grpc.unary_unary_rpc_method_handler(
            logged,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
