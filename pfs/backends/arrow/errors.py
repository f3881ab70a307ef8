"""Translate pyarrow's exceptions into `pfs.errors`: the one place that reads their text.

pyarrow reports S3 failures as plain `OSError`s whose message carries the AWS SDK's error name
("AWS Error ACCESS_DENIED during HeadObject ...") or an HTTP status, and HDFS failures as Java exception
names; there is nothing structured to read instead. So the parsing lives here, and nowhere else may look at
an exception's text. Messages produced here never contain credentials (pyarrow's never do, and nothing
here adds any).
"""

from __future__ import annotations

import errno
import re

from pfs import errors

_AWS_CODE = re.compile(r"AWS Error ([A-Z_]+)")
_HTTP_STATUS = re.compile(r"HTTP status (\d{3})")

_AWS_CODES: dict[str, type[errors.PfsError]] = {
    "ACCESS_DENIED": errors.PermissionDenied,
    "INVALID_ACCESS_KEY_ID": errors.PermissionDenied,
    "SIGNATURE_DOES_NOT_MATCH": errors.PermissionDenied,
    "INVALID_CLIENT_TOKEN_ID": errors.PermissionDenied,
    "MISSING_AUTHENTICATION_TOKEN": errors.PermissionDenied,
    "UNRECOGNIZED_CLIENT": errors.PermissionDenied,
    "EXPIRED_TOKEN": errors.PermissionDenied,
    "REQUEST_EXPIRED": errors.PermissionDenied,
    "REQUEST_TIME_TOO_SKEWED": errors.PermissionDenied,
    "NO_SUCH_BUCKET": errors.NotFound,
    "NO_SUCH_KEY": errors.NotFound,
    "NO_SUCH_UPLOAD": errors.NotFound,
    "RESOURCE_NOT_FOUND": errors.NotFound,
    "NETWORK_CONNECTION": errors.Transient,
    "REQUEST_TIMEOUT": errors.Transient,
    "SLOW_DOWN": errors.Transient,
    "THROTTLING": errors.Transient,
    "THROTTLING_EXCEPTION": errors.Transient,
    "REQUEST_LIMIT_EXCEEDED": errors.Transient,
    "SERVICE_UNAVAILABLE": errors.Transient,
    "INTERNAL_FAILURE": errors.Transient,
}

_JAVA_EXCEPTIONS: dict[str, type[errors.PfsError]] = {
    "FileNotFoundException": errors.NotFound,
    "AccessControlException": errors.PermissionDenied,
    "FileAlreadyExistsException": errors.AlreadyExists,
    "PathIsNotEmptyDirectoryException": errors.NotEmpty,
    "ParentNotDirectoryException": errors.NotADirectory,
    "ConnectException": errors.Transient,
    "SocketTimeoutException": errors.Transient,
    "NoRouteToHostException": errors.Transient,
    "RetriableException": errors.Transient,
    "StandbyException": errors.Transient,
    "SafeModeException": errors.Transient,
}

_ERRNOS: dict[int, type[errors.PfsError]] = {
    errno.ENOENT: errors.NotFound,
    errno.EEXIST: errors.AlreadyExists,
    errno.ENOTEMPTY: errors.NotEmpty,
    errno.EISDIR: errors.IsADirectory,
    errno.ENOTDIR: errors.NotADirectory,
    errno.EACCES: errors.PermissionDenied,
    errno.EPERM: errors.PermissionDenied,
    errno.ENAMETOOLONG: errors.NameTooLong,
    errno.EROFS: errors.ReadOnly,
    errno.ENOSPC: errors.NoSpace,
    errno.EDQUOT: errors.NoSpace,
    errno.ETIMEDOUT: errors.Transient,
    errno.ECONNREFUSED: errors.Transient,
    errno.ECONNRESET: errors.Transient,
    errno.EHOSTUNREACH: errors.Transient,
    errno.ENETUNREACH: errors.Transient,
    errno.EPIPE: errors.Transient,
    errno.EAGAIN: errors.Transient,
}

# curl's words for "the endpoint did not answer", as the AWS SDK passes them on.
_UNREACHABLE = (
    (re.compile(r"curlCode: 7\b|Could(?: not|n't) connect|Connection refused", re.I), "connection refused"),
    (re.compile(r"curlCode: 6\b|Could(?: not|n't) resolve", re.I), "host not found"),
    (re.compile(r"curlCode: 28\b|Timeout was reached|timed out", re.I), "no answer within the timeout"),
    (re.compile(r"curlCode: (?:35|60)\b|SSL|certificate", re.I), "TLS handshake failed"),
)


# pyarrow's own words when a listing is asked of a file (HDFS; file:// gives ENOTDIR instead).
_NOT_A_DIRECTORY = re.compile(r"expects base_dir of selector to be a directory")


def _classify(exc: BaseException, text: str) -> type[errors.PfsError]:
    if _NOT_A_DIRECTORY.search(text):
        return errors.NotADirectory
    code = _AWS_CODE.search(text)
    if code and code.group(1) in _AWS_CODES:
        return _AWS_CODES[code.group(1)]
    status = _HTTP_STATUS.search(text)
    if status:
        return _from_http_status(int(status.group(1)))
    for name, cls in _JAVA_EXCEPTIONS.items():
        if name in text:
            return cls
    if isinstance(exc, OSError) and exc.errno in _ERRNOS:
        return _ERRNOS[exc.errno]
    if code or any(pattern.search(text) for pattern, _ in _UNREACHABLE):
        return errors.Transient  # an AWS error without a better name, usually a transport failure
    if isinstance(exc, NotImplementedError) or type(exc).__name__ == "ArrowNotImplementedError":
        return errors.Unsupported
    return errors.BackendError


def _from_http_status(status: int) -> type[errors.PfsError]:
    if status >= 500 or status in (408, 429):
        return errors.Transient
    return {
        401: errors.PermissionDenied,
        403: errors.PermissionDenied,
        404: errors.NotFound,
        409: errors.AlreadyExists,
        412: errors.Stale,
    }.get(status, errors.BackendError)


def translate(exc: BaseException, what: str) -> errors.PfsError:
    """The pfs error for `exc`, raised while doing `what` (e.g. "stat a/b"); PfsErrors pass through."""
    if isinstance(exc, errors.PfsError):
        return exc
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _classify(exc, text)(f"{what}: {text}")


def unreachable_reason(exc: BaseException | None) -> str | None:
    """'connection refused', 'host not found', ... when `exc` says the endpoint never answered, else None."""
    text = str(exc) if exc is not None else ""
    for pattern, reason in _UNREACHABLE:
        if pattern.search(text):
            return reason
    return None
